"""The migration reconciler: admit, choose a target, prepare it, run a peer-to-peer live migration while
reporting libvirt's job progress, and hand the instance over to the target.

A migration holds its instance from Scheduled until it finishes (`progress.migration` on the instance row,
set and cleared in the same transactions as the migration's phase), so the instance reconciler reports
Migrating and never acts on the domain meanwhile. A pass that finds a migration Running did not start it: the
worker that did is gone. It waits for any libvirt job still running and then decides by where the domain
runs, so the instance always ends on exactly one node and the database names it. The decisions themselves
are pure functions in app.controllers.migration_decisions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session

from app.clock import Clock, utc_now
from app.controllers.base import NodeEvent, Result
from app.controllers.image_cache import ANY_TIME, ImageCache, ImageNotReady, resolver
from app.controllers.migration_decisions import (
    Location,
    Steering,
    admit,
    candidates,
    is_the_guest,
    merged,
    progress_state,
    steer,
    waiting_for_room,
    where_the_guest_is,
)
from app.controllers.migration_policy import Policy, completion_timeout, downtime_ramp
from app.controllers.migration_rows import LoadedMigration, MigrationRows, NodeEndpoints, in_flight
from app.controllers.migration_storage import MigrationStorage, StorageProblem
from app.controllers.naming import default_network
from app.controllers.placement import Request, choose, cluster_views, unschedulable_message, why_not
from app.controllers.switchover import SwitchoverClock
from app.controllers.volumes import ImageResolver
from app.db import Database
from app.kinds import MIGRATIONS
from app.schemas.instance import requested_memory, requested_vcpus
from app.schemas.migration import FINISHED, MigrationState
from app.virt import images
from app.virt.driver import (
    DomainInfo,
    DomainState,
    Hypervisor,
    HypervisorError,
    MigrationOptions,
    NetworkConfig,
    NodeHypervisors,
)

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5  # progress reports and abort checks while a migration runs
WAIT_FOR_ROOM = 2.0  # a Pending migration over the per-node limit looks again after this
SETTLE_SECONDS = 1.0  # the domain is active on both nodes for a moment at the switch-over
IMAGE_WAIT = 30.0  # the target pulls the instance's image; its progress wakes the migration sooner


class MigrationReconciler:
    kind = MIGRATIONS.kind

    def __init__(
        self,
        db: Database,
        hypervisors: NodeHypervisors,
        defaults: Policy,
        image_dir: Path,
        per_node: int = 2,
        volume_dir: str = "/var/lib/corral/instances",
        clock: Clock = utc_now,
        network: NetworkConfig | None = None,
    ) -> None:
        self.db = db
        self.hypervisors = hypervisors
        self.defaults = defaults
        self.network = network or default_network()
        self.per_node = per_node
        self.clock = clock
        self.rows = MigrationRows(db, clock)
        self.switchovers = SwitchoverClock()  # fed by the worker with every libvirt event
        self.image_dir = image_dir
        self.images = ImageCache(db, clock)
        self.volume_dir = volume_dir

    def keys_for_events(self, session: Session, events: Sequence[NodeEvent]) -> list[str]:
        return []  # a running migration is watched by its own pass; the instance reconciler takes events

    # -- entry ---------------------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> Result:
        m = self.rows.load(namespace, name)
        if m is None:
            return Result()
        if m.phase in FINISHED:
            if m.deleting:
                self.rows.remove(m)
            return Result()
        if m.phase == "Running":
            return self._recover(m)
        if m.abort_wanted:
            self.rows.finish(m, None, "Aborted", "canceled before the migration started", aborted=True)
            if m.deleting:
                self.rows.remove(m)
            return Result()
        if m.phase == "Pending" and (waiting := self._admit(m)) is not None:
            return waiting
        if m.phase in ("Pending", "Scheduling") and (stop := self._schedule(m)) is not None:
            return stop
        m = self.rows.load(namespace, name) or m
        if m.phase in ("Scheduled", "PreparingTarget"):
            stop = self._prepare_target(m, str(m.state.target_node))
            if stop is not None:
                return stop
        return self._run(m)

    # -- phases --------------------------------------------------------------------------------------
    def _admit(self, m: LoadedMigration) -> Result | None:
        """Pending -> Scheduling, or Failed with the reason, or a wait (None: go on)."""
        instance = m.instance
        source = instance.node if instance is not None else None
        targets = {m.spec.target_node} if m.spec.target_node else set(m.nodes) - {str(source)}
        with self.db.read() as session:
            busy = in_flight(session)
        admission = admit(m.uid, m.spec.vmi_name, instance, busy, targets, self.per_node)
        if admission.refusal is not None:
            self.rows.finish(m, None, "NotMigratable", admission.refusal)
            return Result()
        if admission.wait is not None:
            phase = "Pending" if admission.reason == "WaitingForNode" else None
            self.rows.update(m, phase, reason=admission.reason, message=admission.wait)
            return Result(requeue_after=WAIT_FOR_ROOM)
        self.rows.update(m, "Scheduling", reason="Scheduling", message="")
        return None

    def _schedule(self, m: LoadedMigration) -> Result | None:
        """Scheduling -> Scheduled: a target with room, reserved together with the instance (None: go on);
        else Failed, or back to Pending while the nodes are at their limit of migrations (checked again
        here, under the node locks the reservation takes, so racing migrations cannot pass it together)."""
        instance = m.instance
        assert instance is not None
        source, spec = str(instance.node), instance.spec
        request = Request(requested_vcpus(spec), requested_memory(spec), spec.node_selector)
        with self.db.transaction() as session:
            _, views = cluster_views(session, instance.uid)
            possible, reasons = candidates(views, source, m.spec.target_node)
            busy = in_flight(session)
            fitting = {v.name for v in possible if why_not(v, request) is None}
            waiting = waiting_for_room(busy, source, fitting, self.per_node)
            if waiting is not None:
                self.rows.write_status(session, m, "Pending", reason="WaitingForNode", message=waiting)
                return Result(requeue_after=WAIT_FOR_ROOM)
            chosen, why = choose([v for v in possible if busy[v.name] < self.per_node], request)
            reasons.update(why)
            if chosen is not None:
                state = MigrationState(
                    source_node=source,
                    target_node=chosen.name,
                    source_pod=instance.domain,
                    target_pod=instance.domain,
                    completed=False,
                    failed=False,
                    migration_configuration=self.defaults.overridden_by(m.spec).configuration(),
                )
                message = f"target node {chosen.name}"
                if self.rows.write_status(
                    session, m, "Scheduled", reason="Scheduled", message=message, state=state
                ):
                    self.rows.hold(session, m, chosen.name)  # placement commits with the reservation
                return None
        self.rows.finish(m, "Unschedulable", "Unschedulable", unschedulable_message(len(views), reasons))
        return Result()

    def _prepare_target(self, m: LoadedMigration, target: str) -> Result | None:
        """PreparingTarget -> TargetReady (None: go on). Volumes the target's pool sees are on shared storage;
        the others are created there, empty, on the same image (pulled there first when it came from a
        registry), and the migration copies them (copiedVolumes is written first, so a worker that dies
        halfway never takes its own copies for shared ones)."""
        self.rows.update(m, "PreparingTarget", reason="PreparingTarget", message=f"checking node {target}")
        instance = m.instance
        assert instance is not None
        try:
            copies = self._storage(m).volumes_to_copy(instance, target, m.copies, f"{m.uid}-probe.qcow2")
        except StorageProblem as exc:
            self.rows.finish(m, None, exc.reason, str(exc)[:1000])
            return Result()
        if copies:
            self.rows.update(m, state=MigrationState(copied_volumes=copies))
            try:
                self._storage(m).create_copies(instance, target, copies)
            except ImageNotReady as exc:  # the pull wakes this migration as it goes
                self.rows.update(m, "PreparingTarget", reason="TargetImagePulling", message=str(exc)[:1000])
                return Result(requeue_after=IMAGE_WAIT)
            except StorageProblem as exc:
                self._storage(m).clean_target(target, instance.domain, instance.uid, copies)
                self.rows.finish(m, None, exc.reason, str(exc)[:1000])
                return Result()
        if copies:
            message = f"node {target} has empty copies of {', '.join(copies)}; the migration fills them"
        else:
            message = f"node {target} sees the volumes"
        self.rows.update(m, "TargetReady", reason="TargetReady", message=message)
        return None

    def _run(self, m: LoadedMigration) -> Result:
        """TargetReady -> Running -> Succeeded/Failed, in this pass (the lease is renewed meanwhile)."""
        instance, state = m.instance, m.state
        assert instance is not None
        source, target, domain = str(state.source_node), str(state.target_node), instance.domain
        policy, memory = self._policy(m)
        ramp = downtime_ramp(policy, memory)
        try:
            source_hv = self._hypervisor(m, source)
            destination = self._hypervisor_endpoints(m, target).destination
            source_hv.set_max_downtime(domain, ramp[0][1])
            disks = self._storage(m).copied_disks(instance, m.copies)
        except (HypervisorError, images.ImageNotFound, ImageNotReady) as exc:
            missing = isinstance(exc, images.ImageNotFound)
            self._storage(m).clean_target(target, domain, instance.uid, m.copies)
            message = str(exc) if missing else f"node {source}: {exc}"
            self.rows.finish(m, None, "TargetStorageMissing" if missing else "SourceNotReady", message[:500])
            return Result()
        # PreparingTarget saw every other volume on the target (cache='none' disks): shared storage.
        options = MigrationOptions(
            policy.bandwidth_mib,
            policy.allow_auto_converge,
            policy.allow_post_copy,
            storage_verified_shared=True,
            copy_disks=disks,
        )
        started = MigrationState(
            start_timestamp=self.clock(), mode="PreCopy", current_max_downtime_ms=ramp[0][1]
        )
        if not self.rows.update(
            m, "Running", reason="Migrating", message=f"{source} -> {target}", state=started
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
        steering = self._monitor(m, source_hv, domain, _joined(thread))
        thread.join()
        return self._conclude(m, failure[0] if failure else None, steering, since)

    def _monitor(
        self, m: LoadedMigration, source_hv: Hypervisor, domain: str, ended: Callable[[float], bool]
    ) -> Steering:
        """Report progress, step the downtime ramp, enforce the completion timeout and honour aborts."""
        policy, memory = self._policy(m)
        ramp, timeout = downtime_ramp(policy, memory), completion_timeout(policy, memory)
        began, steering = time.monotonic(), Steering()
        while not ended(POLL_SECONDS):
            fresh = self.rows.load(m.namespace, m.name)
            abort_wanted = fresh is not None and fresh.abort_wanted
            wheel, steering = steer(steering, time.monotonic() - began, abort_wanted, policy, ramp, timeout)
            state = wheel.state
            try:
                if wheel.abort:
                    source_hv.abort_job(domain)
                if wheel.post_copy:
                    source_hv.start_post_copy(domain)
                if wheel.max_downtime_ms is not None:
                    source_hv.set_max_downtime(domain, wheel.max_downtime_ms)
                job = source_hv.job_progress(domain)
            except HypervisorError as exc:
                log.info("migration %s/%s: %s", m.namespace, m.name, exc)
                job = None
            if job is not None and job.active:
                state = merged(state, progress_state(job))
            if state.model_fields_set:
                self.rows.update(m, state=state)
        return steering

    def _conclude(
        self, m: LoadedMigration, error: HypervisorError | None, steering: Steering, since: float | None
    ) -> Result:
        state = m.state
        source, target, domain = str(state.source_node), str(state.target_node), str(state.source_pod)
        stopped = steering.aborted or steering.timed_out
        if error is None or not stopped or not is_the_guest(self._probe(m, source, domain)[0]):
            # Done, failed by itself, or an abort that came too late: where the guest runs decides.
            return self._by_location(m, str(error or ""), since)
        self._storage(m).clean_target(target, domain, m.instance_uid, m.copies)
        if steering.aborted:
            message = f"aborted on request; the instance runs on {source}"
            self.rows.finish(m, "Aborted", "Aborted", message, aborted=True)
            return Result()
        timeout = completion_timeout(*self._policy(m))
        message = f"did not complete within {timeout:.0f}s (completionTimeoutPerGiB x memory); aborted"
        self.rows.finish(m, "Timeout", "CompletionTimeout", message)
        return Result()

    def _recover(self, m: LoadedMigration) -> Result:
        """Running, but no pass of this worker drives it: follow a job still running, then decide."""
        source, domain = str(m.state.source_node), str(m.state.source_pod)
        try:
            source_hv = self._hypervisor(m, source)
        except HypervisorError as exc:
            self.rows.update(m, reason="SourceUnreachable", message=str(exc)[:500])
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
            steering = self._monitor(m, source_hv, domain, job_ended)
            if steering.aborted:
                return self._conclude(m, HypervisorError("aborted"), steering, None)
        return self._by_location(m, "the worker driving it stopped")

    def _by_location(self, m: LoadedMigration, error: str = "", since: float | None = None) -> Result:
        """Decide by where the guest runs; look again shortly while that is unclear. `since`: when this
        process started the migration (it saw the switch-over's events)."""
        state = m.state
        source, target, domain = str(state.source_node), str(state.target_node), str(state.source_pod)
        on_source, source_problem = self._probe(m, source, domain)
        on_target, target_problem = self._probe(m, target, domain)
        location = where_the_guest_is(on_source, on_target, not (source_problem or target_problem))
        if location is Location.TARGET:
            assert on_target is not None
            self._succeeded(m, target, domain, on_target, since)
            self._storage(m).delete(source, m.copies)  # the guest runs on the copies: the originals go
        elif location is Location.SOURCE:
            self._storage(m).clean_target(target, domain, m.instance_uid, m.copies)
            self.rows.finish(
                m, None, "MigrationFailed", f"{error or 'failed'}; the instance runs on {source}"
            )
        elif location is Location.NOWHERE:
            self.rows.finish(
                m, None, "MigrationFailed", f"{error or 'failed'}; the domain runs on neither node"
            )
        else:
            problems = (
                "; ".join(p for p in (source_problem, target_problem) if p) or "the guest is live on both"
            )
            self.rows.update(m, reason="SwitchingOver", message=problems[:500])
            return Result(requeue_after=SETTLE_SECONDS)
        return Result()

    def _succeeded(
        self, m: LoadedMigration, target: str, domain: str, on_target: DomainInfo, since: float | None
    ) -> None:
        """Finish as Succeeded with the finished job's figures and the guest's pause at the switch-over."""
        figures = MigrationState()
        try:  # the figures of the finished job live on the target
            done = self._hypervisor(m, target).job_progress(domain, completed=True)
        except HypervisorError:
            done = None
        if done is not None:
            figures = merged(progress_state(done), MigrationState(libvirt_downtime_ms=done.downtime_ms))
        if on_target.state is not DomainState.PAUSED:  # paused by its user all along: no pause to tell
            paused = self.switchovers.pause_ms(m.instance_uid or "", since) if since is not None else None
            pause = MigrationState(downtime_ms=paused if paused is not None else figures.libvirt_downtime_ms)
            figures = merged(figures, pause)
        self.rows.finish(m, None, "Succeeded", f"moved to {target}", moved_to=target, figures=figures)

    def _probe(self, m: LoadedMigration, node: str, domain: str) -> tuple[DomainInfo | None, str]:
        """The domain on `node` if it is ours (same uuid), and what went wrong asking."""
        try:
            return self._storage(m).domain_on(node, domain, m.instance_uid), ""
        except HypervisorError as exc:
            return None, f"node {node}: {exc}"

    def _policy(self, m: LoadedMigration) -> tuple[Policy, int]:
        """The policy in effect and the guest memory its ramp and timeout scale with."""
        memory = requested_memory(m.instance.spec) if m.instance else 0
        return self.defaults.overridden_by(m.spec), memory

    def _hypervisor(self, m: LoadedMigration, node: str) -> Hypervisor:
        return self.hypervisors.get(node, self._hypervisor_endpoints(m, node).uri)

    @staticmethod
    def _hypervisor_endpoints(m: LoadedMigration, node: str) -> NodeEndpoints:
        if node not in m.nodes:
            raise HypervisorError(f"node {node!r} is not registered")
        return m.nodes[node]

    def _storage(self, m: LoadedMigration) -> MigrationStorage:
        connect, resolver_on = partial(self._hypervisor, m), partial(self._resolver, m)
        return MigrationStorage(connect, resolver_on, self.volume_dir, self.network)

    def _resolver(self, m: LoadedMigration, node: str) -> ImageResolver:
        """Images on `node` for the migrating instance: on the target, the digests the source holds."""
        assert m.instance is not None
        source, waiter = str(m.instance.node), MIGRATIONS.work_key(m.namespace, m.name)
        same_as = None if node == source else source
        hv = self._hypervisor(m, node)
        return resolver(
            self.image_dir, self.images, hv, node, waiter, ANY_TIME, namespace=m.namespace, same_as=same_as
        )


def _joined(thread: threading.Thread) -> Callable[[float], bool]:
    """Wait up to `timeout` seconds for the thread to end, and say whether it has: its end is seen at once."""

    def ended(timeout: float) -> bool:
        thread.join(timeout)
        return not thread.is_alive()

    return ended
