"""Stored answers for Idempotency-Key requests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.models import IdempotencyRow


def find(session: Session, principal: str, key: str) -> IdempotencyRow | None:
    return session.get(IdempotencyRow, (principal, key))


def remember(
    session: Session, principal: str, key: str, request: str, status_code: int, body: dict[str, Any]
) -> None:
    session.add(
        IdempotencyRow(
            principal=principal,
            key=key,
            request=request,
            status_code=status_code,
            body=body,
            created_at=utc_now(),
        )
    )
    session.flush()


def expire(session: Session, older_than: timedelta) -> None:
    session.execute(delete(IdempotencyRow).where(IdempotencyRow.created_at < utc_now() - older_than))
