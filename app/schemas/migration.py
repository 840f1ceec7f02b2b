"""VirtualMachineInstanceMigration: a live migration as a resource, with its policy and live progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, StrictBool

from app.schemas.common import ApiModel, Condition, DnsLabel, ListMeta, ObjectMeta, ObjectMetaOut

MIGRATION_PHASES = (
    "Pending",
    "Scheduling",
    "Scheduled",
    "PreparingTarget",
    "TargetReady",
    "Running",
    "Succeeded",
    "Failed",
)
FINISHED = ("Succeeded", "Failed")
# A migration holds its instance (and room on its target) from Scheduled until it finishes.
IN_FLIGHT = ("Scheduled", "PreparingTarget", "TargetReady", "Running")


def phase_refusal(phase: str | None, reason: str | None) -> str | None:
    """Why an instance in this phase cannot live-migrate, or None. A guest paused by its user moves too and
    stays paused on the target (as in KubeVirt); one paused by an I/O error or a watchdog does not."""
    if phase == "Running" or (phase == "Paused" and reason == "PausedByUser"):
        return None
    shown = f"{phase} ({reason})" if phase == "Paused" else phase
    return f"the instance is {shown}; only a Running instance, or one paused by its user, live-migrates"


DRAIN_LABEL = "corral.dev/drain"


class MigrationPolicy(ApiModel):
    """How a migration runs. Unset fields take the cluster defaults (CORRAL_MIGRATION_* settings)."""

    bandwidth_mib: int | None = Field(
        default=None,
        alias="bandwidthMiB",
        ge=0,
        le=1_000_000,
        description="Bandwidth cap in MiB/s; 0 means unlimited.",
    )
    max_downtime_ms: int | None = Field(
        default=None,
        ge=1,
        le=60_000,
        description="The longest pause allowed at switch-over, reached by a stepped ramp (Nova style): the "
        "limit starts at a tenth of this and rises as the migration runs.",
    )
    completion_timeout_per_gib: int | None = Field(
        default=None,
        alias="completionTimeoutPerGiB",
        ge=1,
        le=86_400,
        description="Seconds allowed per GiB of guest memory before the migration is aborted "
        "(or switched to post-copy when allowed).",
    )
    allow_auto_converge: StrictBool | None = Field(
        default=None, description="Let QEMU throttle the guest's vCPUs when memory is dirtied too fast."
    )
    allow_post_copy: StrictBool | None = Field(
        default=None,
        description="Switch to post-copy at the completion timeout instead of aborting: the guest runs on "
        "the target while the rest of its memory follows.",
    )


class MigrationSpec(MigrationPolicy):
    vmi_name: DnsLabel = Field(description="The instance to migrate, in the migration's namespace.")
    target_node: DnsLabel | None = Field(default=None, description="The node to move to; chosen when unset.")


class MigrationConfiguration(ApiModel):
    """The policy in effect: the spec's overrides over the cluster defaults."""

    bandwidth_mib: int = Field(alias="bandwidthMiB")
    max_downtime_ms: int
    downtime_steps: int
    downtime_delay_per_gib: int = Field(alias="downtimeDelayPerGiB")
    completion_timeout_per_gib: int = Field(alias="completionTimeoutPerGiB")
    allow_auto_converge: StrictBool
    allow_post_copy: StrictBool


class MigrationState(ApiModel):
    start_timestamp: datetime | None = None
    end_timestamp: datetime | None = None
    source_node: str | None = None
    target_node: str | None = None
    source_pod: str | None = Field(default=None, description="The domain's name on the source node.")
    target_pod: str | None = Field(default=None, description="The domain's name on the target node.")
    completed: StrictBool = False
    failed: StrictBool = False
    abort_requested: StrictBool = False
    abort_status: Literal["Aborting", "Succeeded", "Failed"] | None = None
    failure_reason: str | None = None
    mode: Literal["PreCopy", "PostCopy"] | None = None
    data_total_bytes: int | None = None
    data_processed_bytes: int | None = None
    data_remaining_bytes: int | None = None
    memory_dirty_rate_bytes_per_second: int | None = None
    auto_converge_throttle_percent: int | None = Field(
        default=None,
        description="With allowAutoConverge: how much vCPU time QEMU takes from a guest that dirties memory "
        "faster than it can be sent (it starts at 20 and rises by 10 while the migration does not converge).",
    )
    transfer_rate_bytes_per_second: int | None = None
    iteration: int | None = None
    elapsed_ms: int | None = None
    current_max_downtime_ms: int | None = Field(default=None, description="Where the downtime ramp is now.")
    downtime_ms: int | None = Field(
        default=None,
        description="The guest's pause at switch-over: from libvirt's suspended (migrated) event on the "
        "source to its resumed event on the target, both as they reached Corral (one clock). When Corral "
        "did not see both (it restarted meanwhile), libvirtDowntimeMs.",
    )
    libvirt_downtime_ms: int | None = Field(
        default=None,
        description="libvirt's own downtime figure: from its handling of the source's stop to the end of its "
        "bookkeeping on the target, which comes after the guest runs again (and needs synchronized clocks).",
    )
    copied_volumes: list[str] | None = Field(
        default=None,
        description="Volumes the target node did not see (storage not shared): created there on the same "
        "image and copied by the migration; the source's are removed once the guest runs on the target.",
    )
    migration_configuration: MigrationConfiguration | None = None


class MigrationPhaseTransition(ApiModel):
    phase: str
    phase_transition_timestamp: datetime


class MigrationStatus(ApiModel):
    phase: Literal[MIGRATION_PHASES] | None = None  # type: ignore[valid-type]
    reason: str | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    phase_transition_timestamps: list[MigrationPhaseTransition] = Field(default_factory=list)
    migration_state: MigrationState | None = None


class MigrationBody(ApiModel):
    """A migration as sent by a client (status is ignored)."""

    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta
    spec: MigrationSpec
    status: Any = Field(default=None, description="Ignored: status is written by Corral.")


class Migration(ApiModel):
    api_version: str = "kubevirt.io/v1"
    kind: str = "VirtualMachineInstanceMigration"
    metadata: ObjectMetaOut
    spec: MigrationSpec
    status: MigrationStatus


class MigrationList(ApiModel):
    api_version: str = "kubevirt.io/v1"
    kind: str = "VirtualMachineInstanceMigrationList"
    metadata: ListMeta
    items: list[Migration]


class MigrateOptions(MigrationPolicy):
    """Body of POST .../instances/{name}/migrate: where to and how (all optional)."""

    target_node: DnsLabel | None = None


class NotMigratable(ApiModel):
    namespace: str
    name: str
    reason: str


class DrainMigration(ApiModel):
    namespace: str
    name: str
    vmi_name: str
    phase: str | None = None


class DrainStatus(ApiModel):
    """A node's drain: the migrations it started and the instances it could not move."""

    node: str
    unschedulable: StrictBool
    migrations: list[DrainMigration] = Field(default_factory=list)
    not_migratable: list[NotMigratable] = Field(default_factory=list)
    remaining_instances: int = Field(description="Instances still placed on the node.")
