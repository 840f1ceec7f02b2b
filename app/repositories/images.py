"""The node image cache rows (app.models.images). Nothing here commits."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import CachedImageRow

PENDING, PULLING, READY, FAILED = "Pending", "Pulling", "Ready", "Failed"


class ImageCacheRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, row_id: int, *, for_update: bool = False) -> CachedImageRow | None:
        query = select(CachedImageRow).where(CachedImageRow.id == row_id)
        return self.session.scalars(query.with_for_update() if for_update else query).first()

    def find(self, node: str, name: str, *, for_update: bool = True) -> CachedImageRow | None:
        query = select(CachedImageRow).where(CachedImageRow.node == node, CachedImageRow.name == name)
        return self.session.scalars(query.with_for_update() if for_update else query).first()

    def find_or_add(self, node: str, name: str, now: datetime) -> tuple[CachedImageRow, bool]:
        """The row for (node, name), locked; (row, whether it was just added). Two passes adding the same
        row at once: the loser reads the winner's."""
        row = self.find(node, name)
        if row is not None:
            return row, False
        try:
            with self.session.begin_nested():
                row = CachedImageRow(node=node, name=name, state=PENDING, wanted_at=now, waiters=[])
                self.session.add(row)
            return row, True
        except IntegrityError:
            found = self.find(node, name)
            assert found is not None
            return found, False

    def on_node(self, node: str, *, for_update: bool) -> list[CachedImageRow]:
        """The node's rows, least recently wanted first."""
        query = select(CachedImageRow).where(CachedImageRow.node == node).order_by(CachedImageRow.wanted_at)
        return list(self.session.scalars(query.with_for_update() if for_update else query))

    def unfinished(self) -> list[tuple[str, int]]:
        """(node, id) of rows a pull still has to finish or retry."""
        query = select(CachedImageRow.node, CachedImageRow.id).where(CachedImageRow.state != READY)
        return [(node, row_id) for node, row_id in self.session.execute(query)]
