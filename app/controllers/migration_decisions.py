"""The migration reconciler's decisions, as pure functions: whether a migration may start or must wait, how
to steer a running one (downtime ramp, completion timeout, abort), and what its end means, judged by where
the guest runs. No I/O here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from app.controllers.migration_policy import Policy
from app.controllers.placement import NodeView
from app.schemas.instance import InstanceSpec
from app.schemas.migration import MigrationState, phase_refusal
from app.schemas.records import MigrationLock
from app.virt.driver import DomainInfo, DomainState, JobProgress, NetworkConfig


@dataclass(frozen=True)
class AttachedDisk:
    """A DataVolume an instance attaches: its disk moves with the instance."""

    name: str
    uid: str
    capacity: int


@dataclass(frozen=True)
class MigratingInstance:
    """The instance a migration moves, as its passes need it."""

    uid: str
    node: str | None
    phase: str | None
    reason: str | None
    spec: InstanceSpec
    domain: str
    lock: MigrationLock | None  # the migration holding it, if any
    volumes: tuple[str, ...]
    deleting: bool
    unmigratable: str | None  # the LiveMigratable=False reason
    data_volumes: tuple[AttachedDisk, ...] = ()  # the DataVolumes it attaches
    hostname: str = ""  # what its cloud-init seed names it (a target gets the same seed)
    nat_networks: tuple[NetworkConfig, ...] = ()  # the NAT Networks its NICs are on (a target needs them)
    secrets: Mapping[str, Mapping[str, bytes]] = field(default_factory=dict)  # for its seed on a target


@dataclass(frozen=True)
class Admission:
    """Pending's verdict: go on to scheduling (both None), wait (`wait`), or fail (`refusal`)."""

    refusal: str | None = None
    wait: str | None = None
    reason: str = ""  # the status reason while waiting


def admit(
    migration_uid: str,
    vmi_name: str,
    instance: MigratingInstance | None,
    busy: Counter[str],
    targets: Collection[str],
    limit: int,
) -> Admission:
    """May the migration leave Pending? `busy`: migrations in flight per node; `targets`: the nodes it could
    move to."""
    if instance is None:
        return Admission(refusal=f"instance {vmi_name!r} does not exist")
    if instance.lock is not None and instance.lock.uid != migration_uid:
        message = f"migration {instance.lock.name!r} of the instance runs"
        return Admission(wait=message, reason="WaitingForMigration")
    if instance.node is None:
        return Admission(refusal=f"the instance is {instance.phase}; it runs on no node")
    if instance.unmigratable:
        return Admission(refusal=f"the instance is not live-migratable: {instance.unmigratable}")
    refusal = phase_refusal(instance.phase, instance.reason)
    if refusal is not None:
        return Admission(refusal=refusal)
    waiting = waiting_for_room(busy, instance.node, targets, limit)
    return Admission(wait=waiting, reason="WaitingForNode") if waiting else Admission()


def waiting_for_room(busy: Counter[str], source: str, targets: Collection[str], limit: int) -> str | None:
    """Why a migration must wait (its source, or every target it could take, at the per-node limit of
    migrations in flight), or None. No target at all is not a wait: scheduling fails with the reasons."""
    if busy[source] >= limit:
        return f"node {source} has {busy[source]} migrations in flight (limit {limit})"
    if targets and all(busy[t] >= limit for t in targets):
        return f"{', '.join(sorted(targets))}: at the limit of {limit} migrations in flight"
    return None


@dataclass(frozen=True)
class Steering:
    """Where a running migration's steering stands: set by `steer` on every poll."""

    aborted: bool = False
    timed_out: bool = False
    ramp_step: int = 0


@dataclass(frozen=True)
class Steer:
    """What to tell libvirt now."""

    abort: bool = False
    post_copy: bool = False
    max_downtime_ms: int | None = None
    state: MigrationState = field(default_factory=MigrationState)  # fields to report (only those set)


def steer(
    steering: Steering,
    elapsed: float,
    abort_wanted: bool,
    policy: Policy,
    ramp: list[tuple[float, int]],
    timeout: float,
) -> tuple[Steer, Steering]:
    """Honour an abort, enforce the completion timeout (post-copy when allowed, else abort) and step the
    downtime ramp, `elapsed` seconds into the migration."""
    fields: dict[str, object] = {}
    abort = post_copy = False
    if abort_wanted and not steering.aborted:
        abort = True
        steering = replace(steering, aborted=True)
        fields.update(abort_requested=True, abort_status="Aborting")
    if not steering.aborted and elapsed > timeout and not steering.timed_out:
        steering = replace(steering, timed_out=True)
        post_copy, abort = policy.allow_post_copy, not policy.allow_post_copy
        if post_copy:
            fields["mode"] = "PostCopy"
    step = steering.ramp_step
    while step + 1 < len(ramp) and elapsed >= ramp[step + 1][0]:
        step += 1
    downtime = ramp[step][1] if step != steering.ramp_step else None
    if downtime is not None:
        fields["current_max_downtime_ms"] = downtime
    steering = replace(steering, ramp_step=step)
    return Steer(abort, post_copy, downtime, MigrationState(**fields)), steering


def is_the_guest(info: DomainInfo | None) -> bool:
    """The copy that is the guest: running, or paused by its user (libvirt keeps such a guest paused on the
    target). The other copy is paused for the migration or gone."""
    if info is None:
        return False
    return info.state in (DomainState.RUNNING, DomainState.BLOCKED) or (
        info.state is DomainState.PAUSED and info.reason == "user"
    )


class Location(StrEnum):
    TARGET = "target"  # moved: the migration succeeded
    SOURCE = "source"  # stayed: it failed and the guest runs where it was
    NOWHERE = "nowhere"  # the domain runs on neither node
    UNSETTLED = "unsettled"  # live on both (the switch-over moment) or a node cannot be asked: look again


def where_the_guest_is(
    on_source: DomainInfo | None, on_target: DomainInfo | None, nodes_answered: bool
) -> Location:
    """libvirt resumes the target only after the source has stopped, and resumes the source only when the
    migration failed: the one live copy tells the outcome."""
    if is_the_guest(on_target) and not is_the_guest(on_source):
        return Location.TARGET
    if is_the_guest(on_source) and not is_the_guest(on_target):
        return Location.SOURCE
    if on_source is None and on_target is None and nodes_answered:
        return Location.NOWHERE
    return Location.UNSETTLED


def merged(*parts: MigrationState) -> MigrationState:
    """One partial migrationState of several: the fields each sets, later parts winning."""
    return MigrationState.model_validate({k: getattr(p, k) for p in parts for k in p.model_fields_set})


def progress_state(job: JobProgress) -> MigrationState:
    """migrationState's progress fields from libvirt's job statistics (only those libvirt reported)."""
    fields = {
        "data_total_bytes": job.data_total,
        "data_processed_bytes": job.data_processed,
        "data_remaining_bytes": job.data_remaining,
        "memory_dirty_rate_bytes_per_second": job.memory_dirty_rate,
        "auto_converge_throttle_percent": job.auto_converge_throttle,
        "transfer_rate_bytes_per_second": job.memory_bps,
        "iteration": job.iteration,
        "elapsed_ms": job.elapsed_ms,
    }
    return MigrationState(**{k: v for k, v in fields.items() if v is not None})


def candidates(
    views: list[NodeView], source: str, target_node: str | None
) -> tuple[list[NodeView], dict[str, str]]:
    """The nodes a migration may move to, and why each other node may not (before capacity is looked at)."""
    reasons = {source: "is the source node"}
    if target_node and target_node not in {v.name for v in views}:
        reasons[target_node] = "no such node"
    others = [v for v in views if v.name != source]
    if not target_node:
        return others, reasons
    reasons.update({v.name: "not the requested targetNode" for v in others if v.name != target_node})
    return [v for v in others if v.name == target_node], reasons
