"""SQLite writers of one process queue on a lock per database file, taken at BEGIN and given back when the
transaction ends however it ends; reads never take it. Writers of other processes still meet SQLite's own
busy handler."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app import db as db_module
from app.db import Database, transient_failure

BUMP = text("UPDATE revisions SET value = value + 1")
VALUE = text("SELECT value FROM revisions")


@pytest.fixture
def lite(sqlite_template: Path, tmp_path: Path) -> Iterator[tuple[Database, threading.Lock]]:
    path = tmp_path / "corral.db"
    shutil.copy(sqlite_template, path)
    database = Database(f"sqlite:///{path}")
    yield database, db_module._WRITERS[str(path)]
    database.dispose()


def test_a_write_holds_the_process_turn_until_it_ends_and_a_read_never_takes_it(
    lite: tuple[Database, threading.Lock],
) -> None:
    db, writer = lite
    with db.transaction() as session:
        session.execute(BUMP)
        assert writer.locked()
    assert not writer.locked()
    with pytest.raises(ZeroDivisionError), db.transaction() as session:
        session.execute(BUMP)
        _ = 1 / 0
    assert not writer.locked()  # rolled back: given back too
    with db.read() as session:
        session.execute(VALUE)
        assert not writer.locked()
    with db.snapshot() as session:
        session.execute(VALUE)
        assert not writer.locked()
    with db.read() as session:
        assert session.execute(VALUE).scalar_one() == 1  # the rolled-back bump is not there


def test_a_waiting_writer_goes_on_when_the_one_before_it_commits_and_sees_its_write(
    lite: tuple[Database, threading.Lock],
) -> None:
    db, _ = lite
    first_began, first_may_commit = threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with db.transaction() as session:
            session.execute(BUMP)
            first_began.set()
            first_may_commit.wait(10)

    def second() -> None:
        with db.transaction() as session:
            seen.append(session.execute(VALUE).scalar_one())
            session.execute(BUMP)

    one = threading.Thread(target=first)
    one.start()
    assert first_began.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)
    assert two.is_alive() and not seen  # queued behind the first writer
    first_may_commit.set()
    one.join(10)
    two.join(10)
    assert seen == [1]
    with db.read() as session:
        assert session.execute(VALUE).scalar_one() == 2


def test_a_writer_whose_wait_runs_out_gets_a_retryable_locked_error_and_leaves_the_queue(
    lite: tuple[Database, threading.Lock], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, writer = lite
    monkeypatch.setattr(db_module, "SQLITE_WAIT", 0.2)
    with db.transaction() as holder:  # this process's turn held by another transaction
        holder.execute(BUMP)
        failed: list[BaseException] = []

        def late_writer() -> None:
            try:
                with db.transaction() as session:
                    session.execute(BUMP)
            except OperationalError as exc:
                failed.append(exc)

        late = threading.Thread(target=late_writer)
        late.start()
        late.join(10)
        assert len(failed) == 1 and transient_failure(failed[0]) == "contention"
    assert not writer.locked()
    with db.transaction() as session:  # and the queue moves on
        session.execute(BUMP)
    with db.read() as session:
        assert session.execute(VALUE).scalar_one() == 2


def test_a_writer_of_another_process_is_waited_for_by_sqlite_and_a_failed_begin_gives_the_turn_back(
    lite: tuple[Database, threading.Lock],
) -> None:
    db, writer = lite
    path = str(db.engine.url.database)
    other = sqlite3.connect(path, isolation_level=None)  # as the CLI would, from its own process
    other.execute("BEGIN IMMEDIATE")
    other.execute("UPDATE revisions SET value = value + 10")
    with pytest.MonkeyPatch.context() as patch:  # its connections wait briefly in SQLite's busy handler
        patch.setattr(db_module, "SQLITE_WAIT", 0.2)
        fresh = Database(db.url)
    try:
        with pytest.raises(OperationalError, match="database is locked"), fresh.transaction() as session:
            session.execute(BUMP)
        assert not writer.locked()
        other.execute("COMMIT")
        with fresh.transaction() as session:
            session.execute(BUMP)
        with fresh.read() as session:
            assert session.execute(VALUE).scalar_one() == 11
    finally:
        other.close()
        fresh.dispose()
