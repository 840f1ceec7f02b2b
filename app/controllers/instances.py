"""The instance reconciler: observe the row and the domain, `decide` (app.controllers.instance_decisions),
carry the plan out against the node's hypervisor, and write what happened in one short transaction.

Level-triggered: every pass starts from the row (spec, intent, progress) and libvirt's answer. Side effects
use deterministic names (app.controllers.naming), so a worker killed between two steps leaves nothing the
next pass cannot find.
"""

from __future__ import annotations

import copy
import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from app.clock import Clock, rfc3339, utc_now
from app.controllers.base import NodeEvent, Result
from app.controllers.credentials import agent_keys, load_secrets
from app.controllers.definitions import Definer, Owner
from app.controllers.expectations import Expectations
from app.controllers.image_cache import ImageCache, resolver
from app.controllers.instance_decisions import (
    CONFIG_RETRY,
    INCOMPLETE_REPORT_RETRY,
    KEYS_RETRY,
    NODE_RETRY,
    POWERED,
    STOPPING_POLL,
    UNSCHEDULABLE_RETRY,
    Act,
    Desired,
    Plan,
    decide,
    decide_teardown,
    disks_not_ready,
    guest_report_due,
    lease_recheck,
    placed,
    report,
    report_incomplete,
    requeue_after,
    unreachable,
    while_migrating,
)
from app.controllers.instance_status import Observed, add_guest_report, interfaces_status, render
from app.controllers.naming import default_network, domain_name, seed_file, volume_file
from app.controllers.operations import QueuedOperation, queued_operations, run_queued
from app.controllers.placement import (
    Picked,
    Request,
    choose,
    cluster_views,
    pick_devices,
    unschedulable_message,
    wake_unschedulable,
)
from app.controllers.volumes import DataVolumeMissing, DiskFinder, volume_names
from app.db import Database
from app.kinds import DATAVOLUMES, INSTANCES, MIGRATIONS, NETWORKS, NODES, POOLS
from app.models import DataVolumeRow, InstanceRow, MigrationRow, NetworkRow, NodeRow
from app.repositories import workqueue
from app.repositories.devices import DeviceRepository, permitted
from app.repositories.instances import InstanceRepository, intent_of, progress_of, set_intent, set_progress
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject, parse_time
from app.schemas.conditions import find_condition, set_condition
from app.schemas.devices import device_needs
from app.schemas.instance import InstanceSpec, data_volume_names, requested_memory, requested_vcpus
from app.schemas.migration import FINISHED
from app.schemas.network import NetworkSpec
from app.schemas.pool import CLAIMED_LABEL, POOL_LABEL
from app.schemas.records import InstanceIntent, InstanceProgress, MigrationLock
from app.virt.disk_import import data_volume_file
from app.virt.driver import (
    STORAGE_POOL,
    AgentUnavailable,
    DomainInfo,
    DomainNotFound,
    DomainState,
    EventKind,
    GuestCommandFailed,
    Hypervisor,
    HypervisorError,
    HypervisorEvent,
    HypervisorUnavailable,
    InvalidOperation,
    NetworkConfig,
    NicAddress,
    NodeHypervisors,
    ShutdownMode,
)

log = logging.getLogger(__name__)
# What a guest that powers off when asked causes: QEMU's report that it shut down, then the stop.
SHUTDOWN_EVENTS = ("Shutdown", "Stopped")


@dataclass(frozen=True)
class NodeAddress:
    uri: str
    virt_type: str

    @classmethod
    def of(cls, uri: str, virt_type: str | None) -> NodeAddress:
        return cls(uri, virt_type or "qemu")  # until the node reports it


@dataclass(frozen=True)
class DataVolumeRef:
    uid: str
    node: str | None
    phase: str


@dataclass(frozen=True)
class LoadedInstance:
    """One pass's read of an instance row and what it holds."""

    namespace: str
    name: str
    uid: str
    generation: int
    spec: InstanceSpec
    intent: InstanceIntent
    progress: InstanceProgress
    status: JsonObject  # the API's status object, as last written
    node_name: str | None
    deleting: bool
    created: datetime
    node: NodeAddress | None = None  # the placed node, while it exists
    guest: JsonObject = field(default_factory=dict)  # the guest agent's last report, as qemu-ga gave it
    migration: MigrationLock | None = None  # the unfinished migration holding it
    pci_devices: tuple[str, ...] = ()  # PCI addresses of the host devices it holds
    mdevs: tuple[tuple[str, str, str], ...] = ()  # its mediated devices: (parent, type, uuid)
    data_volumes: dict[str, DataVolumeRef] = field(default_factory=dict)  # by name, those that exist
    networks: dict[str, NetworkSpec] = field(default_factory=dict)  # the Network resources it names
    secrets: dict[str, dict[str, bytes]] = field(default_factory=dict)  # the Secrets it names that exist
    operations: tuple[QueuedOperation, ...] = ()  # guest operations waiting for this pass to run them

    @property
    def domain(self) -> str:
        return domain_name(self.namespace, self.name, self.uid, self.progress)

    @property
    def desired(self) -> Desired:
        return Desired(
            uid=self.uid,
            node=self.node_name or "",
            domain=self.domain,
            generation=self.generation,
            run_strategy=self.spec.run_strategy,
            grace_period_seconds=self.spec.termination_grace_period_seconds,
            intent=self.intent,
            volumes=tuple(v.name for v in self.spec.volumes),
            passthrough=bool(device_needs(self.spec)),
            deleting=self.deleting,
            migration=self.migration,
        )

    @property
    def owner(self) -> Owner:
        virt_type = self.node.virt_type if self.node else "qemu"
        mdev_uuids = tuple(mdev_uuid for _, _, mdev_uuid in self.mdevs)
        return Owner(
            self.namespace, self.name, self.uid, self.domain, virt_type, self.pci_devices, mdev_uuids
        )


@dataclass(frozen=True)
class Stored:
    """What a pass writes of an instance row."""

    status: JsonObject
    progress: InstanceProgress
    intent: InstanceIntent
    guest: JsonObject  # the guest agent's last report ({}: none)


@dataclass(frozen=True)
class Outcome:
    """What a pass saw and decided: written back in one short transaction."""

    observed: Observed
    plan: Plan | None = None  # its progress and intent are folded into the row's
    requeue: float | None = None
    guest: JsonObject | None = None  # a fresh guest agent report to store
    nics: list[NicAddress] | None = None  # the domain's NICs and leased addresses, when looked at
    passed: tuple[Observed, ...] = ()  # phases the pass went through before `observed`, for the history


class InstanceReconciler:
    kind = INSTANCES.kind

    def __init__(
        self,
        db: Database,
        hypervisors: NodeHypervisors,
        image_dir: Path,
        volume_dir: str = "/var/lib/corral/instances",
        clock: Clock = utc_now,
        network: NetworkConfig | None = None,
        worker: str | None = None,
    ) -> None:
        self.db = db
        self.hypervisors = hypervisors
        # The name the worker running these passes leases under (alone: a name no lease has).
        self.worker = worker or workqueue.new_holder()
        self.image_dir = image_dir
        self.images = ImageCache(db, clock)
        self.definer = Definer(volume_dir, network or default_network())
        self.clock = clock
        self.expected = Expectations()
        # Instances (by uid) whose current pass wrote their row: what it read is no longer what is stored.
        self._written: set[str] = set()
        # Each instance's row as its current pass last read or committed it: a write changes this copy and
        # stores it in one statement on the condition that the version is still the same, without reading
        # the row again, unless another writer came in between. A failed transaction fails the pass, and
        # the pass's copy goes with it.
        self._rows: dict[str, InstanceRow] = {}

    # -- entry ---------------------------------------------------------------------------------------
    def reconcile(self, namespace: str, name: str) -> Result:
        loaded = self._load(namespace, name)
        if loaded is None:
            return Result()
        try:
            return self._reconcile_loaded(loaded)
        finally:
            self._written.discard(loaded.uid)
            self._rows.pop(loaded.uid, None)

    def _reconcile_loaded(self, loaded: LoadedInstance) -> Result:
        if loaded.migration is not None:
            agent = (find_condition(loaded.status, "AgentConnected") or {}).get("status", "False")
            self._write(loaded, Outcome(while_migrating(loaded.desired, agent)))
            return Result(requeue_after=STOPPING_POLL if loaded.deleting else None)
        if loaded.deleting:
            return self._teardown(loaded)
        if loaded.node_name is None:
            loaded = self._schedule(loaded)
            if loaded.node_name is None:
                return Result(requeue_after=UNSCHEDULABLE_RETRY)
        if loaded.node is None:
            gone = Observed("Unknown", "NodeGone", f"node {loaded.node_name!r} no longer exists")
            self._write(loaded, Outcome(gone))
            return Result(requeue_after=NODE_RETRY)
        return self._converge_on_node(loaded, loaded.node)

    def _converge_on_node(self, loaded: LoadedInstance, node: NodeAddress) -> Result:
        hv: Hypervisor | None = None
        try:
            hv = self.hypervisors.get(loaded.node_name or "", node.uri)
            outcome = self._converge(loaded, hv)
        except HypervisorUnavailable as exc:
            self.hypervisors.forget(loaded.node_name or "")
            outcome = Outcome(unreachable(str(exc)), requeue=NODE_RETRY)
        self._write(loaded, outcome)  # the state first: AgentConnected is not held back by the report below
        requeue = outcome.requeue
        if hv is not None and outcome.observed.agent == "True":
            guest = self._guest_report(loaded, hv)
            if guest is not None:
                self._write(loaded, replace(outcome, guest=guest))
            if report_incomplete(guest or loaded.guest, loaded.progress, self.clock()):
                requeue = min(requeue or INCOMPLETE_REPORT_RETRY, INCOMPLETE_REPORT_RETRY)
            if not self._sync_agent_keys(loaded, hv):
                requeue = min(requeue or KEYS_RETRY, KEYS_RETRY)
        run_queued(
            self.db, hv, loaded.operations, loaded.domain, outcome.observed.agent, self._freeze_status(loaded)
        )
        return Result(requeue_after=requeue)

    def _sync_agent_keys(self, loaded: LoadedInstance, hv: Hypervisor) -> bool:
        """Each accessCredentials user's keys, added (and those the Secret dropped removed) by the guest agent
        when they differ from what it last wrote: a changed Secret reaches the running guest. False when the
        guest refused (its user may not exist yet: cloud-init makes it after the agent starts)."""
        wanted = {user: tuple(keys) for user, keys in agent_keys(loaded.spec, loaded.secrets).items()}
        written = loaded.progress.agent_keys
        if wanted == written:
            return True
        try:
            for user in sorted(set(wanted) | set(written)):
                keep = wanted.get(user, ())
                dropped = [k for k in written.get(user, ()) if k not in keep]
                hv.update_authorized_keys(loaded.domain, user, list(keep), dropped)
        except (AgentUnavailable, GuestCommandFailed) as exc:
            self._record_keys(loaded, written, ("False", "AgentCommandFailed", str(exc)[:500]))
            return False
        self._record_keys(loaded, wanted, ("True", "Synchronized", ""))
        return True

    def _record_keys(
        self, loaded: LoadedInstance, written: dict[str, tuple[str, ...]], condition: tuple[str, str, str]
    ) -> None:
        def record(row: InstanceRow) -> bool:
            status = copy.deepcopy(row.status or {})  # set_condition edits the conditions list in place
            value, reason, message = condition
            set_condition(status, "AccessCredentialsSynchronized", value, reason, message, self.clock())
            progress = progress_of(row)
            if status == row.status and progress.agent_keys == written:
                return False
            row.status = status
            set_progress(row, progress.but(agent_keys=written))
            return True

        with self.db.transaction() as session:
            self._change_row(InstanceRepository(session), loaded, record)

    def caused_here(self, event: HypervisorEvent) -> bool:
        """Whether the event is one an action of this worker's passes caused, which its pass saw through."""
        return (
            event.kind is EventKind.LIFECYCLE
            and event.domain_uuid is not None
            and self.expected.met(event.domain_uuid, event.event, event.at)
        )

    def keys_for_events(self, session: Session, events: Sequence[NodeEvent]) -> list[str]:
        """The instances of the events' domains, in two statements however many events came at once."""
        repo = InstanceRepository(session)
        keys: list[str] = []
        for node in {node for node, event in events if event.kind is EventKind.CONNECTION_CLOSED}:
            # Events are lost until the next pass reconnects: every instance there looks again at once
            # instead of waiting for the periodic resync.
            keys += [INSTANCES.work_key(ns, name) for ns, name in repo.keys_on_node(node)]
        uids = {event.domain_uuid for _, event in events if event.domain_uuid is not None}
        woken = [INSTANCES.work_key(ns, name) for ns, name in repo.keys_of(uids)]
        # Those another worker's pass holds are left to it. That worker gets the event too (its pass connects
        # to the node before it looks at the domain: an earlier event is in what it sees) and knows whether
        # its own action caused it; waking a pass here as well would double the passes of its actions (with
        # two workers, every action's events reach both).
        held = workqueue.leased_elsewhere(session, woken, self.worker)
        return keys + [key for key in woken if key not in held]

    # -- convergence ---------------------------------------------------------------------------------
    def _converge(self, loaded: LoadedInstance, hv: Hypervisor) -> Outcome:
        """Observe the domain, decide, act, and observe again for the report."""
        plan = decide(loaded.desired, loaded.progress, _lookup(hv, loaded.domain), self.clock())
        if plan.hold is not None:
            return Outcome(plan.hold, plan, plan.requeue)
        failure = self._execute(loaded, hv, plan)
        if failure is not None:
            retried = failure.phase == "Scheduled" or failure.reason == "ImageNotFound"
            return Outcome(failure, requeue=CONFIG_RETRY if retried else None)
        domain = _lookup(hv, loaded.domain) or plan.domain
        assert domain is not None
        agent: bool | None = None  # None: the backend runs no guests, so it cannot tell
        if hv.capabilities.guest_agent:
            agent = domain.state is DomainState.RUNNING and hv.agent_connected(loaded.domain)
        observed = report(loaded.desired, plan, domain, agent)
        nics = hv.nic_addresses(loaded.domain) if domain.state in POWERED else []
        requeue = requeue_after(plan, observed)
        if hv.capabilities.runs_guests:  # libvirt's test driver hands out no leases
            lease = lease_recheck(nics, observed.phase, plan.progress.last_start_at, self.clock())
            requeue = min((r for r in (requeue, lease) if r is not None), default=None)
        return Outcome(observed, plan, requeue, nics=nics)

    def _execute(self, loaded: LoadedInstance, hv: Hypervisor, plan: Plan) -> Observed | None:
        """Carry the plan's actions out in order; the failure to report when one cannot be done."""
        defined: tuple[Observed, ...] = ()
        for act in plan.actions:
            if act is Act.DEFINE:
                waiter = INSTANCES.work_key(loaded.namespace, loaded.name)
                node = loaded.node_name or ""
                resolve = resolver(
                    self.image_dir, self.images, hv, node, waiter, loaded.created, namespace=loaded.namespace
                )
                disks = _disk_finder(loaded, hv)
                owner, spec = loaded.owner, loaded.spec
                with self.expected.acting(loaded.uid, "Defined"):
                    failure = self.definer.define(
                        hv, owner, spec, resolve, disks, loaded.networks, loaded.secrets
                    )
                if failure is not None:
                    self.expected.withdraw(loaded.uid, "Defined")
                    return failure
                if loaded.status.get("phase") in (None, "Pending", "Scheduling", "Failed"):
                    defined = (Observed("Scheduled", "Defined"),)
                    if Act.START not in plan.actions:
                        self._write(loaded, Outcome(defined[0]))
            elif act is Act.START:
                # Defined just now and started next: Scheduled is stamped with Starting, in one write.
                self._write(loaded, Outcome(Observed("Starting", "Starting"), passed=defined))
                self._start(loaded, hv)
            else:
                self._act(loaded, hv, act)
        return None

    def _start(self, loaded: LoadedInstance, hv: Hypervisor) -> None:
        if hv.capabilities.mediated_devices:  # mediated devices are transient on the host: make them now
            for parent, type_id, mdev_uuid in loaded.mdevs:
                hv.create_mdev(parent, type_id, mdev_uuid)
        # Already running: a racing event, a retried pass. QEMU resumes the CPUs it started paused.
        with suppress(InvalidOperation), self.expected.acting(loaded.uid, "Started", "Resumed"):
            hv.start(loaded.domain)

    def _act(self, loaded: LoadedInstance, hv: Hypervisor, act: Act) -> None:
        """One action on the domain, its volumes or its devices; 'already so' counts as done. A graceful
        shutdown or a reboot is not expected: the guest finishes it after the pass looked."""
        domain = loaded.domain
        if act is Act.POWER_OFF:
            self._power_off(loaded, hv)
        elif act is Act.SHUT_DOWN:
            try:
                hv.shutdown(domain, agent_or_acpi(hv, domain))
            except HypervisorError as exc:
                log.info("%s: graceful shutdown failed (%s); powering off", domain, exc)
                self._power_off(loaded, hv)
        elif act is Act.REBOOT:
            hv.reboot(domain, agent_or_acpi(hv, domain))
        elif act in (Act.SUSPEND, Act.RESUME):
            event = "Suspended" if act is Act.SUSPEND else "Resumed"
            with suppress(InvalidOperation), self.expected.acting(loaded.uid, event):
                (hv.suspend if act is Act.SUSPEND else hv.resume)(domain)
        elif act is Act.UNDEFINE:
            with suppress(DomainNotFound), self.expected.acting(loaded.uid, "Undefined"):
                hv.undefine(domain)
        elif act is Act.DELETE_VOLUMES:
            for volume in volume_names(loaded.desired.volumes, loaded.progress):
                hv.delete_volume(STORAGE_POOL, volume_file(loaded.uid, volume))
                hv.delete_volume(STORAGE_POOL, seed_file(loaded.uid, volume))
        elif act is Act.REMOVE_MDEVS and hv.capabilities.mediated_devices:
            for _, _, mdev_uuid in loaded.mdevs:
                hv.remove_mdev(mdev_uuid)

    def _power_off(self, loaded: LoadedInstance, hv: Hypervisor) -> None:
        with suppress(DomainNotFound, InvalidOperation), self.expected.acting(loaded.uid, "Stopped"):
            hv.destroy(loaded.domain)

    def _guest_report(self, loaded: LoadedInstance, hv: Hypervisor) -> JsonObject | None:
        """A fresh report when the agent just connected, none is stored, the stored one is a minute old, or
        it left out what the guest OS is early in the run."""
        at = self.clock()
        was_connected = (find_condition(loaded.status, "AgentConnected") or {}).get("status") == "True"
        observed_at = parse_time(loaded.guest.get("observedAt"))
        refreshed = int(loaded.guest.get("refresh", 0))
        incomplete = observed_at is not None and report_incomplete(loaded.guest, loaded.progress, at)
        if not incomplete and not guest_report_due(
            observed_at, refreshed, loaded.intent, loaded.progress, was_connected, at
        ):
            return None
        try:
            answer = hv.guest_report(loaded.domain)
        except AgentUnavailable as exc:
            log.info("%s: the guest agent did not report: %s", loaded.domain, exc)
            return None
        return {"observedAt": rfc3339(at), "refresh": loaded.intent.guest_refresh, **answer}

    # -- deletion ------------------------------------------------------------------------------------
    def _teardown(self, loaded: LoadedInstance) -> Result:
        """Power off (gracefully within the grace period), undefine, delete the volumes, then the row."""
        if loaded.node_name is not None and loaded.node is not None:
            try:
                hv = self.hypervisors.get(loaded.node_name, loaded.node.uri)
                plan = decide_teardown(
                    loaded.desired, loaded.progress, _lookup(hv, loaded.domain), self.clock()
                )
                if Act.SHUT_DOWN in plan.actions:
                    plan = self._shut_down_for_teardown(loaded, hv, plan)
                else:
                    self._carry_out(loaded, hv, plan)
            except HypervisorUnavailable as exc:
                self.hypervisors.forget(loaded.node_name)
                self._write(loaded, Outcome(unreachable(str(exc), deleting=True)))
                return Result(requeue_after=NODE_RETRY)
            if plan.hold is not None:
                self._write(loaded, Outcome(plan.hold, plan))
                return Result(requeue_after=plan.requeue)
        with self.db.transaction() as session:
            row = self._remove_row(InstanceRepository(session), loaded)
            if row is not None:
                wake_pool(session, row)
                if (loaded.pci_devices or loaded.mdevs) and DeviceRepository(session).release(row.uid):
                    wake_unschedulable(session)  # a freed device may be what one of them waits for
                    workqueue.enqueue(session, NODES.work_key("", str(row.node_name)))
        return Result()

    def _shut_down_for_teardown(self, loaded: LoadedInstance, hv: Hypervisor, plan: Plan) -> Plan:
        """Ask the guest to shut down, then look again: a guest already off (libvirt's test driver's are at
        once) is torn down in this pass instead of the next, and the events of its shutdown, which this
        pass saw through, wake none. A guest still shutting down holds; its events, when they come, wake
        the next pass (one that came in between is caught by the hold's short requeue)."""
        with self.expected.acting(loaded.uid, *SHUTDOWN_EVENTS):
            self._carry_out(loaded, hv, plan)
            then = decide_teardown(loaded.desired, plan.progress, _lookup(hv, loaded.domain), self.clock())
        if then.hold is not None:
            self.expected.withdraw(loaded.uid, *SHUTDOWN_EVENTS)
            return plan
        self._carry_out(loaded, hv, then)
        return then

    def _carry_out(self, loaded: LoadedInstance, hv: Hypervisor, plan: Plan) -> None:
        for act in plan.actions:
            self._act(loaded, hv, act)

    # -- placement -----------------------------------------------------------------------------------
    def _schedule(self, loaded: LoadedInstance) -> LoadedInstance:
        """Choose a node and take its devices, in the transaction that locks the nodes (never twice)."""
        spec, needs = loaded.spec, device_needs(loaded.spec)
        request = Request(requested_vcpus(spec), requested_memory(spec), spec.node_selector, needs)
        disks = {name: (ref.node, ref.phase) for name, ref in loaded.data_volumes.items()}
        pinned = disks_not_ready(disks, data_volume_names(spec))
        if isinstance(pinned, Observed):
            self._write(loaded, Outcome(pinned))
            return loaded
        with self.db.transaction() as session:
            instances = InstanceRepository(session)
            node_rows, views = cluster_views(session, loaded.uid, devices=bool(needs))
            if pinned is not None:  # its disks are there
                views = [v for v in views if v.name == pinned]
            chosen, reasons = choose(views, request)
            if chosen is None:
                failed = placed(None, unschedulable_message(len(views), reasons))
                self._change_row(instances, loaded, self._fold(session, loaded, Outcome(failed)))
                return loaded
            held: tuple[str, ...] = ()
            assignments: list[JsonObject] = []
            if needs:
                picked = pick_devices(chosen.devices, needs, chosen.mdevs)
                assert not isinstance(picked, str)  # choose() took only nodes where the pick succeeds
                held, assignments = self._take_devices(session, loaded, chosen.name, picked)
            fold = self._fold(session, loaded, Outcome(placed(chosen.name, "")))

            def place(row: InstanceRow) -> bool:
                row.node_name = chosen.name  # placed and reported in one write: Scheduling, nodeName set
                if assignments:  # kept by every later status write: devices are held until the instance goes
                    row.status = {**(row.status or {}), "deviceAssignments": assignments}
                fold(row)
                return True

            if self._change_row(instances, loaded, place) is None:
                # Only this pass removes the row, so another worker did, its lease lost: take nothing.
                raise LookupError(f"instance {loaded.namespace}/{loaded.name} removed while being placed")
            node_row = next(n for n in node_rows if n.name == chosen.name)
            return replace(
                loaded,
                node_name=node_row.name,
                node=_address(node_row),
                pci_devices=held,
                mdevs=tuple(DeviceRepository(session).mdevs_of(loaded.uid, chosen.name)) if needs else (),
            )

    @staticmethod
    def _take_devices(
        session: Session, loaded: LoadedInstance, node: str, picked: Picked
    ) -> tuple[tuple[str, ...], list[JsonObject]]:
        """Hold the picked PCI devices and carve the mediated ones: the PCI addresses held, and the
        instance's status.deviceAssignments."""
        ledger, holder = DeviceRepository(session), f"{loaded.namespace}/{loaded.name}"
        rows = {d.name: d for d in ledger.on_node(node, for_update=True)}
        held = [rows[name] for name in picked.pci]
        ledger.hold(held, loaded.uid, holder)
        rules = permitted(session)
        assignments: list[JsonObject] = [
            {
                "name": d.name,
                "resourceName": rules.pci_resource(d.facts.get("vendorId"), d.facts.get("productId")),
                "address": d.facts.get("address"),
                "nodeName": node,
            }
            for d in held
        ]
        for parent, type_id in picked.mdevs:
            mdev = str(uuid.uuid4())
            ledger.carve(rows[parent], type_id, mdev, loaded.uid, holder)
            type_names = {t["id"]: t.get("name", "") for t in rows[parent].facts.get("mdevTypes", [])}
            resource = rules.mdev_resource(type_id, type_names.get(type_id, ""))
            assignments.append(
                {
                    "name": mdev,
                    "resourceName": resource,
                    "mdevType": type_id,
                    "parent": parent,
                    "nodeName": node,
                }
            )
        if held or picked.mdevs:
            workqueue.enqueue(session, NODES.work_key("", node))  # its allocated counts changed
        return tuple(str(d.facts.get("address")) for d in held), assignments

    # -- reading and writing -------------------------------------------------------------------------
    def _load(self, namespace: str, name: str) -> LoadedInstance | None:
        with self.db.read() as session:
            read = InstanceRepository(session).read_for_pass(namespace, name)
            if read is None:
                return None
            row = self._rows[read.row.uid] = read.row
            progress = progress_of(row)
            spec = InstanceSpec.model_validate(row.spec)  # once per pass: validation is not free
            status = dict(row.status or {})
            # Devices are taken only for a spec that asks for them and recorded in the status until released.
            ledger = (
                DeviceRepository(session) if device_needs(spec) or status.get("deviceAssignments") else None
            )
            return LoadedInstance(
                namespace,
                name,
                row.uid,
                row.generation,
                spec,
                intent_of(row),
                progress,
                status,
                row.node_name,
                row.deleted_at is not None,
                row.created_at,
                node=NodeAddress.of(*read.node) if read.node is not None else None,
                guest=dict(row.guest or {}),
                migration=_unfinished(session, progress.migration),
                pci_devices=tuple(str(d.facts.get("address")) for d in ledger.held_by(row.uid))
                if ledger
                else (),
                mdevs=tuple(ledger.mdevs_of(row.uid, row.node_name)) if ledger and row.node_name else (),
                data_volumes=_data_volumes(session, namespace, spec),
                networks=_networks(session, spec),
                secrets=load_secrets(session, namespace, spec),
                # A pass that tears the instance down runs none of them.
                operations=queued_operations(session, row.uid)
                if read.operations_pending and row.deleted_at is None
                else (),
            )

    def _write(self, loaded: LoadedInstance, outcome: Outcome) -> None:
        as_loaded = Stored(loaded.status, loaded.progress, loaded.intent, loaded.guest)
        unwritten = loaded.uid not in self._written
        if unwritten and self._folded(loaded, outcome, as_loaded, loaded.node_name) == as_loaded:
            return  # nothing new since this pass read the row; whoever wrote it since queued its own pass
        with self.db.transaction() as session:
            self._change_row(InstanceRepository(session), loaded, self._fold(session, loaded, outcome))

    def _change_row(
        self, repo: InstanceRepository, loaded: LoadedInstance, change: Callable[[InstanceRow], bool]
    ) -> InstanceRow | None:
        """Apply `change` to the instance's row and write what it changed (it returns whether it changed
        anything): to the copy this pass last read or committed, in one statement while nobody wrote the row
        since, else to the row read again, locked. The row as written; None when it is gone."""
        known = self._rows.pop(loaded.uid, None)
        if known is not None:
            if not change(known):
                self._rows[loaded.uid] = known
                return known
            if repo.write_if_unchanged(known):
                self._rows[loaded.uid] = known
                self._written.add(loaded.uid)
                return known
            # Written by someone else since: that copy is stale, and holds this pass's changes.
        row = self._read_locked(repo, loaded)
        if row is None:
            return None
        self._rows[loaded.uid] = row
        if change(row):
            repo.touch(row)
            self._written.add(loaded.uid)
        return row

    def _remove_row(self, repo: InstanceRepository, loaded: LoadedInstance) -> InstanceRow | None:
        """`_change_row` for the removal: the row removed, None when it was gone."""
        known = self._rows.pop(loaded.uid, None)
        if known is not None and repo.remove_if_unchanged(known):
            return known
        row = self._read_locked(repo, loaded)
        if row is not None:
            repo.remove(row)
        return row

    @staticmethod
    def _read_locked(repo: InstanceRepository, loaded: LoadedInstance) -> InstanceRow | None:
        """The instance's row read again and locked; None when it is gone (or another took its name)."""
        row = repo.get(loaded.namespace, loaded.name, for_update=True)
        return row if row is not None and row.uid == loaded.uid else None

    def _fold(
        self, session: Session, loaded: LoadedInstance, outcome: Outcome
    ) -> Callable[[InstanceRow], bool]:
        """A change that folds an outcome into the row as it is stored; one that changes nothing writes
        nothing."""

        def fold(row: InstanceRow) -> bool:
            stored = Stored(row.status or {}, progress_of(row), intent_of(row), row.guest or {})
            folded = self._folded(loaded, outcome, stored, row.node_name)
            if folded == stored:
                return False
            row.status, row.guest = folded.status, folded.guest
            set_progress(row, folded.progress)
            set_intent(row, folded.intent)
            wake_pool(session, row)
            return True

        return fold

    def _folded(self, loaded: LoadedInstance, outcome: Outcome, onto: Stored, node: str | None) -> Stored:
        """The outcome folded onto a stored state: status, and the plan's changes to progress and intent
        rebased onto it (the API or a migration may have written since this pass read the row)."""
        at, plan = self.clock(), outcome.plan
        progress, intent = onto.progress, onto.intent
        if plan is not None:
            progress = plan.progress.rebased(before=loaded.progress, onto=progress)
            intent = plan.intent.rebased(before=loaded.intent, onto=intent)
        extra = {"retryAfter": rfc3339(plan.retry_after)} if plan is not None and plan.retry_after else {}
        status = onto.status
        for observed in (*outcome.passed, outcome.observed):
            status = render(
                status,
                observed,
                generation=loaded.generation,
                node=node,
                domain=progress.domain,
                at=at,
                extra=extra,
            )
        guest = onto.guest if outcome.guest is None else outcome.guest
        if outcome.guest is not None:
            add_guest_report(status, outcome.guest, at)
        if outcome.nics is not None:
            names = [nic.name for nic in loaded.spec.domain.devices.interfaces] or ["default"]
            status["interfaces"] = interfaces_status(names, outcome.nics, guest)
        return Stored(status, progress, intent, guest)

    def _freeze_status(self, loaded: LoadedInstance) -> Callable[[Session, str], None]:
        """Records fsFreezeStatus after a freeze or thaw."""

        def record(session: Session, state: str) -> None:
            def freeze(row: InstanceRow) -> bool:
                row.status = {**(row.status or {}), "fsFreezeStatus": state}
                return True

            self._change_row(InstanceRepository(session), loaded, freeze)

        return record


def _data_volumes(session: Session, namespace: str, spec: InstanceSpec) -> dict[str, DataVolumeRef]:
    names = data_volume_names(spec)
    repo = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
    found = {}
    for name in names:
        row = repo.get(namespace, name)
        if row is not None and row.deleted_at is None:
            found[name] = DataVolumeRef(
                row.uid, row.node_name, str((row.status or {}).get("phase", "Pending"))
            )
    return found


def _networks(session: Session, spec: InstanceSpec) -> dict[str, NetworkSpec]:
    repo = ResourceRepository[NetworkRow](session, NETWORKS)
    found = {}
    for network in spec.networks:
        if network.multus is not None:
            row = repo.get("", network.multus.network_name)
            if row is not None:
                found[row.name] = NetworkSpec.model_validate(row.spec)
    return found


def _disk_finder(loaded: LoadedInstance, hv: Hypervisor) -> DiskFinder:
    """Where the instance's DataVolumes' disks are on its node."""

    def find(name: str) -> str:
        ref = loaded.data_volumes.get(name)
        path = hv.volume_path(STORAGE_POOL, data_volume_file(ref.uid)) if ref else None
        if ref is None or ref.phase != "Succeeded" or ref.node != loaded.node_name or path is None:
            raise DataVolumeMissing(f"DataVolume {name!r} has no disk on node {loaded.node_name}")
        return path

    return find


def _lookup(hv: Hypervisor, domain: str) -> DomainInfo | None:
    try:
        return hv.lookup(domain)
    except DomainNotFound:
        return None


def _address(node: NodeRow) -> NodeAddress:
    return NodeAddress.of(node.spec["uri"], (node.status or {}).get("virtType"))


def _unfinished(session: Session, lock: MigrationLock | None) -> MigrationLock | None:
    """The lock, while its migration exists and has not finished."""
    if lock is None:
        return None
    migration = ResourceRepository[MigrationRow](session, MIGRATIONS).get_by_uid(lock.uid)
    return lock if migration is not None and (migration.status or {}).get("phase") not in FINISHED else None


def agent_or_acpi(hv: Hypervisor, domain: str) -> ShutdownMode:
    """Graceful shutdown and reboot go through the guest agent when it is connected, else ACPI."""
    connected = hv.capabilities.guest_agent and hv.agent_connected(domain)
    return ShutdownMode.AGENT if connected else ShutdownMode.ACPI


def wake_pool(session: Session, row: InstanceRow) -> None:
    """A member's (or a claimed instance's) change is its pool's business: the pool counts it."""
    labels = row.labels or {}
    pool = labels.get(POOL_LABEL) if row.pool_uid is not None else labels.get(CLAIMED_LABEL)
    if pool:
        workqueue.enqueue(session, POOLS.work_key(row.namespace, pool))
