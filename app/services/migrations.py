"""Migration use cases: refuse what cannot migrate at once, cancel, and node drains."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.clock import utc_now
from app.errors import Conflict, FieldError, Invalid, NotFound
from app.kinds import INSTANCES, MIGRATIONS, NODES
from app.models import InstanceRow
from app.repositories.migrations import MigrationRepository
from app.repositories.resources import ResourceRepository
from app.schemas.common import GENERATE_NAME_MAX, JsonObject, name_with_suffix
from app.schemas.conditions import find_condition
from app.schemas.migration import (
    DRAIN_LABEL,
    FINISHED,
    DrainMigration,
    DrainStatus,
    MigrateOptions,
    NotMigratable,
    phase_refusal,
)
from app.schemas.records import MigrationIntent
from app.services.instances import phase_for_actions
from app.services.resources import ResourceService


def refusal(instance: InstanceRow, migrations: MigrationRepository) -> str | None:
    """Why this instance cannot start a live migration now, or None."""
    status = instance.status or {}
    phase = phase_for_actions(instance)
    if instance.deleted_at is not None:
        return "the instance is being deleted"
    busy = unfinished_migration(instance, migrations)
    if busy is not None:
        return f"migration {busy!r} of this instance is not finished"
    migratable = find_condition(status, "LiveMigratable") or {}
    if migratable.get("status") == "False":
        return f"the instance is not live-migratable: {migratable.get('reason')}"
    if instance.node_name is None:
        return f"the instance is {phase}; it runs on no node"
    return phase_refusal(phase, status.get("reason"))


def unfinished_migration(instance: InstanceRow, migrations: MigrationRepository) -> str | None:
    """The name of the instance's migration that has not finished (nor is being deleted), if any."""
    rows = migrations.of_instance(instance.namespace, instance.name)
    return next(
        (m.name for m in rows if m.status.get("phase") not in FINISHED and m.deleted_at is None), None
    )


class MigrationService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, MIGRATIONS)
        self.migrations = MigrationRepository(session)

    def prepare_new(self, row: Any) -> None:
        vmi_name, target = row.spec["vmiName"], row.spec.get("targetNode")
        instance = ResourceRepository[InstanceRow](self.session, INSTANCES).get(row.namespace, vmi_name)
        if instance is None:
            raise Invalid(
                f"no instance {vmi_name!r} in namespace {row.namespace!r}",
                [FieldError("spec.vmiName", "no such instance")],
            )
        reason = refusal(instance, self.migrations)
        if reason is not None:
            raise Conflict(f"cannot migrate {vmi_name!r}: {reason}", [FieldError("spec.vmiName", reason)])
        if target is not None:
            if ResourceRepository[Any](self.session, NODES).get("", target) is None:
                raise Invalid(f"no node {target!r}", [FieldError("spec.targetNode", "no such node")])
            if target == instance.node_name:
                raise Invalid(
                    f"instance {vmi_name!r} already runs on {target!r}",
                    [FieldError("spec.targetNode", "is the source node")],
                )
        row.vmi_name = vmi_name
        row.intent = MigrationIntent().dump()
        row.status = {"phase": "Pending"}

    def spec_changed(self, row: Any, old_spec: JsonObject) -> None:
        raise Invalid(
            "a migration's spec cannot change; delete it and create another",
            [FieldError("spec", "is immutable")],
        )

    def cancel(self, namespace: str, name: str) -> JsonObject:
        """Ask the worker to abort; the instance keeps running on its source node."""
        row = self._row(namespace, name, for_update=True)
        phase = (row.status or {}).get("phase")
        if phase in FINISHED:
            raise Conflict(f"migration {name!r} already {phase}", [FieldError("status.phase", str(phase))])
        if not MigrationIntent.load(row.intent).abort:
            row.intent = MigrationIntent(abort=True, abort_requested_at=utc_now()).dump()
            self.repo.touch(row)
            self._wake(namespace, name)
        return self.repo.settled(row)

    def migrate_instance(self, namespace: str, name: str, options: MigrateOptions) -> JsonObject:
        """The shortcut POST .../instances/{name}/migrate: a migration named after the instance."""
        if ResourceRepository[InstanceRow](self.session, INSTANCES).get(namespace, name) is None:
            # The path names the instance, so its absence is a 404 here, not an invalid spec.vmiName.
            raise NotFound(f"{INSTANCES.kind} {name!r} not found in namespace {namespace!r}")
        spec = {"vmiName": name, **options.model_dump(by_alias=True, mode="json", exclude_none=True)}
        body = {
            "metadata": {"generateName": name_with_suffix(name, "-migration-", GENERATE_NAME_MAX)},
            "spec": spec,
        }
        return self.create(namespace, body)

    # -- drains --------------------------------------------------------------------------------------
    def drain(self, node: str) -> DrainStatus:
        """Cordon the node and start a migration for every instance on it that can move."""
        node_row = self._node(node, for_update=True)
        if not node_row.spec.get("unschedulable"):
            node_row.spec = {**node_row.spec, "unschedulable": True}
            node_row.generation += 1
            ResourceRepository[Any](self.session, NODES).touch(node_row)
        for instance in self._hosted(node):
            if refusal(instance, self.migrations) is not None:
                continue  # listed by drain_status, with the reason (an unfinished migration included)
            self.create(
                instance.namespace,
                {
                    "metadata": {
                        "generateName": name_with_suffix(instance.name, "-drain-", GENERATE_NAME_MAX),
                        "labels": {DRAIN_LABEL: node},
                    },
                    "spec": {"vmiName": instance.name},
                },
            )
        return self.drain_status(node)

    def drain_status(self, node: str) -> DrainStatus:
        node_row = self._node(node)
        hosted = self._hosted(node)
        refused = [
            NotMigratable(namespace=i.namespace, name=i.name, reason=reason)
            for i in hosted
            if (reason := refusal(i, self.migrations)) is not None
            and unfinished_migration(i, self.migrations) is None
        ]
        return DrainStatus(
            node=node,
            unschedulable=bool(node_row.spec.get("unschedulable")),
            migrations=[
                DrainMigration(
                    namespace=m.namespace,
                    name=m.name,
                    vmi_name=m.vmi_name,
                    phase=(m.status or {}).get("phase"),
                )
                for m in self.migrations.labelled(DRAIN_LABEL, node)
            ],
            not_migratable=refused,
            remaining_instances=len(hosted),
        )

    def cancel_drain(self, node: str) -> DrainStatus:
        """Abort the drain's unfinished migrations; the node stays unschedulable until an admin says so."""
        for row in self.migrations.labelled(DRAIN_LABEL, node):
            if (row.status or {}).get("phase") not in FINISHED:
                self.cancel(row.namespace, row.name)
        return self.drain_status(node)

    def _node(self, node: str, *, for_update: bool = False) -> Any:
        row = ResourceRepository[Any](self.session, NODES).get("", node, for_update=for_update)
        if row is None:
            raise NotFound(f"Node {node!r} not found")
        return row

    def _hosted(self, node: str) -> list[InstanceRow]:
        return list(ResourceRepository[InstanceRow](self.session, INSTANCES).page(None, node_name=node)[0])
