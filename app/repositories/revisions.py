"""resourceVersion allocation and the change log that watches read."""

from __future__ import annotations

from functools import cache
from typing import Any
from typing import cast as typed

import orjson
import psycopg
from sqlalchemy import (
    BigInteger,
    Insert,
    Integer,
    Select,
    Table,
    Text,
    bindparam,
    cast,
    column,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Compiled, Connection, Dialect, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.db import EVENTS_CHANNEL, signal
from app.models import EventRow, RevisionRow
from app.models.base import UtcDateTime

# Core statements for the two hottest writes: neither row is ever loaded as an ORM object.
EVENTS = typed(Table, EventRow.__table__)
REVISIONS = typed(Table, RevisionRow.__table__)
_LOG_EVENTS = insert(EVENTS)


# A write's place in the change log: (table, row id) when a row takes the version, and the event.
StampedRows = dict[Table, list[tuple[int, int]]]  # table -> (row id, ordinal)
Change = tuple[int, str, dict[str, Any]]  # (ordinal, event type, object)
# A statement and its rows, to be executed (as executemany) before the counter is taken.
Batch = tuple[Insert, list[dict[str, Any]]]


def write_revisions(
    session: Session,
    rows: StampedRows,
    changes: list[Change],
    *,
    commit: bool = False,
    first: Batch | None = None,
) -> int:
    """Take len(changes) consecutive resourceVersions, set each row's (base + its ordinal) and log the
    changes; returns the base. `first` is written before (the work queue's rows). The counter's row lock
    is then held to commit, so revisions commit in order: call this last (repositories.resources.stamp
    does). Postgres does it all in one statement, so the lock covers that statement and the commit only;
    with `commit`, `first`, the statement and the COMMIT go to the server together, in one round trip, so
    the lock is never held while this process waits for its GIL to send the COMMIT."""
    count = len(changes)
    at_once = session.get_bind().dialect.name == "postgresql"
    if first is not None and not (at_once and commit):  # else it goes in the commit's pipeline
        session.execute(*first)
        first = None
    if at_once:
        return _write_revisions_at_once(session, rows, changes, first, commit)
    connection = session.connection()  # Core statements: the ORM session's execute only adds cost
    base = int(connection.execute(_take_revisions(), {"count": count}).scalar_one())
    for table, stamped in rows.items():
        connection.execute(
            _stamp_rows(table), [{"row_id": row_id, "rv": base + ordinal} for row_id, ordinal in stamped]
        )
    for ordinal, _, obj in changes:
        obj["metadata"]["resourceVersion"] = str(base + ordinal)
    record_events(session, [(base + ordinal, event_type, obj) for ordinal, event_type, obj in changes])
    return base


def _write_revisions_at_once(
    session: Session, rows: StampedRows, changes: list[Change], first: Batch | None, commit: bool
) -> int:
    parameters: dict[str, Any] = {
        "count": len(changes),
        "at": utc_now(),
        # One JSON document, not arrays: a text array would escape every quote of every object.
        "changes": orjson.dumps(
            [{"ordinal": ordinal, **_logged(event_type, obj)} for ordinal, event_type, obj in changes]
        ).decode(),
    }
    for index, stamped in enumerate(rows.values()):
        parameters[f"row_ids_{index}"] = [row_id for row_id, _ in stamped]
        parameters[f"row_ordinals_{index}"] = [ordinal for _, ordinal in stamped]
    statement = _revisions_statement(tuple(rows))
    if not commit:
        base = int(session.execute(statement, parameters).scalar_one())
    else:
        # Pipelined with the statement. SQLAlchemy's own COMMIT that follows finds the connection idle:
        # psycopg sends nothing for it, and a statement after this one would start a new transaction.
        dialect = session.get_bind().dialect
        compiled = _compiled(statement, dialect)
        driver = session.connection().connection.driver_connection
        assert driver is not None
        try:
            with driver.pipeline():
                if first is not None:
                    before, before_rows = first
                    written = _compiled(before, dialect)
                    params = [written.construct_params(row) for row in before_rows]
                    driver.cursor().executemany(written.string, params)
                cursor = driver.execute(compiled.string, compiled.construct_params(parameters))
                driver.commit()
        except psycopg.Error as exc:  # as SQLAlchemy reports it: callers retry contention by its SQLSTATE
            raise DBAPIError.instance(compiled.string, None, exc, psycopg.Error) from exc
        base = int(typed(tuple[int], cursor.fetchone())[0])
    signal(session, EVENTS_CHANNEL)
    return base


@cache
def _take_revisions() -> Any:
    """Take `count` revisions: returns the base, the last revision before them."""
    count = bindparam("count", type_=Integer())
    return (
        update(REVISIONS)
        .where(REVISIONS.c.id == 1)
        .values(value=REVISIONS.c.value + count)
        .returning((REVISIONS.c.value - count).label("base"))
    )


@cache
def _stamp_rows(table: Table) -> Any:
    return (
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values(resource_version=bindparam("rv", type_=BigInteger()))
    )


@cache
def _compiled(statement: Select[Any] | Insert, dialect: Dialect) -> Compiled:
    return statement.compile(dialect=dialect)


@cache
def _revisions_statement(tables: tuple[Table, ...]) -> Select[Any]:
    """One statement for a stamp touching these tables: the values come as arrays, so it is compiled once."""
    taken = _take_revisions().cte("taken")
    base = select(taken.c.base).scalar_subquery()  # one row: a subquery, not a join, reaches it everywhere
    statement = select(taken.c.base)
    for index, table in enumerate(tables):
        stamped = _unnest(
            f"rows_{index}",
            ("row_id", f"row_ids_{index}", BigInteger()),
            ("ordinal", f"row_ordinals_{index}", Integer()),
        )
        stamp_rows = (
            update(table)
            .where(table.c.id == stamped.c.row_id)
            .values(resource_version=base + stamped.c.ordinal)
        )
        statement = statement.add_cte(stamp_rows.cte(f"stamp_{index}"))
    logged = (
        func.jsonb_to_recordset(cast(bindparam("changes", type_=Text()), JSONB()))
        .table_valued(
            column("ordinal", Integer()),
            column("kind", Text()),
            column("namespace", Text()),
            column("name", Text()),
            column("type", Text()),
            column("object", JSONB()),
            name="changes",
        )
        .render_derived(with_types=True)
    )
    rv = base + logged.c.ordinal
    # The object was shown before its version was known: the version is filled in here.
    shown = func.jsonb_set(
        logged.c.object,
        cast(literal(_RV_PATH), ARRAY(Text())),
        func.to_jsonb(cast(rv, Text())),
    )
    at = bindparam("at", type_=UtcDateTime())
    log = _LOG_EVENTS.from_select(
        ["rv", "kind", "namespace", "name", "type", "object", "created_at"],
        select(rv, logged.c.kind, logged.c.namespace, logged.c.name, logged.c.type, shown, at),
    )
    return statement.add_cte(log.cte("logged"))


def _unnest(name: str, *columns: tuple[str, str, Any]) -> Any:
    """unnest(:array, ...) AS name(column, ...): one row per position of equally long array parameters."""
    arrays = [bindparam(parameter, type_=ARRAY(type_)) for _, parameter, type_ in columns]
    return (
        func.unnest(*arrays)
        .table_valued(*(column(column_name, type_) for column_name, _, type_ in columns), name=name)
        .render_derived()
    )


_RV_PATH = "{metadata,resourceVersion}"


def current_revision(session: Session | Connection) -> int:
    return int(session.execute(_current_statement()).scalar_one())


@cache
def _current_statement() -> Select[Any]:
    return select(REVISIONS.c.value).where(REVISIONS.c.id == 1)


def _logged(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A change log entry's columns but its version and time."""
    return {
        "kind": obj["kind"],
        "namespace": obj["metadata"].get("namespace") or "",
        "name": obj["metadata"]["name"],
        "type": event_type,
        "object": obj,
    }


def record_events(session: Session, events: list[tuple[int, str, dict[str, Any]]]) -> None:
    """The change log's entries: (resourceVersion, event type, object), in one statement."""
    at = utc_now()
    # Core, not the ORM: nothing reads an event back in the transaction that wrote it.
    session.connection().execute(
        _LOG_EVENTS,
        [{"rv": rv, **_logged(event_type, obj), "created_at": at} for rv, event_type, obj in events],
    )
    signal(session, EVENTS_CHANNEL)


def events_after(
    session: Session | Connection, kind: str | None, namespace: str | None, rv: int, limit: int = 500
) -> list[Row[Any]]:
    """Changes after `rv` in order, as (rv, kind, namespace, type, stored) rows, `stored` the object's JSON
    text, of one kind (None: every kind) and namespace (None: every one). The shared watch feed reads them
    on every commit anywhere: Core statements built once, not ORM queries, and no JSON decoded."""
    parameters = {"after": rv, "limit": limit, "kind": kind, "namespace": namespace}
    return list(session.execute(_events_statement(kind is not None, namespace is not None), parameters))


@cache
def _events_statement(by_kind: bool, by_namespace: bool) -> Select[Any]:
    stored = cast(EVENTS.c.object, Text).label("stored")
    query = select(EVENTS.c.rv, EVENTS.c.kind, EVENTS.c.namespace, EVENTS.c.type, stored).where(
        EVENTS.c.rv > bindparam("after")
    )
    if by_kind:
        query = query.where(EVENTS.c.kind == bindparam("kind"))
    if by_namespace:
        query = query.where(EVENTS.c.namespace == bindparam("namespace"))
    return query.order_by(EVENTS.c.rv).limit(bindparam("limit"))


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
