"""Database.read and Database.statements: on Postgres each statement runs on its own (no BEGIN and COMMIT
round trips, no transaction left open between statements); a write inside a read is refused and nothing is
stored, on every backend."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from app.db import Database
from app.models import InstanceRow
from tests.repositories.test_revisions import new_instance


def backend_state(db: Database, pid: int) -> str:
    with db.transaction() as session:
        query = text("SELECT state FROM pg_stat_activity WHERE pid = :pid")
        return str(session.execute(query, {"pid": pid}).scalar_one())


def test_a_postgres_read_leaves_no_transaction_open(pg_db: Database) -> None:
    with pg_db.read() as session:
        reader = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert backend_state(pg_db, reader) == "idle"
    with pg_db.transaction() as session:  # the same check on a transaction: it can tell
        writer = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert backend_state(pg_db, writer) == "idle in transaction"


def test_a_write_in_a_read_is_refused_and_nothing_is_stored(db: Database) -> None:
    with pytest.raises(RuntimeError, match="read-only session"), db.read() as session:
        session.add(new_instance("written-in-a-read"))
        session.flush()
    with db.read() as session:
        stored = session.scalars(select(InstanceRow).where(InstanceRow.name == "written-in-a-read"))
        assert stored.first() is None


def test_postgres_statements_commit_as_they_run(pg_db: Database) -> None:
    with pg_db.statements() as session:
        session.execute(text("UPDATE revisions SET value = value + 1"))
        writer = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert backend_state(pg_db, writer) == "idle"
        with pg_db.transaction() as other:  # would wait for the row lock, were the UPDATE not committed
            other.execute(text("SET LOCAL lock_timeout = '1s'"))
            other.execute(text("UPDATE revisions SET value = value - 1"))
