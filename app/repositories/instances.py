"""Instance queries beyond the generic ones."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.kinds import INSTANCES
from app.models import InstanceRow
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


class InstanceRepository(ResourceRepository[InstanceRow]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, INSTANCES)

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
        unsummed = InstanceRow.node_name.is_not(None) & InstanceRow.vcpus.is_(None)
        for row in self.session.scalars(select(InstanceRow).where(unsummed)):  # rows older than the columns
            set_requests(row, InstanceSpec.model_validate(row.spec))
            set_progress(row, progress_of(row))
        self.session.flush()
        used: dict[str, tuple[int, int]] = {}
        others = InstanceRow.node_name.is_not(None) & (InstanceRow.uid != exclude_uid)
        for node in (InstanceRow.node_name, InstanceRow.migration_target):
            sums = select(node, func.sum(InstanceRow.vcpus), func.sum(InstanceRow.memory_bytes))
            for name, vcpus, memory in self.session.execute(
                sums.where(others, node.is_not(None)).group_by(node)
            ):
                cpu, mem = used.get(str(name), (0, 0))
                used[str(name)] = (cpu + int(vcpus or 0), mem + int(memory or 0))
        return used
