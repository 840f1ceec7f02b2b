"""Every stored instant comes back as UTC with its offset, on Postgres and on SQLite (which keeps none)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import select

from app.db import Database
from app.models import TokenRow


def test_instants_round_trip_as_utc(db: Database) -> None:
    east = timezone(timedelta(hours=5, minutes=30))
    written = datetime(2026, 12, 1, 17, 30, 0, 123456, tzinfo=east)
    with db.transaction() as session:
        session.add(TokenRow(id=str(uuid.uuid4()), name="t", digest="d" * 64, created_at=written))
    with db.read() as session:
        read = session.scalars(select(TokenRow.created_at).where(TokenRow.name == "t")).one()
        earlier = session.scalars(
            select(TokenRow.name).where(TokenRow.created_at < datetime(2026, 12, 1, 12, 0, 1, tzinfo=UTC))
        ).all()
    assert read == written and read.tzinfo is not None and read.utcoffset() == timedelta(0)
    assert "t" in earlier  # compared as the same instant in SQL, whatever offset it was written with
