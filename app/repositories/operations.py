"""Guest operations: queued by the API, run by the worker, kept as the record."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.models import OperationRow


def add(session: Session, row: OperationRow) -> OperationRow:
    session.add(row)
    session.flush()
    return row


def get(session: Session, operation_id: str) -> OperationRow | None:
    return session.get(OperationRow, operation_id)


def pending(session: Session, instance_uid: str) -> list[OperationRow]:
    query = select(OperationRow).where(
        OperationRow.instance_uid == instance_uid, OperationRow.state == "Pending"
    )
    return list(session.scalars(query.order_by(OperationRow.created_at)))


def recent(session: Session, instance_uid: str, limit: int = 100) -> list[OperationRow]:
    query = select(OperationRow).where(OperationRow.instance_uid == instance_uid)
    return list(session.scalars(query.order_by(OperationRow.created_at.desc()).limit(limit)))


def expire(session: Session, older_than: timedelta) -> None:
    session.execute(delete(OperationRow).where(OperationRow.created_at < utc_now() - older_than))
