"""resourceVersion allocation and the change log that watches read."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.db import EVENTS_CHANNEL, signal
from app.models import EventRow, RevisionRow

# Core statements for the two hottest writes: neither row is ever loaded as an ORM object.
EVENTS = cast(Table, EventRow.__table__)
REVISIONS = cast(Table, RevisionRow.__table__)


def take_revisions(session: Session, count: int) -> int:
    """Take `count` consecutive resourceVersions; returns the first. The counter's row lock is held to
    commit, so revisions commit in order: take them last (repositories.resources.stamp does)."""
    value = session.execute(
        update(REVISIONS)
        .where(REVISIONS.c.id == 1)
        .values(value=REVISIONS.c.value + count)
        .returning(REVISIONS.c.value)
    ).scalar_one()
    return int(value) - count + 1


def current_revision(session: Session) -> int:
    return int(session.execute(select(RevisionRow.value).where(RevisionRow.id == 1)).scalar_one())


def record_events(session: Session, events: list[tuple[int, str, dict[str, Any]]]) -> None:
    """The change log's entries: (resourceVersion, event type, object), in one statement."""
    at = utc_now()
    # Core, not the ORM: nothing reads an event back in the transaction that wrote it.
    session.execute(
        insert(EVENTS),
        [
            {
                "rv": rv,
                "kind": obj["kind"],
                "namespace": obj["metadata"].get("namespace") or "",
                "name": obj["metadata"]["name"],
                "type": event_type,
                "object": obj,
                "created_at": at,
            }
            for rv, event_type, obj in events
        ],
    )
    signal(session, EVENTS_CHANNEL)


def events_after(
    session: Session, kind: str | None, namespace: str | None, rv: int, limit: int = 500
) -> list[EventRow]:
    """Changes after `rv` in order, of one kind (None: every kind) and namespace (None: every one)."""
    query = select(EventRow).where(EventRow.rv > rv)
    if kind is not None:
        query = query.where(EventRow.kind == kind)
    if namespace is not None:
        query = query.where(EventRow.namespace == namespace)
    return list(session.scalars(query.order_by(EventRow.rv).limit(limit)))


def event_before(session: Session, kind: str, namespace: str, name: str, rv: int) -> EventRow | None:
    """The object's last retained event before `rv`: its state as a watch at that point knew it."""
    query = select(EventRow).where(
        EventRow.kind == kind, EventRow.namespace == namespace, EventRow.name == name, EventRow.rv < rv
    )
    return session.scalars(query.order_by(EventRow.rv.desc()).limit(1)).first()


def oldest_event(session: Session) -> int | None:
    value = session.execute(select(func.min(EventRow.rv))).scalar()
    return int(value) if value is not None else None


def compact_events(session: Session, keep: int) -> int:
    """Drop all but the newest `keep` events; a watch older than that gets 410 Gone."""
    cutoff = current_revision(session) - keep
    if cutoff <= 0:
        return 0
    result = session.execute(delete(EventRow).where(EventRow.rv <= cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
