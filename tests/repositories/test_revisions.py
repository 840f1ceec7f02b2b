"""resourceVersions are taken when a transaction is about to commit: one consecutive block per transaction,
each row stamped with its change's version, the change log in the order the changes were made."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from app.db import Database, transient_failure
from app.kinds import INSTANCES
from app.models import EventRow, InstanceRow, RevisionRow
from app.repositories.resources import ResourceRepository
from app.repositories.revisions import current_revision


def new_instance(name: str) -> InstanceRow:
    return InstanceRow(
        uid=str(uuid.uuid4()),
        namespace="default",
        name=name,
        labels={},
        annotations={},
        spec={},
        status={},
        generation=1,
    )


def events_after(db: Database, rv: int) -> list[tuple[int, str, str, str]]:
    with db.read() as session:
        rows = session.scalars(select(EventRow).where(EventRow.rv > rv).order_by(EventRow.rv))
        return [(e.rv, e.type, e.name, e.object["metadata"]["resourceVersion"]) for e in rows]


def test_one_block_per_transaction_in_the_order_of_the_changes(db: Database) -> None:
    with db.transaction() as session:
        repo = ResourceRepository[InstanceRow](session, INSTANCES)
        repo.add(new_instance("rv-a"))
        repo.add(new_instance("rv-b"))
    with db.read() as session:
        before = current_revision(session)
    with db.transaction() as session:
        repo = ResourceRepository[InstanceRow](session, INSTANCES)
        a, b = repo.get("default", "rv-a"), repo.get("default", "rv-b")
        assert a is not None and b is not None
        a.status = {"phase": "Scheduling"}
        repo.touch(a)
        repo.touch(a)  # one event shows the row as it commits
        repo.add(new_instance("rv-new"))
        repo.rename(b, "rv-c")
        shown: dict[str, Any] = repo.settled(a)
    events = events_after(db, before)
    assert [(kind, name) for _, kind, name, _ in events] == [
        ("MODIFIED", "rv-a"),
        ("ADDED", "rv-new"),
        ("DELETED", "rv-b"),
        ("ADDED", "rv-c"),
    ]
    assert [rv for rv, *_ in events] == list(range(before + 1, before + 5))
    assert all(str(rv) == logged for rv, _, _, logged in events)  # the log's objects carry their version
    with db.read() as session:
        stored = {r.name: r.resource_version for r in session.scalars(select(InstanceRow))}
        assert current_revision(session) == before + 4
    assert (stored["rv-a"], stored["rv-new"], stored["rv-c"]) == (before + 1, before + 2, before + 4)
    assert shown["metadata"]["resourceVersion"] == str(before + 1)  # a request shows what commits


def test_an_object_added_and_renamed_or_removed_in_one_transaction_is_logged_as_it_commits(
    db: Database,
) -> None:
    with db.read() as session:
        before = current_revision(session)
    with db.transaction() as session:
        repo = ResourceRepository[InstanceRow](session, INSTANCES)
        repo.rename(repo.add(new_instance("rv-first")), "rv-second")  # nobody saw the first name
        repo.remove(repo.add(new_instance("rv-fleeting")))
    assert [(rv, kind, name) for rv, kind, name, _ in events_after(db, before)] == [
        (before + 1, "ADDED", "rv-second")
    ]


def abandon(db: Database, name: str) -> None:
    with db.transaction() as session:
        ResourceRepository[InstanceRow](session, INSTANCES).add(new_instance(name))
        raise RuntimeError("abandon")


def test_a_rolled_back_transaction_takes_no_version(db: Database) -> None:
    with db.read() as session:
        before = current_revision(session)
    with pytest.raises(RuntimeError):
        abandon(db, "rv-gone")
    with db.transaction() as session:  # nothing of the abandoned one is carried into the next
        ResourceRepository[InstanceRow](session, INSTANCES).add(new_instance("rv-kept"))
    assert [(rv, name) for rv, _, name, _ in events_after(db, before)] == [(before + 1, "rv-kept")]


def test_a_stamp_committed_with_its_statement_reports_contention_as_sqlalchemy_does(pg: Database) -> None:
    """On Postgres the stamp and the COMMIT go to the server together, outside SQLAlchemy's execute: a lock
    wait that times out still arrives as a DBAPIError with its SQLSTATE, which the API retries."""
    db = pg
    holder = db.engine.connect()
    holder.execute(select(RevisionRow).where(RevisionRow.id == 1).with_for_update())
    try:
        with pytest.raises(DBAPIError) as caught, db.transaction() as session:
            session.execute(text("SET LOCAL lock_timeout = '50ms'"))
            ResourceRepository[InstanceRow](session, INSTANCES).add(new_instance("rv-contended"))
    finally:
        holder.rollback()
        holder.close()
    assert transient_failure(caught.value) == "contention"
    with db.read() as session:
        assert ResourceRepository[InstanceRow](session, INSTANCES).get("default", "rv-contended") is None
