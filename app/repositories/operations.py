"""Guest operations: queued by the API, run by the worker, kept as the record."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.models import OperationRow


def add(session: Session, row: OperationRow) -> OperationRow:
    session.add(row)
    session.flush()
    return row


def get(session: Session, operation_id: str) -> OperationRow | None:
    return session.get(OperationRow, operation_id)


# Built once: every instance pass asks.
_PENDING = (
    select(OperationRow)
    .where(OperationRow.instance_uid == bindparam("uid"), OperationRow.state == "Pending")
    .order_by(OperationRow.created_at)
)


def pending(session: Session, instance_uid: str) -> list[OperationRow]:
    return list(session.scalars(_PENDING, {"uid": instance_uid}))


def recent(session: Session, instance_uid: str, limit: int = 100) -> list[OperationRow]:
    query = select(OperationRow).where(OperationRow.instance_uid == instance_uid)
    return list(session.scalars(query.order_by(OperationRow.created_at.desc()).limit(limit)))


def expire(session: Session, older_than: timedelta) -> None:
    session.execute(delete(OperationRow).where(OperationRow.created_at < utc_now() - older_than))
