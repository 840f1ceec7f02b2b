"""Migration queries beyond the generic ones."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.kinds import MIGRATIONS
from app.models import MigrationRow
from app.repositories.resources import ResourceRepository
from app.schemas.migration import FINISHED


class MigrationRepository(ResourceRepository[MigrationRow]):
    def __init__(self, session: Session) -> None:
        super().__init__(session, MIGRATIONS)

    def unfinished(self) -> list[MigrationRow]:
        """Migrations not yet Succeeded or Failed, oldest first (few at any time: filtered here)."""
        rows = self.session.scalars(select(MigrationRow).order_by(MigrationRow.id))
        return [r for r in rows if (r.status or {}).get("phase") not in FINISHED]

    def of_instance(self, namespace: str, vmi_name: str) -> list[MigrationRow]:
        query = select(MigrationRow).where(
            MigrationRow.namespace == namespace, MigrationRow.vmi_name == vmi_name
        )
        return list(self.session.scalars(query.order_by(MigrationRow.id)))

    def labelled(self, key: str, value: str) -> list[MigrationRow]:
        rows = self.session.scalars(select(MigrationRow).order_by(MigrationRow.id))
        return [r for r in rows if (r.labels or {}).get(key) == value]
