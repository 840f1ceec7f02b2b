"""The migration reconciler: admit, choose a target, prepare it, run a peer-to-peer live migration while
reporting libvirt's job progress, and hand the instance over to the target.

A migration holds its instance from Scheduled until it finishes (`progress.migration` on the instance row,
set and cleared in the same transactions as the migration's phase), so the instance reconciler reports
Migrating and never acts on the domain meanwhile. A pass that finds a migration Running did not start it: the
worker that did is gone. It waits for any libvirt job still running and then decides by where the domain
runs, so the instance always ends on exactly one node and the database names it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.clock import utc_now
from app.controllers.base import Result
from app.controllers.instances import POOL, cluster_views, domain_name, plan_volumes
from app.controllers.migration_policy import Policy, completion_timeout, downtime_ramp
from app.controllers.scheduling import MIB, Request, choose, unschedulable_message, why_not
from app.db import Database
from app.kinds import INSTANCES, MIGRATIONS, NODES
from app.repositories import workqueue
from app.repositories.migrations import MigrationRepository
from app.repositories.resources import ResourceRepository
from app.schemas.conditions import find_condition
from app.schemas.instance import InstanceSpec, requested_memory, requested_vcpus
from app.schemas.migration import FINISHED, IN_FLIGHT, MigrationSpec, phase_refusal
from app.virt import images
from app.virt.driver import (
    DomainInfo,
    DomainNotFound,
    DomainState,
    EventKind,
    Hypervisor,
    HypervisorError,
    HypervisorEvent,
    HypervisorPool,
    JobProgress,
    MigrationOptions,
)

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5  # progress reports and abort checks while a migration runs
WAIT_FOR_ROOM = 2.0  # a Pending migration over the per-node limit looks again after this
SETTLE_SECONDS = 1.0  # the domain is active on both nodes for a moment at the switch-over
KEEP_FINISHED = 5  # finished migrations kept per instance (KubeVirt keeps five too)
ACTIVE = (DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED)  # a QEMU process exists


def in_flight(session: Session) -> Counter[str]:
    """Migrations under way per node, out or in: a migration counts from Scheduled (its target chosen and
    reserved) until it ends."""
    counts: Counter[str] = Counter()
    for row in MigrationRepository(session).unfinished():
        status = row.status or {}
        if status.get("phase") in IN_FLIGHT:
            state = status.get("migrationState") or {}
            counts.update({str(state[k]) for k in ("sourceNode", "targetNode") if state.get(k)})
    return counts


def waiting_for_room(busy: Counter[str], source: str, targets: Collection[str], limit: int) -> str | None:
    """Why a migration must wait (its source, or every target it could take, at the per-node limit of
    migrations in flight), or None. No target at all is not a wait: scheduling fails with the reasons."""
    if busy[source] >= limit:
        return f"node {source} has {busy[source]} migrations in flight (limit {limit})"
    if targets and all(busy[t] >= limit for t in targets):
        return f"{', '.join(sorted(targets))}: at the limit of {limit} migrations in flight"
    return None


@dataclass
class Snapshot:
    namespace: str
    name: str
    uid: str
    spec: MigrationSpec
    status: dict[str, Any]
    intent: dict[str, Any]
    deleting: bool
    instance: dict[str, Any] | None = None  # uid, node, phase, spec, domain, lock, deleting, migratable
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {uri, migrationUri}

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.status.get("migrationState") or {})

    @property
    def abort_wanted(self) -> bool:
        return self.deleting or bool(self.intent.get("abort")) or bool((self.instance or {}).get("deleting"))


def _stamp() -> str:
    return utc_now().isoformat().replace("+00:00", "Z")


class SwitchoverClock:
    """When each domain was last paused for a migration on its source and resumed on its target, as libvirt's
    events reached this process: the guest's pause on one clock, whatever the hosts' clocks say. libvirt's own
    downtime figure ends only after its bookkeeping on the target (status saved, monitor released), 10-20 ms
    after the guest runs again (QEMU's tracepoints on the test rig)."""

    PAUSED = frozenset({("Suspended", "Migrated"), ("Suspended", "PostCopy")})
    RESUMED = frozenset({("Resumed", "Migrated"), ("Resumed", "PostCopy")})

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._paused: dict[str, float] = {}
        self._resumed: dict[str, float] = {}

    def observe(self, event: HypervisorEvent) -> None:
        """Called on libvirt's event thread: no waiting here."""
        pair = (event.event, event.detail)
        if event.kind is not EventKind.LIFECYCLE or not event.domain_uuid:
            return
        if pair in self.PAUSED or pair in self.RESUMED:
            with self._changed:
                (self._paused if pair in self.PAUSED else self._resumed)[event.domain_uuid] = event.at
                self._changed.notify_all()

    def pause_ms(self, uuid: str, since: float, wait: float = 1.0) -> int | None:
        """The pause of the switch-over after `since` (monotonic), once both events are in; None if they do
        not come within `wait` seconds (this process started after the switch-over, or lost a connection)."""

        def seen() -> bool:
            return self._paused.get(uuid, 0.0) >= since and self._resumed.get(uuid, 0.0) >= since

        with self._changed:
            if not self._changed.wait_for(seen, timeout=wait):
                return None
            paused, resumed = self._paused.pop(uuid), self._resumed.pop(uuid)
        return round((resumed - paused) * 1000) if resumed >= paused else None


class MigrationReconciler:
    kind = MIGRATIONS.kind

    def __init__(
        self,
        db: Database,
        hypervisors: HypervisorPool,
        defaults: Policy,
        image_dir: Path,
        per_node: int = 2,
        volume_dir: str = "/var/lib/corral/instances",
    ) -> None:
        self.db = db
        self.hypervisors = hypervisors
        self.defaults = defaults
        self.per_node = per_node
        self.image_dir = image_dir
        self.volume_dir = volume_dir
        self.switchovers = SwitchoverClock()  # fed by the worker with every libvirt event

    def keys_for_event(self, session: Session, node: str, event: HypervisorEvent) -> list[str]:
        return []  # a running migration is watched by its own pass; the instance reconciler takes events

    # -- entry ---------------------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> Result:
        snap = self._read(namespace, name)
        if snap is None:
            return Result()
        if snap.phase in FINISHED:
            if snap.deleting:
                self._remove(snap)
            return Result()
        if snap.phase == "Running":
            return self._recover(snap)
        if snap.abort_wanted:
            self._finish(snap, None, "Aborted", "canceled before the migration started", aborted=True)
            if snap.deleting:
                self._remove(snap)
            return Result()
        if snap.phase == "Pending":
            waiting = self._admit(snap)
            if waiting is not None:
                return waiting
        if snap.phase in ("Pending", "Scheduling"):
            stop = self._schedule(snap)
            if stop is not None:
                return stop
        snap = self._read(namespace, name) or snap
        target = snap.state.get("targetNode")
        if snap.phase in ("Scheduled", "PreparingTarget") and not self._prepare_target(snap, str(target)):
            return Result()
        return self._run(snap)

    # -- reading and writing -------------------------------------------------------------------------
    def _read(self, namespace: str, name: str) -> Snapshot | None:
        with self.db.read() as session:
            row = MigrationRepository(session).get(namespace, name)
            if row is None:
                return None
            snap = Snapshot(
                namespace,
                name,
                row.uid,
                MigrationSpec.model_validate(row.spec),
                dict(row.status or {}),
                dict(row.intent or {}),
                row.deleted_at is not None,
            )
            instance = ResourceRepository[Any](session, INSTANCES).get(namespace, row.vmi_name)
            if instance is not None:
                status = instance.status or {}
                migratable = find_condition(status, "LiveMigratable") or {}
                snap.instance = {
                    "uid": instance.uid,
                    "node": instance.node_name,
                    "phase": status.get("phase"),
                    "reason": status.get("reason"),
                    "spec": InstanceSpec.model_validate(instance.spec),
                    "domain": domain_name(namespace, instance.name, instance.uid, instance.progress or {}),
                    "lock": (instance.progress or {}).get("migration"),
                    "volumes": list((instance.progress or {}).get("volumes", [])),
                    "deleting": instance.deleted_at is not None,
                    "unmigratable": migratable.get("reason") if migratable.get("status") == "False" else None,
                }
            for node in ResourceRepository[Any](session, NODES).page(None)[0]:
                snap.nodes[node.name] = {
                    "uri": node.spec["uri"],
                    "migrationUri": node.spec.get("migrationUri"),
                }
            return snap

    def _update(
        self,
        snap: Snapshot,
        phase: str | None = None,
        *,
        reason: str | None = None,
        message: str | None = None,
        state: dict[str, Any] | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> bool:
        """Write phase and migrationState changes (and `also`, in the same transaction); False: row gone."""
        with self.db.transaction() as session:
            written = self._write_status(session, snap, phase, reason=reason, message=message, state=state)
            if written and also is not None:
                also(session)
            return written

    @staticmethod
    def _write_status(
        session: Session,
        snap: Snapshot,
        phase: str | None = None,
        *,
        reason: str | None = None,
        message: str | None = None,
        state: dict[str, Any] | None = None,
    ) -> bool:
        repo = MigrationRepository(session)
        row = repo.get(snap.namespace, snap.name, for_update=True)
        if row is None or row.uid != snap.uid:
            return False
        status = dict(row.status or {})
        if phase is not None and phase != status.get("phase"):
            stamps = list(status.get("phaseTransitionTimestamps", []))
            stamps.append({"phase": phase, "phaseTransitionTimestamp": _stamp()})
            status.update(phase=phase, phaseTransitionTimestamps=stamps)
        if reason is not None:
            status["reason"] = reason
        if message is not None:
            status["message"] = message[:1000]
        if state:
            status["migrationState"] = {**(status.get("migrationState") or {}), **state}
        if status != row.status:
            row.status = status
            repo.touch(row)
        snap.status = status
        return True

    @staticmethod
    def _hold(session: Session, snap: Snapshot, target: str | None, moved_to: str | None = None) -> None:
        """Take the instance for this migration (`target` set) or release it, moving it to `moved_to`."""
        repo = ResourceRepository[Any](session, INSTANCES)
        row = repo.get(snap.namespace, snap.spec.vmi_name, for_update=True)
        if row is None or snap.instance is None or row.uid != snap.instance["uid"]:
            return
        progress = dict(row.progress or {})
        if target is not None:
            progress["migration"] = {"uid": snap.uid, "name": snap.name, "target": target}
        elif (progress.get("migration") or {}).get("uid") == snap.uid:
            progress["migration"] = None
        if progress != row.progress or moved_to is not None:
            row.progress = progress
            if moved_to is not None:  # the database names the new node in the same commit as the outcome
                row.node_name = moved_to
                row.status = {**(row.status or {}), "nodeName": moved_to}
            repo.touch(row)
        workqueue.enqueue(session, INSTANCES.work_key(row.namespace, row.name))

    def _finish(
        self,
        snap: Snapshot,
        phase_reason: str | None,
        reason: str,
        message: str,
        *,
        aborted: bool = False,
        moved_to: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Succeeded (moved_to set) or Failed; releases the instance in the same transaction."""
        succeeded = moved_to is not None
        state: dict[str, Any] = {"endTimestamp": _stamp(), "completed": succeeded, "failed": not succeeded}
        if not succeeded:
            state["failureReason"] = message
        if aborted:
            state.update(abortRequested=True, abortStatus="Succeeded")
        state.update(extra or {})
        self._update(
            snap,
            "Succeeded" if succeeded else "Failed",
            reason=phase_reason or reason,
            message=message,
            state=state,
            also=lambda session: self._hold(session, snap, None, moved_to),
        )
        log.info("migration %s/%s: %s (%s)", snap.namespace, snap.name, reason, message)
        with self.db.transaction() as session:  # KubeVirt's garbage collection: the newest few stay
            repo = MigrationRepository(session)
            done = [
                m
                for m in repo.of_instance(snap.namespace, snap.spec.vmi_name)
                if m.status.get("phase") in FINISHED
            ]
            for old in done[:-KEEP_FINISHED]:
                repo.remove(old)

    def _remove(self, snap: Snapshot) -> None:
        with self.db.transaction() as session:
            repo = MigrationRepository(session)
            row = repo.get(snap.namespace, snap.name, for_update=True)
            if row is not None and row.uid == snap.uid:
                self._hold(session, snap, None)
                repo.remove(row)

    # -- phases --------------------------------------------------------------------------------------
    def _admit(self, snap: Snapshot) -> Result | None:
        """Pending -> Scheduling, or Failed with the reason, or a wait for room (None: go on)."""
        instance = snap.instance
        refusal = None
        if instance is None:
            refusal = f"instance {snap.spec.vmi_name!r} does not exist"
        elif instance["lock"] and instance["lock"].get("uid") != snap.uid:
            other = instance["lock"].get("name")
            self._update(
                snap, reason="WaitingForMigration", message=f"migration {other!r} of the instance runs"
            )
            return Result(requeue_after=WAIT_FOR_ROOM)
        elif instance["node"] is None:
            refusal = f"the instance is {instance['phase']}; it runs on no node"
        elif instance["unmigratable"]:
            refusal = f"the instance is not live-migratable: {instance['unmigratable']}"
        else:
            refusal = phase_refusal(instance["phase"], instance["reason"])
        if refusal is not None:
            self._finish(snap, None, "NotMigratable", refusal)
            return Result()
        assert instance is not None
        source = str(instance["node"])
        targets = {snap.spec.target_node} if snap.spec.target_node else set(snap.nodes) - {source}
        with self.db.read() as session:
            waiting = waiting_for_room(in_flight(session), source, targets, self.per_node)
        if waiting is not None:
            self._update(snap, "Pending", reason="WaitingForNode", message=waiting)
            return Result(requeue_after=WAIT_FOR_ROOM)
        self._update(snap, "Scheduling", reason="Scheduling", message="")
        return None

    def _schedule(self, snap: Snapshot) -> Result | None:
        """Scheduling -> Scheduled: a target with room, reserved together with the instance (None: go on);
        else Failed, or back to Pending while the nodes are at their limit of migrations (checked again
        here, under the node locks the reservation takes, so racing migrations cannot pass it together)."""
        instance = snap.instance
        assert instance is not None
        source, spec = str(instance["node"]), instance["spec"]
        request = Request(requested_vcpus(spec), requested_memory(spec), spec.node_selector)
        chosen_name: str | None = None
        with self.db.transaction() as session:
            _, views = cluster_views(session, instance["uid"])
            reasons = {source: "is the source node"}
            if snap.spec.target_node and snap.spec.target_node not in {v.name for v in views}:
                reasons[snap.spec.target_node] = "no such node"
            candidates = [v for v in views if v.name != source]
            if snap.spec.target_node:
                reasons.update(
                    {
                        v.name: "not the requested targetNode"
                        for v in candidates
                        if v.name != snap.spec.target_node
                    }
                )
                candidates = [v for v in candidates if v.name == snap.spec.target_node]
            busy = in_flight(session)
            fitting = {v.name for v in candidates if why_not(v, request) is None}
            waiting = waiting_for_room(busy, source, fitting, self.per_node)
            if waiting is not None:
                self._write_status(session, snap, "Pending", reason="WaitingForNode", message=waiting)
                return Result(requeue_after=WAIT_FOR_ROOM)
            chosen, why = choose([v for v in candidates if busy[v.name] < self.per_node], request)
            reasons.update(why)
            if chosen is not None:
                chosen_name = chosen.name
                policy = self.defaults.overridden_by(snap.spec).configuration()
                state = {
                    "sourceNode": source,
                    "targetNode": chosen.name,
                    "sourcePod": instance["domain"],
                    "targetPod": instance["domain"],
                    "completed": False,
                    "failed": False,
                    "migrationConfiguration": policy.model_dump(by_alias=True, mode="json"),
                }
                message = f"target node {chosen.name}"
                if self._write_status(
                    session, snap, "Scheduled", reason="Scheduled", message=message, state=state
                ):
                    self._hold(session, snap, chosen.name)  # placement commits with the reservation
        if chosen_name is None:
            self._finish(snap, "Unschedulable", "Unschedulable", unschedulable_message(len(views), reasons))
            return Result()
        return None

    def _prepare_target(self, snap: Snapshot, target: str) -> bool:
        """PreparingTarget -> TargetReady. Volumes the target's pool sees are on shared storage; the others
        are created there, empty, on the same image, and the migration copies them (copiedVolumes is
        written first, so a worker that dies halfway never takes its own copies for shared ones)."""
        self._update(snap, "PreparingTarget", reason="PreparingTarget", message=f"checking node {target}")
        instance = snap.instance
        assert instance is not None
        copies = list(snap.state.get("copiedVolumes") or [])
        try:
            target_hv = self._hypervisor(snap, target)
            target_hv.ensure_pool(POOL, self.volume_dir)
            target_hv.refresh_pool(POOL)  # volumes another node created are unknown to the pool until then
            source_hv = self._hypervisor(snap, str(instance["node"]))
            volumes = [f"{instance['uid']}-{v}.qcow2" for v in instance["volumes"]]
            copies += [
                v
                for v in volumes
                if v not in copies and source_hv.volume_path(POOL, v) and not target_hv.volume_path(POOL, v)
            ]
        except HypervisorError as exc:
            self._finish(snap, None, "TargetNotReady", f"preparing node {target}: {exc}"[:500])
            return False
        if not copies:
            self._update(snap, "TargetReady", reason="TargetReady", message=f"node {target} sees the volumes")
            return True
        try:
            shared = self._shared(source_hv, target_hv, f"{snap.uid}-probe.qcow2")
        except HypervisorError as exc:
            self._finish(snap, None, "TargetNotReady", f"preparing node {target}: {exc}"[:500])
            return False
        if shared:  # the same storage, yet the volumes are not there: nothing to copy them onto safely
            message = f"node {target} shares the {POOL} pool's storage but does not see {', '.join(copies)}"
            self._finish(snap, None, "TargetStorageMissing", message[:1000])
            return False
        self._update(snap, state={"copiedVolumes": copies})
        try:
            for volume in plan_volumes(instance["spec"], self.image_dir, str(instance["uid"]))[1]:
                if volume.volume_id in copies:
                    target_hv.create_volume(POOL, volume.volume_id, volume.capacity, volume.backing)
        except (HypervisorError, images.ImageNotFound) as exc:
            self._cleanup_target(snap, target, str(instance["domain"]))
            message = (
                f"node {target} does not see {', '.join(copies)} in its {POOL} pool and could not "
                f"create a copy there: {exc}"
            )
            self._finish(snap, None, "TargetStorageMissing", message[:1000])
            return False
        message = f"node {target} has empty copies of {', '.join(copies)}; the migration fills them"
        self._update(snap, "TargetReady", reason="TargetReady", message=message)
        return True

    def _run(self, snap: Snapshot) -> Result:
        """TargetReady -> Running -> Succeeded/Failed, in this pass (the lease is renewed meanwhile)."""
        instance = snap.instance
        assert instance is not None
        state = snap.state
        source, target, domain = str(state["sourceNode"]), str(state["targetNode"]), str(instance["domain"])
        policy, memory = self._policy(snap)
        ramp = downtime_ramp(policy, memory)
        try:
            source_hv = self._hypervisor(snap, source)
            destination = snap.nodes[target]["migrationUri"] or snap.nodes[target]["uri"]
            source_hv.set_max_downtime(domain, ramp[0][1])
        except (HypervisorError, KeyError) as exc:
            self._cleanup_target(snap, target, domain)
            self._finish(snap, None, "SourceNotReady", f"node {source}: {exc}"[:500])
            return Result()
        copies = state.get("copiedVolumes") or []
        try:
            planned = plan_volumes(instance["spec"], self.image_dir, str(instance["uid"]))[1]
            disks = tuple(v.target for v in planned if v.volume_id in copies)
        except images.ImageNotFound as exc:
            self._cleanup_target(snap, target, domain)
            self._finish(snap, None, "TargetStorageMissing", str(exc)[:500])
            return Result()
        # PreparingTarget saw every other volume on the target (cache='none' disks): shared storage.
        options = MigrationOptions(
            policy.bandwidth_mib,
            policy.allow_auto_converge,
            policy.allow_post_copy,
            storage_verified_shared=True,
            copy_disks=disks,
        )
        started = {"startTimestamp": _stamp(), "mode": "PreCopy", "currentMaxDowntimeMs": ramp[0][1]}
        if not self._update(
            snap, "Running", reason="Migrating", message=f"{source} -> {target}", state=started
        ):
            return Result()
        failure: list[HypervisorError] = []

        def migrate() -> None:
            try:
                source_hv.migrate(domain, destination, options)
            except HypervisorError as exc:
                failure.append(exc)

        thread = threading.Thread(target=migrate, name=f"migrate-{domain}", daemon=True)
        since = time.monotonic()
        thread.start()
        outcome = self._monitor(snap, source_hv, domain, _joined(thread), policy, ramp, memory)
        outcome["since"] = since
        thread.join()
        return self._conclude(snap, failure[0] if failure else None, outcome)

    def _monitor(
        self,
        snap: Snapshot,
        source_hv: Hypervisor,
        domain: str,
        ended: Callable[[float], bool],
        policy: Policy,
        ramp: list[tuple[float, int]],
        memory: int,
    ) -> dict[str, Any]:
        """Report progress, step the downtime ramp, enforce the completion timeout and honour aborts."""
        began = time.monotonic()
        timeout = completion_timeout(policy, memory)
        step, outcome = 0, {"aborted": False, "timedOut": False}
        while not ended(POLL_SECONDS):
            elapsed = time.monotonic() - began
            fresh = self._read(snap.namespace, snap.name)
            state: dict[str, Any] = {}
            try:
                if fresh is not None and fresh.abort_wanted and not outcome["aborted"]:
                    source_hv.abort_job(domain)
                    outcome["aborted"] = True
                    state.update(abortRequested=True, abortStatus="Aborting")
                if not outcome["aborted"] and elapsed > timeout and not outcome["timedOut"]:
                    outcome["timedOut"] = True
                    if policy.allow_post_copy:
                        source_hv.start_post_copy(domain)
                        state["mode"] = "PostCopy"
                    else:
                        source_hv.abort_job(domain)
                while step + 1 < len(ramp) and elapsed >= ramp[step + 1][0]:
                    step += 1
                    source_hv.set_max_downtime(domain, ramp[step][1])
                    state["currentMaxDowntimeMs"] = ramp[step][1]
                job = source_hv.job_progress(domain)
            except HypervisorError as exc:
                log.info("migration %s/%s: %s", snap.namespace, snap.name, exc)
                job = None
            if job is not None and job.active:
                state.update(progress_fields(job))
            if state:
                self._update(snap, state=state)
        return outcome

    def _conclude(self, snap: Snapshot, error: HypervisorError | None, outcome: dict[str, Any]) -> Result:
        state = snap.state
        source, target, domain = str(state["sourceNode"]), str(state["targetNode"]), str(state["sourcePod"])
        stopped = outcome["aborted"] or outcome["timedOut"]
        if error is None or not stopped or not _live(self._probe(snap, source, domain)[0]):
            # Done, failed by itself, or an abort that came too late: where the guest runs decides.
            return self._by_location(snap, source, target, domain, str(error or ""), outcome.get("since"))
        self._cleanup_target(snap, target, domain)
        if outcome["aborted"]:
            self._finish(
                snap, "Aborted", "Aborted", f"aborted on request; the instance runs on {source}", aborted=True
            )
            return Result()
        timeout = completion_timeout(*self._policy(snap))
        message = f"did not complete within {timeout:.0f}s (completionTimeoutPerGiB x memory); aborted"
        self._finish(snap, "Timeout", "CompletionTimeout", message)
        return Result()

    def _recover(self, snap: Snapshot) -> Result:
        """Running, but no pass of this worker drives it: follow a job still running, then decide."""
        state = snap.state
        source, target, domain = str(state["sourceNode"]), str(state["targetNode"]), str(state["sourcePod"])
        try:
            source_hv = self._hypervisor(snap, source)
        except HypervisorError as exc:
            self._update(snap, reason="SourceUnreachable", message=str(exc)[:500])
            return Result(requeue_after=SETTLE_SECONDS * 5)

        def job_running() -> bool:
            try:
                job = source_hv.job_progress(domain)
            except HypervisorError:
                return False
            return job is not None and job.active

        def job_ended(timeout: float) -> bool:
            time.sleep(timeout)  # no thread of ours to wait for: look at libvirt's job again
            return not job_running()

        if job_running():
            policy, memory = self._policy(snap)
            ramp = downtime_ramp(policy, memory)
            outcome = self._monitor(snap, source_hv, domain, job_ended, policy, ramp, memory)
            if outcome["aborted"]:
                return self._conclude(snap, HypervisorError("aborted"), outcome)
        return self._by_location(snap, source, target, domain, error="the worker driving it stopped")

    def _by_location(
        self,
        snap: Snapshot,
        source: str,
        target: str,
        domain: str,
        error: str = "",
        since: float | None = None,
    ) -> Result:
        """Decide by where the guest runs. A running (not paused) copy is the live one: libvirt resumes the
        target only after the source has stopped, and resumes the source only when the migration failed.
        Neither or both live (the switch-over moment, an unreachable node): look again shortly. `since`: when
        this process started the migration (it saw the switch-over's events)."""
        on_source, source_problem = self._probe(snap, source, domain)
        on_target, target_problem = self._probe(snap, target, domain)
        if on_target is not None and _live(on_target) and not _live(on_source):
            extra: dict[str, Any] = {}
            with suppress(HypervisorError):  # the figures of the finished job live on the target
                done = self._hypervisor(snap, target).job_progress(domain, completed=True)
                if done is not None:
                    extra = {**progress_fields(done), "libvirtDowntimeMs": done.downtime_ms}
            if on_target.state is not DomainState.PAUSED:  # paused by its user all along: no pause to tell
                paused = None
                if since is not None and snap.instance is not None:
                    paused = self.switchovers.pause_ms(str(snap.instance["uid"]), since)
                extra["downtimeMs"] = paused if paused is not None else extra.get("libvirtDowntimeMs")
            self._finish(snap, None, "Succeeded", f"moved to {target}", moved_to=target, extra=extra)
            self._delete_copied(snap, source)  # the guest runs on the copies: the originals go
            return Result()
        if _live(on_source) and not _live(on_target):
            self._cleanup_target(snap, target, domain)
            self._finish(snap, None, "MigrationFailed", f"{error or 'failed'}; the instance runs on {source}")
            return Result()
        if on_source is None and on_target is None and not (source_problem or target_problem):
            message = f"{error or 'failed'}; the domain runs on neither node"
            self._finish(snap, None, "MigrationFailed", message)
            return Result()
        problems = "; ".join(p for p in (source_problem, target_problem) if p) or "the guest is live on both"
        self._update(snap, reason="SwitchingOver", message=problems[:500])
        return Result(requeue_after=SETTLE_SECONDS)

    def _probe(self, snap: Snapshot, node: str, domain: str) -> tuple[DomainInfo | None, str]:
        """The domain on `node` if it is ours (same uuid), and what went wrong asking."""
        try:
            return self._state_on(snap, node, domain), ""
        except HypervisorError as exc:
            return None, f"node {node}: {exc}"

    def _state_on(self, snap: Snapshot, node: str, domain: str) -> DomainInfo | None:
        """The domain on `node` if it is ours (same uuid); raises when the node cannot be asked."""
        hv = self._hypervisor(snap, node)
        try:
            info = hv.lookup(domain)
        except DomainNotFound:
            return None
        return info if snap.instance is None or info.uuid == snap.instance["uid"] else None

    def _cleanup_target(self, snap: Snapshot, target: str, domain: str) -> None:
        """A failed migration may leave an inactive definition on the target, and the copies it created
        there: remove them (ours only; nothing while our domain is active there)."""
        with suppress(HypervisorError):
            info = self._state_on(snap, target, domain)
            if info is not None and info.state in ACTIVE:
                return
            if info is not None:
                self._hypervisor(snap, target).undefine(domain)
            self._delete_copied(snap, target)

    @staticmethod
    def _shared(source_hv: Hypervisor, target_hv: Hypervisor, probe: str) -> bool:
        """Whether the two pools are one storage: a volume made on the target shows on the source. Copies
        are made only where it does not, so removing the source's originals never touches the target's."""
        target_hv.create_volume(POOL, probe, MIB, None)
        try:
            source_hv.refresh_pool(POOL)
            return source_hv.volume_path(POOL, probe) is not None
        finally:
            target_hv.delete_volume(POOL, probe)

    def _delete_copied(self, snap: Snapshot, node: str) -> None:
        """Remove the copied volumes from `node` (the target's copies after a failure, the source's originals
        after a success); a volume that cannot be removed now is logged and left."""
        for volume in snap.state.get("copiedVolumes") or []:
            try:
                self._hypervisor(snap, node).delete_volume(POOL, volume)
            except HypervisorError as exc:
                log.warning(
                    "migration %s/%s: volume %s stays on %s: %s", snap.namespace, snap.name, volume, node, exc
                )

    def _policy(self, snap: Snapshot) -> tuple[Policy, int]:
        """The policy in effect and the guest memory its ramp and timeout scale with."""
        instance = snap.instance
        return self.defaults.overridden_by(snap.spec), requested_memory(instance["spec"]) if instance else 0

    def _hypervisor(self, snap: Snapshot, node: str) -> Hypervisor:
        if node not in snap.nodes:
            raise HypervisorError(f"node {node!r} is not registered")
        return self.hypervisors.get(node, snap.nodes[node]["uri"])


def _joined(thread: threading.Thread) -> Callable[[float], bool]:
    """Wait up to `timeout` seconds for the thread to end, and say whether it has: its end is seen at once."""

    def ended(timeout: float) -> bool:
        thread.join(timeout)
        return not thread.is_alive()

    return ended


def _live(info: DomainInfo | None) -> bool:
    """The copy that is the guest: running, or paused by its user (libvirt keeps such a guest paused on the
    target). The other copy is paused for the migration or gone."""
    if info is None:
        return False
    return info.state in (DomainState.RUNNING, DomainState.BLOCKED) or (
        info.state is DomainState.PAUSED and info.reason == "user"
    )


def progress_fields(job: JobProgress) -> dict[str, Any]:
    """migrationState's progress fields from libvirt's job statistics."""
    fields = {
        "dataTotalBytes": job.data_total,
        "dataProcessedBytes": job.data_processed,
        "dataRemainingBytes": job.data_remaining,
        "memoryDirtyRateBytesPerSecond": job.memory_dirty_rate,
        "autoConvergeThrottlePercent": job.auto_converge_throttle,
        "transferRateBytesPerSecond": job.memory_bps,
        "iteration": job.iteration,
        "elapsedMs": job.elapsed_ms,
    }
    return {k: v for k, v in fields.items() if v is not None}
