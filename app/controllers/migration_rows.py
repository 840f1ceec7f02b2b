"""Reading and writing a migration's row, and its hold on the instance it moves: what the migration
reconciler's passes see, and every write they make (each in one short transaction)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.clock import Clock, rfc3339
from app.controllers.credentials import load_secrets
from app.controllers.migration_decisions import AttachedDisk, MigratingInstance, merged
from app.controllers.naming import domain_name, network_for
from app.db import Database
from app.kinds import DATAVOLUMES, INSTANCES, NETWORKS, NODES
from app.models import DataVolumeRow, InstanceRow, NetworkRow, NodeRow
from app.repositories import workqueue
from app.repositories.instances import progress_of, set_progress
from app.repositories.migrations import MigrationRepository
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject
from app.schemas.conditions import find_condition
from app.schemas.instance import InstanceSpec, data_volume_names
from app.schemas.migration import FINISHED, IN_FLIGHT, MigrationSpec, MigrationState
from app.schemas.network import NetworkSpec
from app.schemas.records import MigrationIntent, MigrationLock
from app.virt.driver import NetworkConfig

log = logging.getLogger(__name__)
KEEP_FINISHED = 5  # finished migrations kept per instance (KubeVirt keeps five too)


@dataclass(frozen=True)
class NodeEndpoints:
    uri: str  # where Corral reaches the node's libvirt
    migration_uri: str | None  # where other nodes' libvirtd reach it, when that differs

    @property
    def destination(self) -> str:
        return self.migration_uri or self.uri


@dataclass
class LoadedMigration:
    """One pass's read of a migration, its instance and the nodes. `status` is the API's status object,
    kept current by every write of this pass."""

    namespace: str
    name: str
    uid: str
    spec: MigrationSpec
    status: JsonObject
    intent: MigrationIntent
    deleting: bool
    instance: MigratingInstance | None = None
    nodes: dict[str, NodeEndpoints] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def state(self) -> MigrationState:
        return MigrationState.model_validate(self.status.get("migrationState") or {})

    @property
    def copies(self) -> list[str]:
        return list(self.state.copied_volumes or [])

    @property
    def instance_uid(self) -> str | None:
        return self.instance.uid if self.instance is not None else None

    @property
    def abort_wanted(self) -> bool:
        return self.deleting or self.intent.abort or bool(self.instance and self.instance.deleting)


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


class MigrationRows:
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.clock = clock

    def load(self, namespace: str, name: str) -> LoadedMigration | None:
        with self.db.read() as session:
            row = MigrationRepository(session).get(namespace, name)
            if row is None:
                return None
            instance = ResourceRepository[InstanceRow](session, INSTANCES).get(namespace, row.vmi_name)
            nodes = ResourceRepository[NodeRow](session, NODES).page(None)[0]
            return LoadedMigration(
                namespace,
                name,
                row.uid,
                MigrationSpec.model_validate(row.spec),
                dict(row.status or {}),
                MigrationIntent.load(row.intent),
                row.deleted_at is not None,
                instance=_migrating(session, instance) if instance is not None else None,
                nodes={n.name: NodeEndpoints(n.spec["uri"], n.spec.get("migrationUri")) for n in nodes},
            )

    def update(
        self,
        m: LoadedMigration,
        phase: str | None = None,
        *,
        reason: str | None = None,
        message: str | None = None,
        state: MigrationState | None = None,
        also: Callable[[Session], None] | None = None,
    ) -> bool:
        """Write phase and migrationState changes (and `also`, in the same transaction); False: row gone."""
        with self.db.transaction() as session:
            written = self.write_status(session, m, phase, reason=reason, message=message, state=state)
            if written and also is not None:
                also(session)
            return written

    def write_status(
        self,
        session: Session,
        m: LoadedMigration,
        phase: str | None = None,
        *,
        reason: str | None = None,
        message: str | None = None,
        state: MigrationState | None = None,
    ) -> bool:
        repo = MigrationRepository(session)
        row = repo.get(m.namespace, m.name, for_update=True)
        if row is None or row.uid != m.uid:
            return False
        status = dict(row.status or {})
        if phase is not None and phase != status.get("phase"):
            stamp = {"phase": phase, "phaseTransitionTimestamp": rfc3339(self.clock())}
            status.update(
                phase=phase, phaseTransitionTimestamps=[*status.get("phaseTransitionTimestamps", []), stamp]
            )
        if reason is not None:
            status["reason"] = reason
        if message is not None:
            status["message"] = message[:1000]
        if state is not None:
            changes = state.model_dump(by_alias=True, mode="json", exclude_unset=True)
            status["migrationState"] = {**(status.get("migrationState") or {}), **changes}
        if status != row.status:
            row.status = status
            repo.touch(row)
        m.status = status
        return True

    @staticmethod
    def hold(session: Session, m: LoadedMigration, target: str | None, moved_to: str | None = None) -> None:
        """Take the instance for this migration (`target` set) or release it, moving it to `moved_to`."""
        repo = ResourceRepository[InstanceRow](session, INSTANCES)
        row = repo.get(m.namespace, m.spec.vmi_name, for_update=True)
        if row is None or m.instance is None or row.uid != m.instance.uid:
            return
        before = progress_of(row)
        progress = before
        if target is not None:
            progress = before.but(migration=MigrationLock(uid=m.uid, name=m.name, target=target))
        elif before.migration is not None and before.migration.uid == m.uid:
            progress = before.but(migration=None)
        if progress != before or moved_to is not None:
            set_progress(row, progress)
            if moved_to is not None:  # the database names the new node in the same commit as the outcome
                row.node_name = moved_to
                row.status = {**(row.status or {}), "nodeName": moved_to}
                data_volumes = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
                for dv in _data_volume_rows(session, row.namespace, InstanceSpec.model_validate(row.spec)):
                    dv.node_name = moved_to  # its disk was copied along and the original removed
                    dv.status = {**(dv.status or {}), "nodeName": moved_to}
                    data_volumes.touch(dv)
            repo.touch(row)
        workqueue.enqueue(session, INSTANCES.work_key(row.namespace, row.name))

    def finish(
        self,
        m: LoadedMigration,
        phase_reason: str | None,
        reason: str,
        message: str,
        *,
        aborted: bool = False,
        moved_to: str | None = None,
        figures: MigrationState | None = None,
    ) -> None:
        """Succeeded (moved_to set) or Failed; releases the instance in the same transaction."""
        succeeded = moved_to is not None
        fields: dict[str, object] = {
            "end_timestamp": self.clock(),
            "completed": succeeded,
            "failed": not succeeded,
        }
        if not succeeded:
            fields["failure_reason"] = message
        if aborted:
            fields.update(abort_requested=True, abort_status="Succeeded")
        phase = "Succeeded" if succeeded else "Failed"
        release = lambda session: self.hold(session, m, None, moved_to)  # noqa: E731
        self.update(
            m,
            phase,
            reason=phase_reason or reason,
            message=message,
            state=merged(MigrationState.model_validate(fields), figures or MigrationState()),
            also=release,
        )
        log.info("migration %s/%s: %s (%s)", m.namespace, m.name, reason, message)
        with self.db.transaction() as session:  # KubeVirt's garbage collection: the newest few stay
            repo = MigrationRepository(session)
            done = [
                r for r in repo.of_instance(m.namespace, m.spec.vmi_name) if r.status.get("phase") in FINISHED
            ]
            for old in done[:-KEEP_FINISHED]:
                repo.remove(old)

    def remove(self, m: LoadedMigration) -> None:
        with self.db.transaction() as session:
            repo = MigrationRepository(session)
            row = repo.get(m.namespace, m.name, for_update=True)
            if row is not None and row.uid == m.uid:
                self.hold(session, m, None)
                repo.remove(row)


def _migrating(session: Session, row: InstanceRow) -> MigratingInstance:
    status = row.status or {}
    spec = InstanceSpec.model_validate(row.spec)
    migratable = find_condition(status, "LiveMigratable") or {}
    progress = progress_of(row)
    return MigratingInstance(
        uid=row.uid,
        node=row.node_name,
        phase=status.get("phase"),
        reason=status.get("reason"),
        spec=spec,
        domain=domain_name(row.namespace, row.name, row.uid, progress),
        lock=progress.migration,
        volumes=progress.volumes,
        deleting=row.deleted_at is not None,
        unmigratable=migratable.get("reason") if migratable.get("status") == "False" else None,
        hostname=spec.hostname or row.name,
        nat_networks=_nat_networks(session, spec),
        secrets=load_secrets(session, row.namespace, spec),
        data_volumes=tuple(
            AttachedDisk(dv.name, dv.uid, int((dv.status or {}).get("capacity") or 0))
            for dv in _data_volume_rows(session, row.namespace, spec)
        ),
    )


def _nat_networks(session: Session, spec: InstanceSpec) -> tuple[NetworkConfig, ...]:
    repo = ResourceRepository[NetworkRow](session, NETWORKS)
    found = []
    for network in spec.networks:
        row = repo.get("", network.multus.network_name) if network.multus else None
        nat = NetworkSpec.model_validate(row.spec).nat if row is not None else None
        if row is not None and nat is not None:
            found.append(network_for(row.name, nat.cidr))
    return tuple(found)


def _data_volume_rows(session: Session, namespace: str, spec: InstanceSpec) -> list[DataVolumeRow]:
    repo = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
    return [row for name in data_volume_names(spec) if (row := repo.get(namespace, name, for_update=False))]
