"""The instance reconciler: place, define, and drive the domain to the desired power state.

Level-triggered: every pass reads the row (spec, intent, progress) and the domain's libvirt state, takes the
next step, and writes status. Side effects use deterministic names (domain `<ns>.<name>.<uid8>`, volumes
`<uid>-<volume>.qcow2`), so a worker killed between two steps leaves nothing the next pass cannot find.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.clock import utc_now
from app.controllers.base import Result
from app.controllers.instance_status import STOP_REASONS, Observed, phase_of, render
from app.controllers.operations import failure, run_operation
from app.controllers.scheduling import (
    MIB,
    DeviceSlot,
    MdevSlot,
    NodeView,
    Picked,
    Request,
    choose,
    node_view,
    pick_devices,
    unschedulable_message,
)
from app.db import OPERATIONS_CHANNEL, Database, signal
from app.kinds import INSTANCES, MIGRATIONS, NODES, POOLS
from app.repositories import operations, workqueue
from app.repositories.devices import DeviceRepository, permitted
from app.repositories.instances import InstanceRepository
from app.repositories.resources import ResourceRepository
from app.schemas.common import parse_quantity, parse_time
from app.schemas.conditions import find_condition, set_condition
from app.schemas.devices import PermittedHostDevices, device_needs
from app.schemas.instance import InstanceSpec, requested_memory, requested_vcpus
from app.schemas.migration import FINISHED
from app.schemas.operations import audit_view
from app.schemas.pool import CLAIMED_LABEL, POOL_LABEL
from app.virt import images
from app.virt.domain_xml import DiskConfig, DomainConfig, InterfaceConfig, KernelBoot, build_domain_xml
from app.virt.driver import (
    AgentUnavailable,
    DomainInfo,
    DomainNotFound,
    DomainState,
    Hypervisor,
    HypervisorError,
    HypervisorEvent,
    HypervisorPool,
    HypervisorUnavailable,
    InvalidDomainConfig,
    InvalidOperation,
    ShutdownMode,
)
from app.virt.guest import REQUIRED_COMMANDS

log = logging.getLogger(__name__)
POOL = "corral-instances"
ACTIVE = (
    DomainState.RUNNING,
    DomainState.BLOCKED,
    DomainState.PAUSED,
    DomainState.SHUTDOWN,
    DomainState.PMSUSPENDED,
)
CRASH_BACKOFF_BASE = 10.0
CRASH_BACKOFF_MAX = 300.0
STABLE_AFTER = 60.0  # a run this long resets the crash count
STOPPING_POLL = 1.0
UNSCHEDULABLE_RETRY = 5.0
IMAGE_RETRY = 30.0
GUEST_REFRESH = 60.0  # seconds between guest agent reports while it stays connected
NODE_RETRY = 10.0
TARGETS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class Snapshot:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: InstanceSpec
    intent: dict[str, Any]
    progress: dict[str, Any]
    status: dict[str, Any]
    node_name: str | None
    deleting: bool
    node: dict[str, Any] | None = None  # {"uri", "virtType"} of the placed node, when it still exists
    guest: dict[str, Any] = field(default_factory=dict)  # the guest agent's last report
    migration: dict[str, Any] | None = None  # the unfinished migration holding it: {uid, name, target}
    pci_devices: tuple[str, ...] = ()  # PCI addresses of the host devices it holds
    mdevs: tuple[tuple[str, str, str], ...] = ()  # its mediated devices: (parent, type, uuid)

    @property
    def domain(self) -> str:
        return domain_name(self.namespace, self.name, self.uid, self.progress)


@dataclass
class Step:
    """What a pass learned and changed: written back at the end in one short transaction."""

    observed: Observed
    progress: dict[str, Any] = field(default_factory=dict)
    intent: dict[str, Any] | None = None
    requeue: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    guest: dict[str, Any] | None = None  # a fresh guest agent report to store


def crash_backoff(crashes: int) -> float:
    """Seconds before restarting after the n-th crash in a row: at once, then 10 s, 20 s, ... 5 min."""
    if crashes <= 1:
        return 0.0
    return float(min(CRASH_BACKOFF_BASE * 2 ** (crashes - 2), CRASH_BACKOFF_MAX))


class InstanceReconciler:
    kind = INSTANCES.kind

    def __init__(
        self,
        db: Database,
        hypervisors: HypervisorPool,
        image_dir: Path,
        volume_dir: str = "/var/lib/corral/instances",
    ) -> None:
        self.db = db
        self.hypervisors = hypervisors
        self.image_dir = image_dir
        self.volume_dir = volume_dir
        self._pools_ready: set[str] = set()  # node URIs whose volume pool is known to exist

    # -- entry ---------------------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> Result:
        snap = self._read(namespace, name)
        if snap is None:
            return Result()
        if snap.migration is not None:
            return self._migrating(snap, snap.migration)
        if snap.deleting:
            return self._teardown(snap)
        if snap.node_name is None:
            snap = self._schedule(snap)
            if snap.node_name is None:
                return Result(requeue_after=UNSCHEDULABLE_RETRY)
        if snap.node is None:
            step = Step(Observed("Unknown", "NodeGone", f"node {snap.node_name!r} no longer exists"))
            self._write(snap, step)
            return Result(requeue_after=NODE_RETRY)
        hv: Hypervisor | None = None
        try:
            hv = self.hypervisors.get(snap.node_name or "", snap.node["uri"])
            step = self._converge(snap, hv)
        except HypervisorUnavailable as exc:
            self.hypervisors.forget(snap.node_name or "")
            step = Step(Observed("Unknown", "NodeUnreachable", str(exc)[:300]), requeue=NODE_RETRY)
        self._write(snap, step)  # the state first: AgentConnected is not held back by the report below
        if hv is not None and step.observed.agent == "True":
            guest = self._guest_report(snap, hv, utc_now())
            if guest is not None:
                self._write(snap, Step(step.observed, guest=guest))
        self._run_operations(snap, hv, step.observed.agent)
        return Result(requeue_after=step.requeue)

    def _migrating(self, snap: Snapshot, migration: dict[str, Any]) -> Result:
        """A migration owns the domain until it finishes: report, never act (a delete waits for its abort)."""
        agent = (find_condition(snap.status, "AgentConnected") or {}).get("status", "False")
        if snap.deleting:
            message = f"aborting migration {migration['name']} first"
            observed = Observed("Terminating", "WaitingForMigration", message, agent=agent)
        else:
            message = f"migration {migration['name']} to node {migration['target']}"
            observed = Observed(
                "Migrating", "Migrating", message, agent=agent, agent_reason="AgentNotConnected"
            )
        self._write(snap, Step(observed))
        return Result(requeue_after=STOPPING_POLL if snap.deleting else None)

    def _run_operations(self, snap: Snapshot, hv: Hypervisor | None, agent: str) -> None:
        """Guest operations queued for this instance, one at a time, in the order they were asked."""
        with self.db.read() as session:
            queued = [(op.id, op.kind, dict(op.request)) for op in operations.pending(session, snap.uid)]
        for op_id, kind, request in queued:
            result: dict[str, Any] = {}
            error: tuple[int, str] | None = None
            if hv is None or agent != "True":
                error = failure(AgentUnavailable(f"AgentConnected={agent}"))
            else:
                try:
                    result = run_operation(hv, snap.domain, kind, request)
                except Exception as exc:
                    error = failure(exc)
            with self.db.transaction() as session:
                op = operations.get(session, op_id)
                if op is None:
                    continue
                op.state, op.result, op.finished_at = ("Failed" if error else "Succeeded"), result, utc_now()
                op.error_status, op.error = (error[0], error[1][:2000]) if error else (None, None)
                op.request = audit_view(request)  # stdin and file contents are not kept
                if error is None and kind in ("freeze", "thaw"):
                    self._freeze_status(session, snap, str(result.get("fsFreezeStatus")))
                signal(session, OPERATIONS_CHANNEL)

    @staticmethod
    def _freeze_status(session: Session, snap: Snapshot, state: str) -> None:
        repo = ResourceRepository[Any](session, INSTANCES)
        row = repo.get(snap.namespace, snap.name, for_update=True)
        if row is not None and row.uid == snap.uid:
            row.status = {**(row.status or {}), "fsFreezeStatus": state}
            repo.touch(row)

    def keys_for_event(self, session: Session, node: str, event: HypervisorEvent) -> list[str]:
        if event.domain_uuid is None:
            return []
        row = ResourceRepository[Any](session, INSTANCES).get_by_uid(event.domain_uuid)
        return [INSTANCES.work_key(row.namespace, row.name)] if row is not None else []

    # -- reading and writing -------------------------------------------------------------------------
    def _read(self, namespace: str, name: str) -> Snapshot | None:
        with self.db.read() as session:
            row = ResourceRepository[Any](session, INSTANCES).get(namespace, name)
            if row is None:
                return None
            snap = Snapshot(
                namespace,
                name,
                row.uid,
                row.generation,
                InstanceSpec.model_validate(row.spec),
                dict(row.intent or {}),
                dict(row.progress or {}),
                dict(row.status or {}),
                row.node_name,
                row.deleted_at is not None,
                guest=dict(row.guest or {}),
            )
            ledger = DeviceRepository(session)
            snap.pci_devices = tuple(str(d.facts.get("address")) for d in ledger.held_by(row.uid))
            if row.node_name is not None:
                snap.mdevs = tuple(ledger.mdevs_of(row.uid, row.node_name))
            lock = (row.progress or {}).get("migration")
            if lock:
                migration = ResourceRepository[Any](session, MIGRATIONS).get_by_uid(lock["uid"])
                if migration is not None and (migration.status or {}).get("phase") not in FINISHED:
                    snap.migration = lock
            if row.node_name is not None:
                node = ResourceRepository[Any](session, NODES).get("", row.node_name)
                if node is not None:
                    snap.node = {"uri": node.spec["uri"], "virtType": node.status.get("virtType")}
            return snap

    def _write(self, snap: Snapshot, step: Step) -> None:
        with self.db.transaction() as session:
            repo = ResourceRepository[Any](session, INSTANCES)
            row = repo.get(snap.namespace, snap.name, for_update=True)
            if row is not None and row.uid == snap.uid:
                self._apply(repo, row, snap, step)

    @staticmethod
    def _apply(repo: ResourceRepository[Any], row: Any, snap: Snapshot, step: Step) -> None:
        """Fold a step into the row (status, progress, intent); a no-op writes nothing."""
        status = render(
            row.status or {},
            step.observed,
            generation=snap.generation,
            node=row.node_name,
            domain=snap.progress.get("domain") or step.progress.get("domain"),
            at=utc_now(),
            extra=step.extra,
        )
        progress = {**(row.progress or {}), **step.progress}
        intent = row.intent if step.intent is None else {**(row.intent or {}), **step.intent}
        guest = row.guest if step.guest is None else step.guest
        if step.guest is not None:
            status.update(guest_status(step.guest))
            missing = [c for c in REQUIRED_COMMANDS if c not in step.guest.get("supportedCommands", [])]
            lacks = f"qemu-ga {step.guest.get('agentVersion')} lacks {', '.join(missing)}" if missing else ""
            set_condition(
                status,
                "AgentVersionNotSupported",
                "True" if missing else "False",
                "MissingCommands" if missing else "Supported",
                lacks,
                utc_now(),
            )
        same = status == (row.status or {}) and progress == row.progress and intent == row.intent
        if same and guest == row.guest:
            return
        row.status, row.progress, row.intent, row.guest = status, progress, intent, guest
        repo.touch(row)
        wake_pool(repo.session, row)

    # -- placement -----------------------------------------------------------------------------------
    def _schedule(self, snap: Snapshot) -> Snapshot:
        needs = device_needs(snap.spec)
        request = Request(
            requested_vcpus(snap.spec), requested_memory(snap.spec), snap.spec.node_selector, needs
        )
        with self.db.transaction() as session:
            instances = InstanceRepository(session)
            node_rows, views = cluster_views(session, snap.uid)
            chosen, reasons = choose(views, request)
            row = instances.get(snap.namespace, snap.name, for_update=True)
            if row is None or row.uid != snap.uid:
                return snap
            if chosen is None:
                failed = Observed("Failed", "Unschedulable", unschedulable_message(len(views), reasons))
                self._apply(instances, row, snap, Step(failed))
                return snap
            # Devices are taken in the same transaction as the node (whose rows are locked): never twice.
            picked = pick_devices(chosen.devices, needs, chosen.mdevs) if needs else Picked([], [])
            assert not isinstance(picked, str)  # choose() took only nodes where the pick succeeds
            ledger, holder = DeviceRepository(session), f"{snap.namespace}/{snap.name}"
            rows = {d.name: d for d in ledger.on_node(chosen.name, for_update=True)}
            held = [rows[name] for name in picked.pci]
            ledger.hold(held, snap.uid, holder)
            for parent, type_id in picked.mdevs:
                ledger.carve(rows[parent], type_id, str(uuid.uuid4()), snap.uid, holder)
            if held or picked.mdevs:
                workqueue.enqueue(session, NODES.work_key("", chosen.name))  # its allocated counts changed
            row.node_name = chosen.name  # placed and reported in one write: phase Scheduling, nodeName set
            self._apply(instances, row, snap, Step(Observed("Scheduling", "Scheduled")))
            placed = next(n for n in node_rows if n.name == chosen.name)
            return replace(
                snap,
                node_name=placed.name,
                node={"uri": placed.spec["uri"], "virtType": (placed.status or {}).get("virtType")},
                pci_devices=tuple(str(d.facts.get("address")) for d in held),
                mdevs=tuple(ledger.mdevs_of(snap.uid, chosen.name)),
            )

    # -- convergence ---------------------------------------------------------------------------------
    def _converge(self, snap: Snapshot, hv: Hypervisor) -> Step:
        progress: dict[str, Any] = {}
        intent: dict[str, Any] = {}
        info = self._lookup(hv, snap.domain)
        if info is not None and info.uuid != snap.uid:
            message = f"node {snap.node_name} has a domain {snap.domain!r} of another owner ({info.uuid})"
            return Step(Observed("Failed", "DomainNameConflict", message), requeue=IMAGE_RETRY)
        if info is None or progress_stale(snap):
            defined = self._define(snap, hv)
            if isinstance(defined, Step):
                return defined
            info = defined
            progress.update(domain=snap.domain, definedGeneration=snap.generation, volumes=volume_names(snap))
            if snap.status.get("phase") in (None, "Pending", "Scheduling", "Failed"):
                self._write(snap, Step(Observed("Scheduled", "Defined"), progress=dict(progress)))
        state = {**snap.progress, **progress}
        power = snap.intent.get("power", "Running")
        now_ = utc_now()

        # A run that ended without Corral asking: the runStrategy decides what follows.
        if info.state not in ACTIVE and state.get("running"):
            progress["running"] = False
            crashed = info.reason != "shutdown"
            strategy = snap.spec.run_strategy
            restart = strategy == "Always" or (strategy == "RerunOnFailure" and crashed)
            if crashed and restart:
                crashes = int(state.get("crashes", 0)) + 1
                next_try = now_ + timedelta(seconds=crash_backoff(crashes))
                progress.update(crashes=crashes, retryAt=next_try.isoformat())
            progress["stopReason"] = STOP_REASONS.get(info.reason, "Stopped")
            if not restart:
                power = "Stopped"
                intent["power"] = "Stopped"
                progress["failedRun"] = crashed and strategy == "Once"
            log.info(
                "%s/%s: domain stopped by itself (%s); runStrategy %s -> %s",
                snap.namespace,
                snap.name,
                info.reason,
                strategy,
                "restart" if restart else "stay stopped",
            )
        state = {**snap.progress, **progress}

        # Restart and soft reboot requests are counters: act once per increment.
        if int(snap.intent.get("restart", 0)) > int(state.get("restartDone", 0)):
            if info.state in ACTIVE:
                self._hard_stop(hv, snap.domain)
            progress.update(restartDone=int(snap.intent.get("restart", 0)), retryAt=None)
            info = self._lookup(hv, snap.domain) or info
        if int(snap.intent.get("softReboot", 0)) > int(state.get("softRebootDone", 0)):
            if info.state is DomainState.RUNNING:
                hv.reboot(snap.domain, agent_or_acpi(hv, snap.domain))
            progress["softRebootDone"] = int(snap.intent.get("softReboot", 0))
        if int(snap.intent.get("pause", 0)) > int(state.get("pauseDone", 0)):
            if snap.intent.get("paused") and info.state is DomainState.RUNNING:
                self._call_idempotent(hv.suspend, snap.domain)
            elif not snap.intent.get("paused") and info.state is DomainState.PAUSED:
                self._call_idempotent(hv.resume, snap.domain)
            progress["pauseDone"] = int(snap.intent.get("pause", 0))
            info = self._lookup(hv, snap.domain) or info
        if int(snap.intent.get("retry", 0)) > int(state.get("retryDone", 0)):
            progress.update(
                retryDone=int(snap.intent.get("retry", 0)), retryAt=None, crashes=0, failedRun=False
            )
        state = {**snap.progress, **progress}

        requeue: float | None = None
        extra: dict[str, Any] = {}
        if power == "Running":
            progress["stopStartedAt"] = None
            if info.state not in ACTIVE:
                retry_at = parse_time(state.get("retryAt"))
                if retry_at is not None and retry_at > now_:
                    wait = (retry_at - now_).total_seconds()
                    message = f"crashed {state.get('crashes')} times; next start in {wait:.0f}s"
                    extra["retryAfter"] = retry_at.isoformat().replace("+00:00", "Z")
                    return Step(
                        Observed("Stopped", "CrashLoopBackOff", message),
                        progress=progress,
                        intent=intent,
                        requeue=wait,
                        extra=extra,
                    )
                self._write(
                    snap, Step(Observed("Starting", "Starting"), progress=dict(progress), intent=intent)
                )
                if not is_test_driver(snap):  # mediated devices are transient on the host: make them now
                    for parent, type_id, mdev_uuid in snap.mdevs:
                        hv.create_mdev(parent, type_id, mdev_uuid)
                self._call_idempotent(hv.start, snap.domain)
                progress.update(
                    running=True,
                    everStarted=True,
                    lastStartAt=now_.isoformat(),
                    retryAt=None,
                    stopReason=None,
                )
                info = self._lookup(hv, snap.domain) or info
            started = parse_time(state.get("lastStartAt"))
            if state.get("crashes") and started and (now_ - started).total_seconds() > STABLE_AFTER:
                progress["crashes"] = 0
            elif state.get("crashes"):
                requeue = STABLE_AFTER
        else:  # Stopped
            if info.state in ACTIVE:
                progress.update(running=False)
                grace = snap.intent.get("gracePeriodSeconds")
                grace = snap.spec.termination_grace_period_seconds if grace is None else int(grace)
                asked = parse_time(state.get("stopStartedAt"))
                if snap.intent.get("force") or grace == 0 or info.state is not DomainState.RUNNING:
                    self._hard_stop(hv, snap.domain)
                elif asked is None:
                    self._graceful_stop(hv, snap.domain)
                    progress["stopStartedAt"] = now_.isoformat()
                    requeue = STOPPING_POLL
                elif (now_ - asked).total_seconds() >= grace:
                    log.info("%s: still running %ss after shutdown; powering off", snap.domain, grace)
                    self._hard_stop(hv, snap.domain)
                else:
                    requeue = STOPPING_POLL
                info = self._lookup(hv, snap.domain) or info
            if info.state not in ACTIVE:
                progress["stopStartedAt"] = None
        state = {**snap.progress, **progress}

        stopping = power == "Stopped" and info.state in ACTIVE
        phase, reason = phase_of(info, stopping=stopping, ever_started=bool(state.get("everStarted")))
        if phase == "Stopped":
            # Who stopped it matters more than libvirt's reason: a stop Corral performed was the user's.
            reason = state.get("stopReason") or ("StoppedByUser" if power == "Stopped" else reason)
            if state.get("failedRun"):
                phase = "Failed"
        running = info.state is DomainState.RUNNING
        if running and is_test_driver(snap):
            agent, agent_reason = "Unknown", "NoGuestAgentOnTestDriver"  # its domains run no guest
        else:
            agent = "True" if running and hv.agent_connected(snap.domain) else "False"
            agent_reason = "AgentNotConnected" if running else "DomainNotRunning"
        if agent == "True":  # the next report is due in a minute
            requeue = min(requeue or GUEST_REFRESH, GUEST_REFRESH)
        passthrough = bool(device_needs(snap.spec))
        observed = Observed(
            phase,
            reason,
            agent=agent,
            agent_reason=agent_reason,
            live_migratable=not passthrough,
            migratable_reason="HostDeviceNotLiveMigratable" if passthrough else "Migratable",
        )
        return Step(observed, progress=progress, intent=intent or None, requeue=requeue, extra=extra)

    @staticmethod
    def _guest_report(snap: Snapshot, hv: Hypervisor, at: datetime) -> dict[str, Any] | None:
        """A fresh report when the agent just connected, none is stored, or the stored one is a minute old."""
        observed = parse_time(snap.guest.get("observedAt"))
        just_connected = (find_condition(snap.status, "AgentConnected") or {}).get("status") != "True"
        asked = int(snap.intent.get("guestRefresh", 0)) > int(snap.guest.get("refresh", 0))
        fresh = observed is not None and (at - observed).total_seconds() < GUEST_REFRESH
        if not just_connected and not asked and fresh:
            return None
        try:
            report = hv.guest_report(snap.domain)
        except AgentUnavailable as exc:
            log.info("%s: the guest agent did not report: %s", snap.domain, exc)
            return None
        stamp = at.isoformat().replace("+00:00", "Z")
        return {"observedAt": stamp, "refresh": int(snap.intent.get("guestRefresh", 0)), **report}

    def _lookup(self, hv: Hypervisor, domain: str) -> DomainInfo | None:
        try:
            return hv.lookup(domain)
        except DomainNotFound:
            return None

    @staticmethod
    def _call_idempotent(fn: Any, domain: str) -> None:
        """Start/suspend/resume: 'already in that state' (a racing event, a retried pass) is success."""
        try:
            fn(domain)
        except InvalidOperation as exc:
            log.debug("%s: %s", domain, exc)

    def _hard_stop(self, hv: Hypervisor, domain: str) -> None:
        with suppress(DomainNotFound, InvalidOperation):
            hv.destroy(domain)

    # -- deletion ------------------------------------------------------------------------------------
    def _teardown(self, snap: Snapshot) -> Result:
        """Power off (gracefully within the grace period), undefine, delete the volumes, then the row."""
        if snap.node_name is not None and snap.node is not None:
            try:
                hv = self.hypervisors.get(snap.node_name, snap.node["uri"])
                info = self._lookup(hv, snap.domain)
                if info is not None and info.uuid == snap.uid:  # never touch a domain made for another
                    step = self._shut_down_for_delete(snap, hv, info)
                    if step is not None:
                        self._write(snap, step)
                        return Result(requeue_after=step.requeue)
                    with suppress(DomainNotFound):
                        hv.undefine(snap.domain)
                for volume in volume_names(snap):
                    hv.delete_volume(POOL, f"{snap.uid}-{volume}.qcow2")
                if not is_test_driver(snap):
                    for _, _, mdev_uuid in snap.mdevs:
                        hv.remove_mdev(mdev_uuid)
            except HypervisorUnavailable as exc:
                self.hypervisors.forget(snap.node_name)
                step = Step(Observed("Terminating", "NodeUnreachable", str(exc)[:300]), requeue=NODE_RETRY)
                self._write(snap, step)
                return Result(requeue_after=NODE_RETRY)
        with self.db.transaction() as session:
            repo = ResourceRepository[Any](session, INSTANCES)
            row = repo.get(snap.namespace, snap.name, for_update=True)
            if row is not None and row.uid == snap.uid:
                wake_pool(session, row)
                if (snap.pci_devices or snap.mdevs) and DeviceRepository(session).release(row.uid):
                    wake_unschedulable(session)  # a freed device may be what one of them waits for
                    workqueue.enqueue(session, NODES.work_key("", str(row.node_name)))
                repo.remove(row)
        return Result()

    def _shut_down_for_delete(self, snap: Snapshot, hv: Hypervisor, info: DomainInfo) -> Step | None:
        """None once the domain is off; else the Terminating step to write while the guest shuts down."""
        if info.state not in ACTIVE:
            return None
        grace = snap.spec.termination_grace_period_seconds
        asked = parse_time(snap.progress.get("stopStartedAt"))
        if grace == 0 or snap.intent.get("force") or info.state is not DomainState.RUNNING:
            self._hard_stop(hv, snap.domain)
            return None
        if asked is None:
            self._graceful_stop(hv, snap.domain)
            return Step(
                Observed("Terminating", "ShuttingDown"),
                progress={"stopStartedAt": utc_now().isoformat(), "running": False},
                requeue=STOPPING_POLL,
            )
        if (utc_now() - asked).total_seconds() < grace:
            return Step(Observed("Terminating", "ShuttingDown"), requeue=STOPPING_POLL)
        self._hard_stop(hv, snap.domain)
        return None

    def _graceful_stop(self, hv: Hypervisor, domain: str) -> None:
        """ACPI power button, or the guest agent when it is connected; a refusal means power off."""
        try:
            hv.shutdown(domain, agent_or_acpi(hv, domain))
        except HypervisorError as exc:
            log.info("%s: graceful shutdown failed (%s); powering off", domain, exc)
            self._hard_stop(hv, domain)

    # -- definition ----------------------------------------------------------------------------------
    def _define(self, snap: Snapshot, hv: Hypervisor) -> DomainInfo | Step:
        spec = snap.spec
        try:
            boot_image, planned = plan_volumes(spec, self.image_dir, snap.uid)
        except images.ImageNotFound as exc:
            return Step(Observed("Failed", "ImageNotFound", str(exc)), requeue=IMAGE_RETRY)
        with ExitStack() as undo:
            if hv.uri not in self._pools_ready:
                hv.ensure_pool(POOL, self.volume_dir)
                self._pools_ready.add(hv.uri)
            undo.callback(self._pools_ready.discard, hv.uri)  # a failed pass checks the pool again
            disks: list[DiskConfig] = []
            for volume in planned:
                existed = hv.volume_path(POOL, volume.volume_id) is not None
                path = hv.create_volume(POOL, volume.volume_id, volume.capacity, volume.backing)
                if not existed:
                    undo.callback(hv.delete_volume, POOL, volume.volume_id)
                disks.append(DiskConfig(path=path, target=volume.target, serial=volume.name[:20]))
            kernel = None
            if boot_image.kernel is not None:
                # The bundle's command line may carry {hostname}; plain text, not a format string.
                cmdline = boot_image.cmdline.replace("{hostname}", spec.hostname or snap.name)
                initrd = str(boot_image.initrd) if boot_image.initrd else None
                kernel = KernelBoot(str(boot_image.kernel), initrd, cmdline)
            test_driver = is_test_driver(snap)
            virt_type = "test" if test_driver else str((snap.node or {}).get("virtType") or "qemu")
            cpu = spec.domain.cpu
            topology = None
            if cpu is not None and (cpu.cores or cpu.sockets or cpu.threads):
                topology = (cpu.sockets or 1, cpu.cores or 1, cpu.threads or 1)
            nics = tuple(InterfaceConfig(i.model, i.mac_address) for i in spec.domain.devices.interfaces)
            config = DomainConfig(
                name=snap.domain,
                uuid=snap.uid,
                virt_type=virt_type,
                vcpus=requested_vcpus(spec),
                memory_mib=max(requested_memory(spec) // MIB, 16),
                machine=spec.domain.machine.type if spec.domain.machine else "pc",
                kernel_boot=kernel,
                disks=tuple(disks),
                interfaces=nics or (InterfaceConfig(),),
                console_log=None
                if virt_type == "test"
                else f"/var/log/libvirt/qemu/{snap.domain}-console.log",
                metadata={"namespace": snap.namespace, "name": snap.name, "uid": snap.uid},
                cpu_topology=topology,
                pci_devices=snap.pci_devices,
                mdev_devices=tuple(mdev_uuid for _, _, mdev_uuid in snap.mdevs),
            )
            try:
                info = hv.define(build_domain_xml(config))
            except InvalidDomainConfig as exc:
                return Step(Observed("Failed", "InvalidConfiguration", str(exc)[:500]))
            undo.pop_all()
            return info


def cluster_views(session: Session, exclude_uid: str) -> tuple[list[Any], list[NodeView]]:
    """The nodes, locked, and what each has free. Locking the node rows serializes placements (instances
    and migration targets), so two passes cannot both take the last room. A migrating instance holds room
    on its source and its target."""
    node_rows = ResourceRepository[Any](session, NODES).lock_all()
    rules, ledger = permitted(session), DeviceRepository(session)
    devices_by_node = {n.name: ledger.on_node(n.name) for n in node_rows}
    used: dict[str, tuple[int, int]] = {}
    for other in InstanceRepository(session).placed():
        if other.uid == exclude_uid or other.node_name is None:
            continue
        spec = InstanceSpec.model_validate(other.spec)
        target = ((other.progress or {}).get("migration") or {}).get("target")
        for node in {str(other.node_name), *([str(target)] if target else [])}:
            cpu, mem = used.get(node, (0, 0))
            used[node] = (cpu + requested_vcpus(spec), mem + requested_memory(spec))
    views = [
        node_view(
            n.name,
            n.labels or {},
            n.spec,
            n.status or {},
            *used.get(n.name, (0, 0)),
            devices=tuple(device_slot(d, rules) for d in devices_by_node.get(n.name, [])),
            mdevs=tuple(mdev_slots(devices_by_node.get(n.name, []), rules)),
        )
        for n in node_rows
        if n.deleted_at is None
    ]
    return node_rows, views


def is_test_driver(snap: Snapshot) -> bool:
    """libvirt's test driver runs no guests and creates no mediated devices."""
    return str((snap.node or {}).get("uri", "")).startswith("test:")


def mdev_slots(rows: list[Any], rules: PermittedHostDevices) -> list[MdevSlot]:
    """Room per permitted mediated-device type and parent. libvirt's availableInstances already counts the
    mdevs created on the host; ones allocated here but not yet created (the instance never started since)
    are subtracted."""
    created = {(r.facts or {}).get("mdevUuid") for r in rows if r.capability == "mdev"}
    slots = []
    for row in rows:
        if row.capability != "pci" or not row.present:
            continue
        for mdev_type in (row.facts or {}).get("mdevTypes", []):
            resource = rules.mdev_resource(mdev_type["id"], mdev_type["name"])
            if resource is None:
                continue
            ours = [m for m in row.mdevs or [] if m["type"] == mdev_type["id"]]
            pending = sum(1 for m in ours if m["uuid"] not in created)
            free = max(0, int(mdev_type["availableInstances"]) - pending)
            slots.append(
                MdevSlot(row.name, mdev_type["id"], resource, free, len(ours), row.holder is not None)
            )
    return slots


def device_slot(row: Any, rules: PermittedHostDevices) -> DeviceSlot:
    facts = row.facts or {}
    resource = (
        rules.pci_resource(facts.get("vendorId"), facts.get("productId")) if row.capability == "pci" else None
    )
    holder = row.holder or (f"domain {facts['usedBy']}" if facts.get("usedBy") else None)
    return DeviceSlot(
        row.name,
        row.capability,
        resource,
        holder,
        facts.get("iommuGroup"),
        facts.get("class"),
        row.present,
        bool(row.mdevs),
    )


def wake_unschedulable(session: Session) -> None:
    for other in InstanceRepository(session).page(None)[0]:
        if (other.status or {}).get("reason") == "Unschedulable" and other.node_name is None:
            workqueue.enqueue(session, INSTANCES.work_key(other.namespace, other.name))


def domain_name(namespace: str, name: str, uid: str, progress: dict[str, Any]) -> str:
    # Unique on the node even after a claim renames the instance (its domain keeps the first name).
    return str(progress.get("domain") or f"{namespace}.{name}.{uid[:8]}")


def agent_or_acpi(hv: Hypervisor, domain: str) -> ShutdownMode:
    """Graceful shutdown and reboot go through the guest agent when it is connected, else ACPI."""
    return ShutdownMode.AGENT if hv.agent_connected(domain) else ShutdownMode.ACPI


@dataclass(frozen=True)
class PlannedVolume:
    """A disk volume Corral creates for an instance, in its node's pool."""

    name: str  # the spec's volume name ("root" for the catalog's default image)
    volume_id: str  # the file in the pool: <uid>-<name>.qcow2
    capacity: int
    backing: tuple[str, str] | None  # (path, format) of the image under a copy-on-write overlay
    target: str  # the guest's disk: vda, vdb, ...


def plan_volumes(spec: InstanceSpec, image_dir: Path, uid: str) -> tuple[images.Image, list[PlannedVolume]]:
    """The boot image and the instance's volumes, in disk order. The first containerDisk is the boot image;
    an instance with none boots the catalog's default. Raises images.ImageNotFound."""
    boot = next((v for v in spec.volumes if v.container_disk is not None), None)
    volume_images = {
        v.name: images.resolve(image_dir, v.container_disk.image)
        for v in spec.volumes
        if v.container_disk is not None
    }
    boot_image = volume_images[boot.name] if boot else images.resolve(image_dir, None)
    sources: list[tuple[str, int, tuple[str, str] | None]] = []
    if boot is None and boot_image.disk is not None:
        sources.append(("root", *_overlay_of(boot_image)))
    for volume in spec.volumes:
        if volume.container_disk is not None and volume_images[volume.name].disk is not None:
            sources.append((volume.name, *_overlay_of(volume_images[volume.name])))
        elif volume.empty_disk is not None:
            sources.append((volume.name, int(parse_quantity(volume.empty_disk.capacity)), None))
    planned = [
        PlannedVolume(name, f"{uid}-{name}.qcow2", capacity, backing, f"vd{TARGETS[index]}")
        for index, (name, capacity, backing) in enumerate(sources)
    ]
    return boot_image, planned


def _overlay_of(image: images.Image) -> tuple[int, tuple[str, str]]:
    """Capacity and backing (path, format) of a copy-on-write overlay on the image's disk."""
    return image.disk_size or 0, (str(image.disk), image.disk_format or "qcow2")


def guest_status(report: dict[str, Any]) -> dict[str, Any]:
    """KubeVirt's status.guestOSInfo and status.interfaces from a guest agent report."""
    os_info = {k: v for k, v in report.get("osInfo", {}).items() if k not in ("variant", "variantId")}
    interfaces = []
    for nic in report.get("interfaces", []):
        if nic.get("name") == "lo":
            continue
        addresses = [a["address"] for a in nic.get("ipAddresses", [])]
        ipv4 = [a["address"] for a in nic.get("ipAddresses", []) if a.get("type") == "ipv4"]
        interfaces.append(
            {
                "interfaceName": nic.get("name"),
                "mac": nic.get("mac"),
                "ipAddress": (ipv4 or addresses or [None])[0],
                "ipAddresses": addresses,
                "infoSource": "guest-agent",
            }
        )
    return {"guestOSInfo": os_info, "interfaces": interfaces}


def wake_pool(session: Session, row: Any) -> None:
    """A member's (or a claimed instance's) change is its pool's business: the pool counts it."""
    labels = row.labels or {}
    pool = labels.get(POOL_LABEL) if row.pool_uid is not None else labels.get(CLAIMED_LABEL)
    if pool:
        workqueue.enqueue(session, POOLS.work_key(row.namespace, pool))


def volume_names(snap: Snapshot) -> list[str]:
    """Names of the instance's volumes (`<uid>-<name>.qcow2`), including any an earlier spec had."""
    names = {"root", *(v.name for v in snap.spec.volumes), *snap.progress.get("volumes", [])}
    return sorted(names)


def progress_stale(snap: Snapshot) -> bool:
    """The spec changed since the domain was defined: define again (applies at the next boot)."""
    defined = snap.progress.get("definedGeneration")
    return defined is not None and int(defined) != snap.generation
