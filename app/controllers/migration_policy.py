"""The migration policy in effect, the downtime ramp and the completion timeout (pure functions)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from app.schemas.migration import MigrationConfiguration, MigrationPolicy

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Policy:
    bandwidth_mib: int = 0
    max_downtime_ms: int = 300
    downtime_steps: int = 10
    downtime_delay_per_gib: int = 75
    completion_timeout_per_gib: int = 150
    allow_auto_converge: bool = False
    allow_post_copy: bool = False
    switchover_pacing_mib: int = 0  # off: see FirstPassPacer
    switchover_tail_mib: int = 32

    def overridden_by(self, spec: MigrationPolicy) -> Policy:
        """The spec's overrides (fields it sets) over these defaults."""
        fields = ("bandwidth_mib", "max_downtime_ms", "completion_timeout_per_gib", "allow_auto_converge",
                  "allow_post_copy")  # fmt: skip
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


class PaceAction(StrEnum):
    PACE = "pace"  # cap the bandwidth at the pacing rate
    RESTORE = "restore"  # give the migration its own bandwidth back
    DONE = "done"  # nothing more to do


@dataclass
class FirstPassPacer:
    """Paces the end of a migration's first pass over guest memory.

    QEMU stops the guest as soon as what is left fits its downtime limit at the bandwidth it measured, and
    that measure is of bytes written into the socket, not of bytes the destination has loaded. When the
    sender outruns the destination (a fast link, a busy or slower destination), megabytes of the first pass
    still sit in socket buffers at the switch-over and the guest stays paused until the destination has
    loaded them. An idle guest switches over right after the first pass, so Corral can send the last
    `tail_mib` of that pass at `pace_mib` MiB/s: the backlog drains before the switch-over. The cost is up
    to tail/rate seconds of total time; later passes (a busy guest) run at the migration's own rate. Off by
    default: on the two-node test rig it took the idle guest's pause from ~65 to ~50 ms for ~0.3 s more.
    """

    pace_mib: int
    tail_mib: int
    bandwidth_mib: int = 0  # the migration's own cap; 0: unlimited
    paced: bool = False

    @property
    def wanted(self) -> bool:
        """Pacing only helps when the migration may run faster than the pacing rate."""
        return self.pace_mib > 0 and self.tail_mib > 0 and not 0 < self.bandwidth_mib <= self.pace_mib

    def observe(self, iteration: int, memory_remaining: int) -> tuple[PaceAction | None, float]:
        """What to do after a sample of the running job, and the seconds until the next sample."""
        if not self.wanted:
            return PaceAction.DONE, 0.0
        if iteration >= 2:  # the first pass is over
            return (PaceAction.RESTORE if self.paced else PaceAction.DONE), 0.0
        if self.paced:
            # Rarely: a sample competes with libvirt for the source's monitor right at the switch-over; a
            # busy guest's second pass runs paced for at most this long.
            return None, 0.1
        if 0 < memory_remaining <= self.tail_mib * MIB:
            self.paced = True
            return PaceAction.PACE, 0.1
        # Often: runs of zero pages go by at several GiB/s, so a 32 MiB tail can pass in about 10 ms.
        return None, 0.005
