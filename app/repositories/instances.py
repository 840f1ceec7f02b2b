"""Instance queries beyond the generic ones."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.kinds import INSTANCES
from app.models import InstanceRow
from app.repositories.resources import ResourceRepository
from app.schemas.records import InstanceIntent, InstanceProgress


def intent_of(row: InstanceRow) -> InstanceIntent:
    return InstanceIntent.load(row.intent)


def set_intent(row: InstanceRow, intent: InstanceIntent) -> None:
    row.intent = intent.dump()


def progress_of(row: InstanceRow) -> InstanceProgress:
    return InstanceProgress.load(row.progress)


def set_progress(row: InstanceRow, progress: InstanceProgress) -> None:
    row.progress = progress.dump()


class InstanceRepository(ResourceRepository[InstanceRow]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, INSTANCES)

    def members(self, pool_uid: str, *, for_update: bool = False) -> list[InstanceRow]:
        """A pool's unclaimed members, oldest first."""
        query = select(InstanceRow).where(InstanceRow.pool_uid == pool_uid).order_by(InstanceRow.id)
        return list(self.session.scalars(query.with_for_update() if for_update else query))

    def placed(self) -> list[InstanceRow]:
        """Instances that hold capacity on a node (terminating ones too, until their domain is gone)."""
        return list(self.session.scalars(select(InstanceRow).where(InstanceRow.node_name.is_not(None))))
