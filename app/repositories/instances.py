"""Instance queries beyond the generic ones."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Delete,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    inspect,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value

from app.kinds import INSTANCES
from app.models import InstanceRow, NodeAllocationRow, NodeRow, OperationRow
from app.repositories.resources import ResourceRepository
from app.schemas.instance import InstanceSpec, requested_memory, requested_vcpus
from app.schemas.records import InstanceIntent, InstanceProgress


def intent_of(row: InstanceRow) -> InstanceIntent:
    return InstanceIntent.load(row.intent)


def set_intent(row: InstanceRow, intent: InstanceIntent) -> None:
    row.intent = intent.dump()


def progress_of(row: InstanceRow) -> InstanceProgress:
    return InstanceProgress.load(row.progress)


def set_progress(row: InstanceRow, progress: InstanceProgress) -> None:
    row.progress = progress.dump()
    row.migration_target = progress.migration.target if progress.migration is not None else None


def set_requests(row: InstanceRow, spec: InstanceSpec) -> None:
    """What the spec holds on a node, kept beside it for placement's sums."""
    row.vcpus, row.memory_bytes = requested_vcpus(spec), requested_memory(spec)


@dataclass(frozen=True)
class PassRead:
    """What a reconcile pass reads first, in one statement: the row, its node's address, and whether guest
    operations wait for it."""

    row: InstanceRow
    node: tuple[str, str | None] | None  # (uri, virtType) of the node it is placed on, while that exists
    operations_pending: bool


class InstanceRepository(ResourceRepository[InstanceRow]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, INSTANCES)

    def read_for_pass(self, namespace: str, name: str) -> PassRead | None:
        found = self.session.execute(_pass_statement(), {"namespace": namespace, "name": name}).first()
        if found is None:
            return None
        row, node_id, uri, virt_type, operations_pending = found
        return PassRead(row, (uri, virt_type) if node_id is not None else None, bool(operations_pending))

    def write_if_unchanged(self, row: InstanceRow) -> bool:
        """Write the changes made to `row`, a writer's own copy as it last read or committed it (in no
        session), in one statement when the row is still stored at the version that copy holds, and record
        them for watchers: no read before the write. False, nothing written, when anyone wrote it since,
        it is gone, or this session holds the row itself (the identity map allows one object per row)."""
        state = inspect(row)
        changed = {attr.key: attr.value for attr in state.attrs if attr.history.has_changes()}
        if not changed:
            return True
        if self._held_here(row):
            return False
        statement = _conditional_update(tuple(sorted(changed)))
        values = {f"new_{key}": value for key, value in changed.items()}
        known = {"row_id": row.id, "known_version": row.resource_version}
        if self.session.connection().execute(statement, known | values).rowcount != 1:
            return False
        for key, value in changed.items():
            set_committed_value(row, key, value)
        self.touch(row)
        return True

    def remove_if_unchanged(self, row: InstanceRow) -> bool:
        """`write_if_unchanged` for a removal: `row` deleted in one statement while nobody wrote it since."""
        if self._held_here(row):
            return False
        known = {"row_id": row.id, "known_version": row.resource_version}
        if self.session.connection().execute(_conditional_delete(), known).rowcount != 1:
            return False
        self.remove_event(row)
        return True

    def _held_here(self, row: InstanceRow) -> bool:
        key = inspect(row).identity_key
        return key is not None and self.session.identity_map.get(key) is not None

    def members(self, pool_uid: str, *, for_update: bool = False) -> list[InstanceRow]:
        """A pool's unclaimed members, oldest first."""
        query = select(InstanceRow).where(InstanceRow.pool_uid == pool_uid).order_by(InstanceRow.id)
        return list(self.session.scalars(query.with_for_update() if for_update else query))

    def named(self, namespace: str, names: list[str]) -> list[InstanceRow]:
        """The instances of these names that exist in the namespace."""
        if not names:
            return []
        query = select(InstanceRow).where(InstanceRow.namespace == namespace, InstanceRow.name.in_(names))
        return list(self.session.scalars(query))

    def keys_on_node(self, node: str) -> list[tuple[str, str]]:
        """(namespace, name) of the instances placed on `node` or migrating to it."""
        on_node = (InstanceRow.node_name == node) | (InstanceRow.migration_target == node)
        return [
            (ns, name)
            for ns, name in self.session.execute(
                select(InstanceRow.namespace, InstanceRow.name).where(on_node)
            )
        ]

    def used_by_node(self, exclude_uid: str) -> dict[str, tuple[int, int]]:
        """(vCPUs, memory bytes) held per node: placed instances on their node, terminating ones until
        their domain is gone, and migrating ones on their target as well."""
        used, unsummed = self._held(exclude_uid)
        if unsummed:  # rows stored before the columns existed: filled from their spec, once
            missing = or_(*(held_on.is_not(None) for held_on in HELD_ON)) & InstanceRow.vcpus.is_(None)
            for row in self.session.scalars(select(InstanceRow).where(missing)):
                set_requests(row, InstanceSpec.model_validate(row.spec))
                set_progress(row, progress_of(row))
            self.session.flush()
            used, _ = self._held(exclude_uid)
        return used

    def _held(self, exclude_uid: str) -> tuple[dict[str, tuple[int, int]], bool]:
        """The sums per node in one statement, and whether an instance counted lacks its request columns."""
        used: dict[str, tuple[int, int]] = {}
        unsummed = False
        for name, vcpus, memory, missing in self.session.execute(_held_statement(), {"exclude": exclude_uid}):
            used[str(name)] = (int(vcpus or 0), int(memory or 0))
            unsummed = unsummed or bool(missing)
        return used, unsummed


INSTANCES_TABLE = cast(Table, InstanceRow.__table__)
_UNCHANGED = and_(
    INSTANCES_TABLE.c.id == bindparam("row_id"),
    INSTANCES_TABLE.c.resource_version == bindparam("known_version"),
)


@cache
def _conditional_update(keys: tuple[str, ...]) -> Update:
    columns = InstanceRow.__mapper__.columns
    return update(INSTANCES_TABLE).where(_UNCHANGED).values({columns[k]: bindparam(f"new_{k}") for k in keys})


@cache
def _conditional_delete() -> Delete:
    return delete(INSTANCES_TABLE).where(_UNCHANGED)


@cache
def _pass_statement() -> Select[Any]:
    """Built once: every instance pass runs it."""
    node = aliased(NodeRow)
    on_node = and_(node.namespace == "", node.name == InstanceRow.node_name)
    pending = exists().where(OperationRow.instance_uid == InstanceRow.uid, OperationRow.state == "Pending")
    return (
        select(
            InstanceRow,
            node.id,
            node.spec["uri"].as_string(),
            node.status["virtType"].as_string(),
            pending.label("operations_pending"),
        )
        .outerjoin(node, on_node)
        .where(InstanceRow.namespace == bindparam("namespace"), InstanceRow.name == bindparam("name"))
    )


HELD_ON = (InstanceRow.node_name, InstanceRow.migration_target)  # an instance holds room on both


@cache
def _held_statement() -> Select[Any]:
    """Built once: every placement runs it. The triggers' sums per node (app.models.allocations), less what
    the instance being placed holds itself (a migration's target is chosen without its own reservation)."""
    own = InstanceRow.uid == bindparam("exclude")
    unsized = case((InstanceRow.vcpus.is_(None), -1), else_=0)
    own_requests = (-InstanceRow.vcpus, -InstanceRow.memory_bytes, unsized)
    held = union_all(
        select(
            NodeAllocationRow.node,
            NodeAllocationRow.vcpus,
            NodeAllocationRow.memory_bytes,
            NodeAllocationRow.unsized,
        ),
        *(select(held_on, *own_requests).where(own, held_on.is_not(None)) for held_on in HELD_ON),
    ).subquery()
    return select(
        held.c.node, func.sum(held.c.vcpus), func.sum(held.c.memory_bytes), func.sum(held.c.unsized)
    ).group_by(held.c.node)
