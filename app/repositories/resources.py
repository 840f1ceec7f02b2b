"""Generic storage of resources: every kind's table has the same columns (app.models.base.ResourceRow)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, cast

from sqlalchemy import BindParameter, Row, Select, Table, bindparam, event, func, select, tuple_
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app.clock import rfc3339, utc_now
from app.kinds import Kind, RowT
from app.models import ResourceRow
from app.repositories import workqueue
from app.repositories.revisions import StampedRows, write_revisions

Selector = Callable[[dict[str, str]], bool]
UNSTAMPED = 0  # a new row's resourceVersion until its transaction stamps it


# What an object shows (to_object), not a kind's own bookkeeping (progress, intent, ...).
SHOWN_COLUMNS = (
    "uid",
    "namespace",
    "name",
    "labels",
    "annotations",
    "spec",
    "status",
    "generation",
    "resource_version",
    "created_at",
    "deleted_at",
)

# What identifies a version of an object, and its labels for selectors.
KEY_COLUMNS = ("uid", "namespace", "name", "labels", "resource_version")


def to_object(info: Kind[Any], row: ResourceRow | Row[Any]) -> dict[str, Any]:
    """The row as an API object (Kubernetes shape)."""
    meta: dict[str, Any] = {
        "name": row.name,
        "uid": row.uid,
        "labels": dict(row.labels or {}),
        "annotations": dict(row.annotations or {}),
        "resourceVersion": str(row.resource_version),
        "generation": row.generation,
        "creationTimestamp": rfc3339(row.created_at),
    }
    if info.namespaced:
        meta["namespace"] = row.namespace
    if row.deleted_at is not None:
        meta["deletionTimestamp"] = rfc3339(row.deleted_at)
    return {
        "apiVersion": info.api_version,
        "kind": info.kind,
        "metadata": meta,
        "spec": row.spec,
        "status": row.status,
    }


@cache
def _get_statement(info: Kind[Any], for_update: bool) -> Select[Any]:
    """Built once: the hottest read, whose construction and cache key cost more than its execution."""
    row = info.row
    query = select(row).where(row.namespace == bindparam("namespace"), row.name == bindparam("name"))
    return query.with_for_update() if for_update else query


@cache
def _lock_all_statement(info: Kind[Any]) -> Select[Any]:
    """Built once: every placement locks the nodes."""
    row = info.row
    return select(row).order_by(row.namespace, row.name).with_for_update()


@cache
def _keys_of_statement(info: Kind[Any]) -> Select[Any]:
    table = cast(Table, info.row.__table__)
    uids: BindParameter[list[str]] = bindparam("uids", expanding=True)
    return select(table.c.namespace, table.c.name).where(table.c.uid.in_(uids)).order_by(table.c.id)


class ResourceRepository(Generic[RowT]):
    def __init__(self, session: Session, info: Kind[RowT]) -> None:
        self.session = session
        self.info = info

    def get(self, namespace: str, name: str, *, for_update: bool = False) -> RowT | None:
        query = _get_statement(self.info, for_update)
        return self.session.scalars(query, {"namespace": namespace, "name": name}).one_or_none()

    def keys_of(self, uids: Collection[str]) -> list[tuple[str, str]]:
        """(namespace, name) of the objects with these uids that exist, without loading them (libvirt
        events ask, a burst's in one statement: a Core statement built once, run on the connection)."""
        if not uids:
            return []
        found = self.session.connection().execute(_keys_of_statement(self.info), {"uids": list(uids)})
        return [(row.namespace, row.name) for row in found]

    def get_by_uid(self, uid: str) -> RowT | None:
        return self.session.scalars(select(self.info.row).where(self.info.row.uid == uid)).one_or_none()

    def page(
        self,
        namespace: str | None,
        *,
        selector: Selector | None = None,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        **column_filters: Any,
    ) -> tuple[list[RowT], bool]:
        """Rows ordered by (namespace, name) after the `after` key; returns (rows, more_remain)."""
        return self._paged(None, namespace, selector, after, limit, column_filters)

    def read_page(
        self,
        namespace: str | None,
        *,
        selector: Selector | None = None,
        after: tuple[str, str] | None = None,
        limit: int | None = None,
        columns: tuple[str, ...] = SHOWN_COLUMNS,
    ) -> tuple[list[Row[Any]], bool]:
        """page() as plain rows of these columns, for reads that only show them: no ORM objects to build
        and track, which is most of a list's cost."""
        return self._paged(columns, namespace, selector, after, limit, {})

    def read_by_uid(self, uids: list[str]) -> list[Row[Any]]:
        """Plain rows (SHOWN_COLUMNS) of these objects, those that still exist."""
        row = self.info.row
        query = select(*(getattr(row, c) for c in SHOWN_COLUMNS)).where(row.uid.in_(uids))
        return list(self.session.connection().execute(query))

    def _paged(
        self,
        plain: tuple[str, ...] | None,
        namespace: str | None,
        selector: Selector | None,
        after: tuple[str, str] | None,
        limit: int | None,
        column_filters: dict[str, Any],
    ) -> tuple[list[Any], bool]:
        row = self.info.row
        query = select(*(getattr(row, c) for c in plain)) if plain is not None else select(row)
        if namespace is not None:
            query = query.where(row.namespace == namespace)
        for column, value in column_filters.items():
            query = query.where(getattr(row, column) == value)
        if after is not None:
            query = query.where(tuple_(row.namespace, row.name) > tuple_(*after))
        query = query.order_by(row.namespace, row.name)
        found: list[Any] = []
        # One row past the page tells whether more remain; a selector may drop rows, so it reads in batches.
        batch = (limit + 1 if limit is not None else 500) if selector is None else max(limit or 500, 100)
        while True:
            batch_query = query.limit(batch)
            if plain is not None:  # Core, past the ORM's result machinery
                rows: list[Any] = list(self.session.connection().execute(batch_query))
            else:
                rows = list(self.session.scalars(batch_query))
            for item in rows:
                if selector is None or selector(item.labels or {}):
                    if limit is not None and len(found) == limit:
                        return found, True
                    found.append(item)
            if len(rows) < batch:
                return found, False
            last = rows[-1]
            query = query.where(tuple_(row.namespace, row.name) > tuple_(last.namespace, last.name))

    def lock_all(self) -> list[RowT]:
        """Every row, locked for this transaction, in name order (a fixed order cannot deadlock)."""
        return list(self.session.scalars(_lock_all_statement(self.info)))

    def count(self) -> int:
        return int(self.session.execute(select(func.count()).select_from(self.info.row)).scalar_one())

    def statuses(self) -> list[dict[str, Any]]:
        return list(self.session.scalars(select(self.info.row.status)))

    def all_keys(self) -> list[tuple[str, str]]:
        row = self.info.row
        return [(ns, name) for ns, name in self.session.execute(select(row.namespace, row.name))]

    def add(self, item: RowT) -> RowT:
        item.resource_version = UNSTAMPED
        item.created_at = utc_now()
        self.session.add(item)
        self.session.flush()
        _pending(self.session).add(self.info, "ADDED", item)
        return item

    def touch(self, item: RowT) -> RowT:
        """Record a change made to `item`: it takes a new resourceVersion, and watchers get a MODIFIED event,
        when the transaction commits (or `stamp` is called)."""
        _pending(self.session).add(self.info, "MODIFIED", item)
        return item

    def rename(self, item: RowT, new_name: str) -> None:
        """A new name for the same object (a claimed pool member): watchers see the old name DELETED and the
        new one ADDED, each at its own resourceVersion."""
        self.remove_event(item)
        item.name = new_name
        _pending(self.session).add(self.info, "ADDED", item)

    def remove_event(self, item: RowT) -> None:
        _pending(self.session).add(self.info, "DELETED", item, to_object(self.info, item))

    def settled(self, item: RowT, *, commit: bool = True) -> dict[str, Any]:
        """The item as an API object, after the transaction's changes took their resourceVersions (a write
        shows what it wrote with the version it commits as). On Postgres they also commit now, so the
        revision lock is not held while the answer is built and sent; the session may still read, and
        what it writes after goes in a new transaction. A caller whose later writes must commit with
        these passes commit=False."""
        stamp(self.session, commit=commit)
        return to_object(self.info, item)

    def remove(self, item: RowT) -> None:
        self.remove_event(item)
        self.session.delete(item)
        self.session.flush()


@dataclass
class _Change:
    info: Kind[Any]
    event_type: str
    row: Any
    deleted: dict[str, Any] | None  # DELETED: the object as it was; otherwise shown as it is when stamped


@dataclass
class PendingChanges:
    """A transaction's writes that still need their resourceVersion and watch event (session.info)."""

    changes: list[_Change] = field(default_factory=list)

    def add(self, info: Kind[Any], event_type: str, row: Any, deleted: dict[str, Any] | None = None) -> None:
        mine = [c for c in self.changes if c.row is row]
        if event_type == "MODIFIED" and any(c.event_type != "DELETED" for c in mine):
            return  # its pending event shows the row as it is at commit
        if event_type == "DELETED":
            # Its pending MODIFIED would show what comes after (a rename's new name): the DELETED shows the
            # last state. Added in this same transaction: nobody ever saw it, so neither event is logged.
            self.changes = [c for c in self.changes if c.row is not row]
            if any(c.event_type == "ADDED" for c in mine):
                return
        self.changes.append(_Change(info, event_type, row, deleted))


PENDING = "corral.changes"


def _pending(session: Session) -> PendingChanges:
    pending: PendingChanges | None = session.info.get(PENDING)
    if pending is None:
        pending = session.info[PENDING] = PendingChanges()
    return pending


def stamp(session: Session, *, commit: bool = False) -> None:
    """Give the transaction's changes their resourceVersions and watch events, now: everything else is
    written first (rows, then work queue entries), then the revision counter's row lock is taken and held to
    commit, so revisions commit in order while the lock is held for a few statements only. Runs before
    every commit; a request calls it before it shows what it wrote. With `commit`, Postgres commits with
    it; otherwise nothing versioned may be written after it but further stamps."""
    session.flush()
    pending: PendingChanges | None = session.info.pop(PENDING, None)
    if pending is None or not pending.changes:
        workqueue.write_enqueued(session)
        return
    changes = pending.changes
    # Shown before the lock is taken: only the resourceVersion is filled in under it.
    logged = [
        (ordinal, c.event_type, c.deleted if c.deleted is not None else to_object(c.info, c.row))
        for ordinal, c in enumerate(changes, start=1)
    ]
    rows: StampedRows = {}
    for ordinal, change in enumerate(changes, start=1):
        if change.deleted is None:
            rows.setdefault(cast(Table, change.info.row.__table__), []).append((change.row.id, ordinal))
    queued = workqueue.take_enqueued(session)
    dialect = session.get_bind().dialect.name
    first = (workqueue.enqueue_statement(dialect), queued) if queued else None
    base = write_revisions(session, rows, logged, commit=commit, first=first)
    for (ordinal, _, obj), change in zip(logged, changes, strict=True):
        obj["metadata"]["resourceVersion"] = str(base + ordinal)
        if change.deleted is None:
            set_committed_value(change.row, "resource_version", base + ordinal)


# Ahead of workqueue.write_enqueued: the enqueues then go to the server with the revisions and the COMMIT.
@event.listens_for(Session, "before_commit", insert=True)
def _stamp_before_commit(session: Session) -> None:
    stamp(session, commit=True)


@event.listens_for(Session, "after_rollback")
def _drop_changes(session: Session) -> None:
    session.info.pop(PENDING, None)
