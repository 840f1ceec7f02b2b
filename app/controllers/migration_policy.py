"""The migration policy in effect, the downtime ramp and the completion timeout (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.schemas.migration import MigrationConfiguration, MigrationPolicy

GIB = 1024**3


@dataclass(frozen=True)
class Policy:
    bandwidth_mib: int = 0
    max_downtime_ms: int = 300
    downtime_steps: int = 10
    downtime_delay_per_gib: int = 75
    completion_timeout_per_gib: int = 150
    allow_auto_converge: bool = False
    allow_post_copy: bool = False

    def overridden_by(self, spec: MigrationPolicy) -> Policy:
        """The spec's overrides (fields it sets) over these defaults."""
        fields = (
            "bandwidth_mib",
            "max_downtime_ms",
            "completion_timeout_per_gib",
            "allow_auto_converge",
            "allow_post_copy",
        )
        overrides = {f: getattr(spec, f) for f in fields if getattr(spec, f) is not None}
        return replace(self, **overrides)

    def configuration(self) -> MigrationConfiguration:
        return MigrationConfiguration(**self.__dict__)


def downtime_ramp(policy: Policy, memory_bytes: int) -> list[tuple[float, int]]:
    """(seconds after the start, max downtime in ms) steps, Nova's shape: the limit starts at 1/steps of
    the maximum, so an idle guest switches over with a short pause, and rises to the maximum in `steps`
    steps spaced `delay per GiB x memory` apart, so a busy guest still converges."""
    steps = policy.downtime_steps
    delay = policy.downtime_delay_per_gib * memory_bytes / GIB
    base = policy.max_downtime_ms / steps
    rise = (policy.max_downtime_ms - base) / steps
    return [(delay * i, max(1, round(base + rise * i))) for i in range(steps + 1)]


def completion_timeout(policy: Policy, memory_bytes: int) -> float:
    """Seconds the migration may run: completionTimeoutPerGiB x the guest's memory in GiB."""
    return policy.completion_timeout_per_gib * memory_bytes / GIB
