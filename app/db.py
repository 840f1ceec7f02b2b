"""Engine and session factories, and the change signals that wake watches and workers.

The request or the reconcile pass owns the transaction: repositories only add and flush. A write marks the
session with the channels it touched (`signal(session, channel)`); after the commit the in-process hub wakes
local waiters, and on Postgres a NOTIFY issued inside the transaction reaches other processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "corral_events"
WORK_CHANNEL = "corral_work"
OPERATIONS_CHANNEL = "corral_operations"  # a guest operation finished
TOKENS_CHANNEL = "corral_tokens"  # a token was created, revoked or rotated: drop cached principals
CHANNELS = (EVENTS_CHANNEL, WORK_CHANNEL, OPERATIONS_CHANNEL, TOKENS_CHANNEL)
API_CHANNELS = (EVENTS_CHANNEL, OPERATIONS_CHANNEL, TOKENS_CHANNEL)  # what requests and watches wait on
WORKER_CHANNELS = (WORK_CHANNEL,)
# On Postgres, inserts into the change log and the work queue send these by trigger (migration 0015).
NOTIFIED_BY_TRIGGER = frozenset({EVENTS_CHANNEL, WORK_CHANNEL})
READ_ONLY = "corral_read_only"
# Postgres reads run at READ COMMITTED, where every statement takes its own snapshot even inside a
# transaction: autocommit gives a read the same view, without the round trips of BEGIN and COMMIT.
AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}
READING = {READ_ONLY: True, **AUTOCOMMIT}


class Hub:
    """Per-process wake-ups: a counter per channel plus waiters from threads and event loops."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counters: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        # An event loop's waiters are futures of that loop, resolved from the notifying thread in one hop.
        self._async_waiters: dict[str, dict[asyncio.Future[None], asyncio.AbstractEventLoop]] = {
            c: {} for c in CHANNELS
        }

    def counter(self, channel: str) -> int:
        with self._cond:
            return self._counters[channel]

    def notify(self, channel: str) -> None:
        with self._cond:
            self._counters[channel] += 1
            waiters, self._async_waiters[channel] = self._async_waiters[channel], {}
            self._cond.notify_all()
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for future, loop in waiters.items():
            by_loop.setdefault(loop, []).append(future)
        # One hand-over per loop, not one per waiter: 50 watches woken by a change were 50 wake-ups of the
        # loop's self-pipe, each written from this thread.
        for loop, futures in by_loop.items():
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, futures)

    def wait(self, channel: str, seen: int, timeout: float) -> int:
        """Block until the channel's counter passes `seen` or the timeout ends; returns the counter."""
        with self._cond:
            self._cond.wait_for(lambda: self._counters[channel] != seen, timeout=timeout)
            return self._counters[channel]

    async def wait_async(self, channel: str, seen: int, timeout: float) -> int:
        """`wait` for an event loop. A bare future and the loop's timer: asyncio.wait_for made a task and a
        second future per call, for every watch on every change."""
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._counters[channel] != seen:
                return self._counters[channel]
            self._async_waiters[channel][woken] = loop
        timer = loop.call_later(timeout, _resolve, (woken,))
        try:
            await woken
        finally:
            timer.cancel()
            with self._cond:  # gone unwoken (timed out, or its request ended): it must not pile up
                self._async_waiters[channel].pop(woken, None)
        return self.counter(channel)


def _resolve(futures: Iterable[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # a timed-out or cancelled wait
            future.set_result(None)


def signal(session: Session, channel: str) -> None:
    """Record that this transaction changed something `channel` listeners care about."""
    signals: set[str] = session.info.setdefault("signals", set())
    if channel in signals:
        return  # one NOTIFY per channel and transaction (Postgres folds duplicates anyway)
    signals.add(channel)
    if channel not in NOTIFIED_BY_TRIGGER and session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:c, '')"), {"c": channel})


# Postgres connections a process keeps open; as many again are opened for a burst and closed after it.
POOL_SIZE = 20


class Database:
    def __init__(self, url: str, *, echo: bool = False, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.hub = Hub()
        self.pool_size = pool_size
        # Postgres sessions carry it as application_name, which the notify triggers send as the payload.
        self.identity = f"corral:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.engine = make_engine(url, echo=echo, application_name=self.identity, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self.sessions, "after_commit", self._after_commit)
        event.listen(self.sessions, "after_rollback", self._after_rollback)
        event.listen(self.sessions, "before_flush", _refuse_writes_in_reads)
        self._listener: threading.Thread | None = None
        self._channels: frozenset[str] = frozenset()  # what the listener is asked to relay
        self._stop = threading.Event()

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _after_commit(self, session: Session) -> None:
        for channel in session.info.pop("signals", ()):
            self.hub.notify(channel)

    @staticmethod
    def _after_rollback(session: Session) -> None:
        session.info.pop("signals", None)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One short transaction: commit on success, roll back on error."""
        with self.sessions.begin() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Reads only: on SQLite a transaction that takes no write lock, so it never waits for writers; on
        Postgres each statement on its own (see READING), without the two round trips of BEGIN and COMMIT.
        A write in it is an error (nothing is flushed)."""
        with self.sessions.begin() as session:
            session.info[READ_ONLY] = True
            session.connection(execution_options=self._reading)
            yield session

    @contextmanager
    def statements(self) -> Iterator[Session]:
        """Writes each complete on its own, committed as they run on Postgres (one round trip each, no
        BEGIN and COMMIT); a transaction on SQLite. For work that no crash between two statements can leave
        half done, such as ending a work queue lease and taking the next."""
        with self.sessions.begin() as session:
            if self.is_postgres:
                session.connection(execution_options=AUTOCOMMIT)
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """Reads that must agree with each other (a watch's current objects and the revision they are at):
        one snapshot for all of them, and never a wait for writers. Postgres runs them at REPEATABLE READ;
        SQLite in a deferred BEGIN, whose first read fixes the snapshot. Nothing is kept: it rolls back."""
        options = {"isolation_level": "REPEATABLE READ"} if self.is_postgres else {READ_ONLY: True}
        with self.engine.connect() as conn:
            conn.execution_options(**options)
            with Session(bind=conn) as session:
                yield session
            conn.rollback()

    @contextmanager
    def read_rows(self) -> Iterator[Connection]:
        """`read` for Core statements, without an ORM session around the connection (the watch feed reads on
        every commit anywhere, and the session's bookkeeping cost as much as the read)."""
        with self.engine.connect() as conn:
            conn.execution_options(**self._reading)
            with conn.begin():
                yield conn

    @property
    def _reading(self) -> dict[str, Any]:
        return READING if self.is_postgres else {READ_ONLY: True}

    def start_listener(self, channels: Iterable[str]) -> None:
        """Relay Postgres NOTIFY on these channels into the hub, so other processes' writes wake this one's
        waiters. Only the channels a process waits on: every notification costs its listener a wake-up (an
        API process has no use for the work queue's, a worker none for the change log's). Called again
        (`corral serve` runs both), the listener takes the new channels on within a second."""
        if not self.is_postgres:
            return
        self._channels |= frozenset(channels)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen_forever, name="pg-listen", daemon=True)
            self._listener.start()

    def _listen_forever(self) -> None:
        import psycopg

        dsn = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    listened: frozenset[str] = frozenset()
                    while not self._stop.is_set():
                        if added := self._channels - listened:
                            for channel in sorted(added):
                                conn.execute(f"LISTEN {channel}")
                            listened |= added
                            # Notifications before the LISTEN (or lost with a connection) are not sent:
                            # wake their waiters once.
                            for channel in added:
                                self.hub.notify(channel)
                        for note in conn.notifies(timeout=1.0):
                            if note.payload != self.identity:  # this process's commits woke it already
                                self.hub.notify(note.channel)
            except Exception:
                log.warning("Postgres LISTEN connection lost; reconnecting", exc_info=True)
                self._stop.wait(1.0)

    def dispose(self) -> None:
        self._stop.set()
        self.engine.dispose()


def _dump_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# Every object is JSON in the database: orjson reads and writes it several times faster than the stdlib.
JSON_CODEC: dict[str, Any] = {"json_serializer": _dump_json, "json_deserializer": orjson.loads}


SQLITE_WAIT = 30.0  # seconds a writer waits for the write lock before "database is locked"
_WRITERS: dict[str, threading.Lock] = {}  # per database file: this process's writers queue on it


class WriterConnection(sqlite3.Connection):
    """A SQLite connection whose write transactions first queue on their process's lock for the file.
    SQLite's own busy handler polls, sleeping up to 100 ms between tries: under a burst the write lock sat
    free while its waiters slept, and a newcomer could overtake a writer that had waited for a second. A
    thread blocked on the lock is woken as soon as the holder commits; other processes (the CLI) still meet
    SQLite's busy handler."""

    holding: threading.Lock | None = None

    def queue_for(self, writer: threading.Lock) -> bool:
        """Wait for this process's turn to write; False when the wait ran out."""
        if self.holding is None:  # else it is its turn still (a transaction ended by SQL, not commit())
            if not writer.acquire(timeout=SQLITE_WAIT):
                return False
            self.holding = writer
        return True

    def leave_queue(self) -> None:
        holding, self.holding = self.holding, None
        if holding is not None:
            holding.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.leave_queue()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.leave_queue()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.leave_queue()


def make_engine(
    url: str, *, echo: bool = False, application_name: str = "corral", pool_size: int = POOL_SIZE
) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = _WRITERS.setdefault(path, threading.Lock())
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": SQLITE_WAIT, "factory": WriterConnection},
            **JSON_CODEC,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling defers BEGIN; take it over so BEGIN IMMEDIATE works.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
                return
            dbapi_conn = conn.connection.dbapi_connection
            assert isinstance(dbapi_conn, WriterConnection)
            if not dbapi_conn.queue_for(writer):
                raise OperationalError(
                    "BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked")
                )
            # Writers take the lock at BEGIN: SQLite then serializes them instead of failing upgrades. A
            # failed BEGIN gives the turn back with the rollback of the connection's return to the pool.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    engine = create_engine(
        url,
        echo=echo,
        isolation_level="READ COMMITTED",  # what READING relies on, whatever the server's default
        # Connections beyond pool_size are closed when handed back: a burst of 16 clients over 10 kept
        # connections opened and closed ~230 Postgres backends per 2,000 requests (a fork each).
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"application_name": application_name},
        **JSON_CODEC,
    )
    event.listen(engine, "checkout", _discard_if_dead)
    return engine


def _refuse_writes_in_reads(session: Session, _context: Any, _instances: Any) -> None:
    """A read runs statement by statement on Postgres: a write there would commit piece by piece."""
    if session.info.get(READ_ONLY):
        raise RuntimeError("a write in a read-only session (Database.read)")


def _discard_if_dead(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """The pool's liveness check without a round trip (pre-ping costs one per transaction): an idle pooled
    connection has nothing to read, so a readable socket means the server closed it or is about to (a
    restart, an administrator's termination). SQLAlchemy then discards it and checks out another."""
    if dbapi_conn.closed or dbapi_conn.broken:
        raise DisconnectionError("the connection is closed")
    readable, _, _ = select.select([dbapi_conn.pgconn.socket], [], [], 0)
    if readable:
        raise DisconnectionError("the server closed the connection")


# SQLSTATEs of failures that say nothing about the request: a retry (now, or after a moment) succeeds.
CONTENTION = frozenset({"40001", "40P01", "55P03"})  # serialization failure, deadlock, lock not available
OUTAGE_CLASSES = ("08", "57P", "53")  # connection exceptions, shutdown/starting up, insufficient resources


def transient_failure(exc: BaseException) -> str | None:
    """'contention' (retry at once), 'outage' (the database is away: retry later) or None (a real error)."""
    if not isinstance(exc, DBAPIError):
        return None
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if code in CONTENTION or "database is locked" in str(exc.orig):
        return "contention"
    if exc.connection_invalidated or (code is not None and code.startswith(OUTAGE_CLASSES)):
        return "outage"
    if code is None and isinstance(exc, OperationalError):  # no answer at all: refused, reset, timed out
        return "outage"
    return None
