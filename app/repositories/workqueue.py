"""The keyed work queue (see app.models.workqueue): enqueue, lease, finish. Nothing here commits."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, cast

from sqlalchemy import (
    Integer,
    Table,
    and_,
    bindparam,
    case,
    delete,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.db import WORK_CHANNEL, signal
from app.kinds import NODES
from app.models import WorkItemRow


@dataclass(frozen=True)
class Lease:
    key: str
    seq: int
    attempts: int


PENDING = "corral.enqueued"  # session.info: key -> earliest due time, written when the transaction commits
# Core statements: the queue's rows are never loaded as ORM objects, so the ORM's bookkeeping is pure cost.
WORK = cast(Table, WorkItemRow.__table__)
UNLEASED = {"leased_by": None, "leased_seq": None, "lease_until": None}  # a row's lease columns, emptied


def enqueue(session: Session, key: str, delay: float = 0.0) -> None:
    """Ask for a reconcile of `key` after `delay` seconds (earlier requests win). The queue rows are written
    just before the transaction commits, in key order, after every other write of the transaction: a
    transaction never holds a queue row while it waits for a resource row or the revision counter, and two
    transactions take queue rows in one order, so enqueues cannot deadlock with each other or with writes."""
    due = utc_now() + timedelta(seconds=delay)
    pending: dict[str, datetime] = session.info.setdefault(PENDING, {})
    pending[key] = min(due, pending.get(key, due))


@event.listens_for(Session, "after_rollback")
def _drop_enqueued(session: Session) -> None:
    session.info.pop(PENDING, None)


# For every session (a listener per session costs more than the check): most commits enqueue nothing.
@event.listens_for(Session, "before_commit")
def write_enqueued(session: Session) -> None:
    """Write the transaction's enqueues: before it commits, and before repositories.resources.stamp takes
    the revision counter (so no transaction holds it while it waits for a queue row)."""
    rows = take_enqueued(session)
    if rows:
        session.execute(enqueue_statement(session.get_bind().dialect.name), rows)


def take_enqueued(session: Session) -> list[dict[str, Any]]:
    """The transaction's enqueues as rows of `enqueue_statement`, for the caller to write now: in key order,
    so two transactions take queue rows in one order and cannot deadlock."""
    pending: dict[str, datetime] = session.info.pop(PENDING, {})
    if any(due <= utc_now() for due in pending.values()):
        signal(session, WORK_CHANNEL)
    return [{"key": key, "due_at": due} for key, due in sorted(pending.items())]


@cache
def enqueue_statement(dialect: str) -> Any:
    """Insert a key, or for one already queued: count the request and keep the earlier due time."""
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(WORK).values(
        key=bindparam("key"), due_at=bindparam("due_at", type_=WORK.c.due_at.type), seq=1, attempts=0
    )
    excluded = statement.excluded
    earlier = case((WORK.c.due_at < excluded.due_at, WORK.c.due_at), else_=excluded.due_at)
    return statement.on_conflict_do_update(
        index_elements=[WORK.c.key], set_={"seq": WORK.c.seq + 1, "due_at": earlier}
    )


def new_holder() -> str:
    """A name for a worker's leases: its host and pid tell whether the holder is still alive."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def lease(session: Session, worker: str, limit: int, lease_seconds: float) -> list[Lease]:
    """Take up to `limit` due keys that no live lease holds, nodes' first, then oldest first.

    One conditional UPDATE takes them, so two workers can never both win a key, on any database; SKIP LOCKED
    only keeps Postgres workers from queueing behind each other.
    """
    t = utc_now()
    parameters = {"now": t, "worker": worker, "limit": limit, "until": t + timedelta(seconds=lease_seconds)}
    rows = list(session.execute(_lease_statement(session.get_bind().dialect.name), parameters))
    rows.sort(key=lambda row: (not row.key.startswith(f"{NODES.kind}/"), row.due_at))
    return [Lease(key=row.key, seq=int(row.seq), attempts=int(row.attempts)) for row in rows]


@cache
def _lease_statement(dialect: str) -> Any:
    """Built once: every pass's finish runs it."""
    now = bindparam("now", type_=WORK.c.due_at.type)
    free = or_(WORK.c.lease_until.is_(None), WORK.c.lease_until < now)
    # Node heartbeats first: a backlog of instance passes must never make a busy worker's node look dead.
    heartbeat_first = case((WORK.c.key.startswith(f"{NODES.kind}/"), 0), else_=1)
    chosen = (
        select(WORK.c.key)
        .where(WORK.c.due_at <= now, free)
        .order_by(heartbeat_first, WORK.c.due_at)
        .limit(bindparam("limit", type_=Integer()))
    )
    if dialect == "postgresql":
        chosen = chosen.with_for_update(skip_locked=True)
    # A materialized CTE runs the pick once. As `key IN (subquery)`, Postgres may run the subquery more than
    # once within the statement (a rescan, a recheck of a row changed meanwhile), and a rerun with SKIP
    # LOCKED can pick other keys: a worker was seen holding 377 leases after asking for one.
    picked = chosen.cte("picked").prefix_with("MATERIALIZED")
    return (
        update(WORK)
        .where(WORK.c.key == picked.c.key, WORK.c.due_at <= now, free)
        .values(
            leased_by=bindparam("worker"),
            leased_seq=WORK.c.seq,
            lease_until=bindparam("until", type_=WORK.c.lease_until.type),
        )
        .returning(WORK.c.key, WORK.c.seq, WORK.c.attempts, WORK.c.due_at)
    )


def renew(session: Session, worker: str, keys: list[str], lease_seconds: float) -> None:
    if keys:
        session.execute(
            update(WORK)
            .where(WORK.c.key.in_(keys), WORK.c.leased_by == worker)
            .values(lease_until=utc_now() + timedelta(seconds=lease_seconds))
        )


def finish(
    session: Session,
    worker: str,
    taken: Lease,
    *,
    requeue_after: float | None = None,
    error: str | None = None,
) -> bool:
    """End a lease. Without a requeue the row goes, unless the key was enqueued again meanwhile. True when
    the key is due again at once (enqueued during the pass): a worker should look for work now."""
    if error is not None:
        session.execute(
            update(WORK)
            .where(_held_by(worker, taken))
            .values(
                **UNLEASED,
                attempts=WORK.c.attempts + 1,
                last_error=error[:2000],
                due_at=utc_now() + timedelta(seconds=requeue_after or 0),
            )
        )
        return not requeue_after
    done, requeued = _finish_statements()
    lease_of = {"leased_key": taken.key, "worker": worker, "leased_at_seq": taken.seq}
    if requeue_after is None:
        gone = session.execute(done, lease_of)
        if getattr(gone, "rowcount", 0):
            return False
        # Enqueued again during the pass: keep the row (due as the enqueue asked), drop the lease.
        session.execute(
            update(WORK).where(_held_by(worker, taken)).values(**UNLEASED, attempts=0, last_error=None)
        )
        return True
    later = utc_now() + timedelta(seconds=requeue_after)
    seq = session.execute(requeued, {**lease_of, "later": later}).scalar()
    return seq is not None and seq != taken.seq


def _held_by(worker: str, taken: Lease) -> Any:
    """The lease's row, while `worker` holds it (built only on the rarer ends of a pass)."""
    return and_(WORK.c.key == taken.key, WORK.c.leased_by == worker)


@cache
def _finish_statements() -> tuple[Any, Any]:
    """Built once, the two ends of a successful pass: the row deleted if not enqueued again during the
    pass, or due again later (an enqueue during the pass keeps its earlier due time, so it runs now)."""
    # Parameter names other than the columns': an UPDATE reserves those for its SET clause.
    mine = and_(WORK.c.key == bindparam("leased_key"), WORK.c.leased_by == bindparam("worker"))
    same = WORK.c.seq == bindparam("leased_at_seq", type_=WORK.c.seq.type)
    done = delete(WORK).where(mine, same)
    due = case((same, bindparam("later", type_=WORK.c.due_at.type)), else_=WORK.c.due_at)
    requeued = (
        update(WORK)
        .where(mine)
        .values(**UNLEASED, attempts=0, last_error=None, due_at=due)
        .returning(WORK.c.seq)
    )
    return done, requeued


def leased_elsewhere(session: Session, keys: Collection[str], worker: str) -> set[str]:
    """Those of `keys` that a live lease of another worker holds now."""
    if not keys:
        return set()
    parameters = {"leased_keys": list(keys), "worker": worker, "now": utc_now()}
    return set(session.connection().execute(_leased_elsewhere_statement(), parameters).scalars())


@cache
def _leased_elsewhere_statement() -> Any:
    now = bindparam("now", type_=WORK.c.lease_until.type)
    return select(WORK.c.key).where(
        WORK.c.key.in_(bindparam("leased_keys", expanding=True)),
        WORK.c.leased_by != bindparam("worker"),
        WORK.c.lease_until >= now,
    )


def holders(session: Session) -> set[str]:
    """Identities of the workers that hold leases now."""
    held = select(WORK.c.leased_by).where(WORK.c.leased_by.is_not(None)).distinct()
    return {str(h) for h in session.scalars(held)}


def release(session: Session, worker: str) -> int:
    """Drop every lease of `worker` (known dead): its keys are due at once instead of at lease expiry."""
    result = session.execute(
        update(WORK).where(WORK.c.leased_by == worker).values(**UNLEASED, due_at=utc_now())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def depth(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(WORK)).scalar_one())
