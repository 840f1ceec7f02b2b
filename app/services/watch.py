"""Watch streams: NDJSON events from the change log, resumable from any retained resourceVersion."""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Row
from starlette.concurrency import run_in_threadpool

from app.db import EVENTS_CHANNEL, Database
from app.errors import BadRequest, FieldError, Gone
from app.kinds import Kind
from app.repositories import revisions
from app.repositories.resources import ResourceRepository, to_object
from app.schemas.common import JsonObject
from app.services.selectors import Predicate, parse_selector
from app.services.shared_calls import Pending, shared_in_thread

BOOKMARK_SECONDS = 30.0
# SQLite has no NOTIFY: writes from another process are found by polling this often.
SQLITE_POLL_SECONDS = 1.0
BATCH = 500


@dataclass(frozen=True)
class Change:
    rv: int
    kind: str
    namespace: str
    type: str
    # The object's JSON as the change log holds it: sent as it is, decoded only when a watch has to look
    # inside (a label selector, a kind shown differently). Decoded, a full buffer took ~30 MiB.
    stored: str

    @classmethod
    def of(cls, row: Row[Any]) -> Change:
        """A change from a row of revisions.events_after."""
        return cls(row.rv, row.kind, row.namespace, row.type, row.stored)

    def object(self) -> JsonObject:
        decoded: JsonObject = orjson.loads(self.stored)
        return decoded


class ChangeFeed:
    """One reader of the change log per process for every watch in it: N watchers cost one query per change,
    not N. It keeps the newest changes of every kind in memory; a watch behind them (resuming from an old
    resourceVersion) reads the log itself.

    Revisions commit in order (a transaction takes them last and holds the counter's row lock to commit), so
    when the hub's counter moves, every change up to the newest committed one can be read, and none can appear
    later below it: the buffer is complete up to `high`."""

    CAPACITY = 4096

    def __init__(self, db: Database) -> None:
        self.db = db
        self._changes: deque[Change] = deque(maxlen=self.CAPACITY)
        self._low: int | None = None  # the buffer holds every change with low < rv <= high
        self._high = 0
        self._read_at: tuple[int, float] = (-1, 0.0)  # hub counter and time of the last read
        self._lock = threading.Lock()
        self._catching_up: Pending[None] = {}

    def after(self, kind: str, namespace: str | None, rv: int, limit: int) -> tuple[list[Change], int] | None:
        """Changes of `kind` (in `namespace`) after `rv`, at most `limit`, and the resourceVersion the caller
        has then seen; None when `rv` is older than the buffer."""
        with self._lock:
            self._refresh()
            return self._find(kind, namespace, rv, limit)

    def after_at_once(
        self, kind: str, namespace: str | None, rv: int, limit: int
    ) -> tuple[list[Change], int] | None:
        """`after`, when memory answers it without waiting (for the event loop); None when it would read the
        change log, or another thread is reading it."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            return self._find(kind, namespace, rv, limit) if self._fresh() else None
        finally:
            self._lock.release()

    async def caught_up(self) -> None:
        """The buffer brought up to date, in one thread hand-off for all the watches of this event loop that
        ask while it reads: a change wakes every watch at once, and 50 had each taken the thread pool (and
        waited there for this lock) for the one read."""
        if not self._fresh():
            await shared_in_thread(self._catching_up, None, self._catch_up)

    def _catch_up(self) -> None:
        with self._lock:
            self._refresh()

    def _find(self, kind: str, namespace: str | None, rv: int, limit: int) -> tuple[list[Change], int] | None:
        if self._low is None or rv < self._low:
            return None
        found: list[Change] = []
        for change in reversed(self._changes):  # from the newest: a watch that keeps up wants the last few
            if change.rv <= rv:
                break
            if change.kind == kind and namespace in (None, change.namespace):
                found.append(change)
        found.reverse()
        if len(found) > limit:
            return found[:limit], found[limit - 1].rv
        return found, max(rv, self._high)

    def _fresh(self) -> bool:
        # Another process's writes reach the hub through Postgres NOTIFY; on SQLite only by polling.
        return self.db.hub.counter(EVENTS_CHANNEL) == self._read_at[0] and (
            self.db.is_postgres or time.monotonic() - self._read_at[1] < SQLITE_POLL_SECONDS
        )

    def _refresh(self) -> None:
        """Read what the buffer lacks, if anything (the caller holds the lock)."""
        if self._fresh():
            return
        counter, now = self.db.hub.counter(EVENTS_CHANNEL), time.monotonic()
        with self.db.read_rows() as conn:
            rows = (
                []
                if self._low is None
                else revisions.events_after(conn, None, None, self._high, self.CAPACITY)
            )
            if not rows:  # first use, nothing new, or a database restored from before
                current = revisions.current_revision(conn)
                if self._low is None or current < self._high:
                    self._changes.clear()
                    self._low = self._high = current
                    rows = revisions.events_after(conn, None, None, current, self.CAPACITY)
            for row in rows:
                if len(self._changes) == self.CAPACITY:
                    self._low = self._changes[0].rv
                self._changes.append(Change.of(row))
                self._high = row.rv
        if len(rows) < self.CAPACITY:  # else more remain: read again next time
            self._read_at = (counter, now)


def event_line(event_type: str, obj: JsonObject | orjson.Fragment) -> bytes:
    """A watch event as sent: one JSON line."""
    return orjson.dumps({"type": event_type, "object": obj}) + b"\n"


_feeds: weakref.WeakKeyDictionary[Database, ChangeFeed] = weakref.WeakKeyDictionary()
_feeds_lock = threading.Lock()


def feed_for(db: Database) -> ChangeFeed:
    with _feeds_lock:
        feed = _feeds.get(db)
        if feed is None:
            feed = _feeds[db] = ChangeFeed(db)
        return feed


def parse_resource_version(text: str | None) -> int | None:
    """A resourceVersion query parameter: digits, or empty for none."""
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(
            "resourceVersion must be a number", [FieldError("resourceVersion", "must be a number")]
        )
    return int(text)


class Watch:
    """Prepared in the request (so bad input fails before the stream starts), then streamed."""

    def __init__(
        self,
        db: Database,
        kind: Kind[Any],
        namespace: str | None,
        resource_version: str | None,
        label_selector: str | None,
        bookmarks: bool,
        timeout_seconds: int | None = None,
    ) -> None:
        self.db = db
        self.timeout_seconds = timeout_seconds
        self.kind = kind
        self.namespace = namespace
        self.selector: Predicate | None = parse_selector(label_selector)
        self.bookmarks = bookmarks
        self.initial: list[JsonObject] = []
        self.rv = self._start(resource_version)
        # With a selector: whether the client last saw each object (by uid) inside it.
        self.inside: dict[str, bool] = {obj["metadata"]["uid"]: True for obj in self.initial}

    def _start(self, resource_version: str | None) -> int:
        rv = parse_resource_version(resource_version)
        if rv is not None:
            # A version not reached yet is waited for, as an etcd watch does: its events come as they happen.
            with self.db.read() as session:
                oldest = revisions.oldest_event(session)
            if oldest is not None and rv < oldest - 1:
                raise Gone(
                    f"resourceVersion {rv} is too old (oldest kept: {oldest}); list again and watch from "
                    "the list's resourceVersion"
                )
            return rv
        # No resourceVersion: the current objects as ADDED, then changes, from one consistent snapshot.
        with self.db.snapshot() as session:
            current = revisions.current_revision(session)
            rows, _ = ResourceRepository[Any](session, self.kind).read_page(
                self.namespace, selector=self.selector
            )
            self.initial = [to_object(self.kind, r) for r in rows]
        return current

    def _line(self, event_type: str, obj: JsonObject | str) -> bytes:
        """A change's line as this watch sends it. `obj` is an object, or its JSON as stored (put in as it is
        unless the kind shows objects differently)."""
        if isinstance(obj, str) and self.kind.present is None:
            return event_line(event_type, orjson.Fragment(obj))
        decoded: JsonObject = orjson.loads(obj) if isinstance(obj, str) else obj
        return event_line(event_type, self.kind.shown(decoded))

    def _fetch_at_once(self) -> tuple[int, int, list[tuple[str, str]]] | None:
        """`_fetch` from the shared feed's memory, without a thread (None when that would wait or read)."""
        if self.selector is not None:  # its view of a change may need the change log
            return None
        shared = feed_for(self.db).after_at_once(self.kind.kind, self.namespace, self.rv, BATCH)
        if shared is None:
            return None
        changes, reached = shared
        return len(changes), reached, [(c.type, c.stored) for c in changes]

    def _fetch(self) -> tuple[int, int, list[tuple[str, str]]]:
        """The next events after self.rv: how many, the resourceVersion they reach, and what this client
        sees of them."""
        shared = feed_for(self.db).after(self.kind.kind, self.namespace, self.rv, BATCH)
        if shared is not None:
            changes, reached = shared
        else:
            with self.db.read_rows() as conn:
                rows = revisions.events_after(conn, self.kind.kind, self.namespace, self.rv, BATCH)
            changes = [Change.of(row) for row in rows]
            reached = rows[-1].rv if rows else self.rv
        seen = [(t, c.stored) for c in changes if (t := self._as_seen(c))]
        return len(changes), reached, seen

    def _as_seen(self, change: Change) -> str | None:
        """Kubernetes' rule for a label-filtered watch: an object that comes to match is ADDED, one that stops
        matching is DELETED, others are not shown. Whether it matched before is what this stream showed, or
        else its previous retained event (unknown when there is none: then a change shows as MODIFIED)."""
        rv, event_type = change.rv, change.type
        if self.selector is None:
            return event_type
        meta = change.object()["metadata"]
        inside = self.selector(meta.get("labels") or {})
        uid = meta.get("uid", "")
        before = self.inside.get(uid)
        if before is None and event_type != "ADDED":
            with self.db.read() as session:
                previous = revisions.event_before(
                    session, self.kind.kind, meta.get("namespace") or "", meta["name"], rv
                )
            if previous is not None and previous.object["metadata"].get("uid") == uid:
                before = previous.type != "DELETED" and self.selector(
                    previous.object["metadata"].get("labels") or {}
                )
        self.inside[uid] = inside and event_type != "DELETED"
        if event_type == "DELETED":
            return event_type if inside or before else None
        if inside:
            return "ADDED" if event_type == "ADDED" or before is False else "MODIFIED"
        return "DELETED" if before else None

    async def stream(self) -> AsyncIterator[bytes]:
        for obj in self.initial:
            yield self._line("ADDED", obj)
        self.initial = []
        hub = self.db.hub
        poll = BOOKMARK_SECONDS if self.db.is_postgres else SQLITE_POLL_SECONDS
        idle = 0.0
        deadline = None if self.timeout_seconds is None else time.monotonic() + self.timeout_seconds
        while True:
            seen = hub.counter(EVENTS_CHANNEL)
            at_once = self._fetch_at_once()
            if at_once is None and self.selector is None:
                await feed_for(self.db).caught_up()
                at_once = self._fetch_at_once()
            fetched, self.rv, events = (
                at_once if at_once is not None else await run_in_threadpool(self._fetch)
            )
            for event_type, stored in events:
                yield self._line(event_type, stored)
            if fetched:
                idle = 0.0
                if fetched == BATCH:
                    continue
            wait = poll
            if deadline is not None:
                wait = min(poll, deadline - time.monotonic())
                if wait <= 0:
                    return  # the client's timeoutSeconds: the stream ends cleanly, as Kubernetes' does
            if await hub.wait_async(EVENTS_CHANNEL, seen, wait) != seen:
                continue
            idle += wait
            if self.bookmarks and idle >= BOOKMARK_SECONDS:
                idle = 0.0
                bookmark = {
                    "kind": self.kind.kind,
                    "apiVersion": self.kind.api_version,
                    "metadata": {"resourceVersion": str(self.rv)},
                }
                yield event_line("BOOKMARK", bookmark)
