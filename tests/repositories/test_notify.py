"""Postgres: a commit wakes other processes' watches and workers through NOTIFY (sent by triggers on the
change log and the queue), and its own process once, through the in-process hub."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator

import pytest

from app.db import API_CHANNELS, CHANNELS, EVENTS_CHANNEL, WORK_CHANNEL, WORKER_CHANNELS, Database
from app.kinds import INSTANCES
from app.models import InstanceRow
from app.repositories import workqueue
from app.repositories.resources import ResourceRepository
from tests.conftest import wait_for


@pytest.fixture
def two_processes(pg_url: str) -> Iterator[tuple[Database, Database]]:
    """Two Database objects on one database: as two processes see it (each its own identity)."""
    writer, reader = Database(pg_url), Database(pg_url)
    for db in (writer, reader):
        listening(db, CHANNELS)
    yield writer, reader
    writer.dispose()
    reader.dispose()


def listening(db: Database, channels: tuple[str, ...]) -> None:
    """Start (or widen) db's listener and wait until it listens: it wakes each channel once it has."""
    before = {channel: db.hub.counter(channel) for channel in channels}
    db.start_listener(channels)
    wait_for(lambda: moved(db, before, channels), 10, 0.02, f"listening to {channels}")


def moved(db: Database, before: dict[str, int], channels: Iterable[str]) -> bool:
    """Whether each of the channels woke its waiters since `before`."""
    return all(db.hub.counter(c) != before[c] for c in channels)


def commit_instance(db: Database) -> None:
    """A new instance and its work item: a change-log event and a work notification."""
    with db.transaction() as session:
        row = InstanceRow(
            uid=str(uuid.uuid4()), namespace="default", name=f"n-{uuid.uuid4().hex[:6]}", spec={}, status={}
        )
        ResourceRepository[InstanceRow](session, INSTANCES).add(row)
        workqueue.enqueue(session, INSTANCES.work_key("default", row.name))


def woken(db: Database, before: dict[str, int], expected: set[str]) -> set[str]:
    """The channels whose waiters were woken since `before`: once the expected ones were, and another
    half second for any that should not be."""
    wait_for(lambda: moved(db, before, expected), 10, 0.02, f"{expected} woken")
    time.sleep(0.5)
    return {channel for channel in CHANNELS if db.hub.counter(channel) != before[channel]}


def test_each_process_is_woken_only_by_the_channels_it_listens_to(pg_url: str) -> None:
    """A worker is not woken by the change log's notifications, an API process not by the work queue's;
    a process that runs both (`corral serve`) adds the second set and gets both."""
    writer, worker, api = Database(pg_url), Database(pg_url), Database(pg_url)
    try:
        listening(worker, WORKER_CHANNELS)
        listening(api, API_CHANNELS)
        before = {db: {c: db.hub.counter(c) for c in CHANNELS} for db in (worker, api)}
        commit_instance(writer)
        assert woken(worker, before[worker], {WORK_CHANNEL}) == {WORK_CHANNEL}
        assert woken(api, before[api], {EVENTS_CHANNEL}) == {EVENTS_CHANNEL}

        listening(worker, API_CHANNELS)  # serve: the API starts after the worker
        before[worker] = {c: worker.hub.counter(c) for c in CHANNELS}
        commit_instance(writer)
        both = {WORK_CHANNEL, EVENTS_CHANNEL}
        assert woken(worker, before[worker], both) == both
    finally:
        for db in (writer, worker, api):
            db.dispose()


def test_a_commit_wakes_other_processes_once_and_its_own_once(
    two_processes: tuple[Database, Database],
) -> None:
    writer, reader = two_processes
    before = {db: {c: db.hub.counter(c) for c in (EVENTS_CHANNEL, WORK_CHANNEL)} for db in two_processes}
    commit_instance(writer)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and reader.hub.counter(WORK_CHANNEL) == before[reader][WORK_CHANNEL]:
        time.sleep(0.02)
    time.sleep(0.3)  # the writer's own NOTIFY has arrived by now too
    for channel in (EVENTS_CHANNEL, WORK_CHANNEL):
        assert reader.hub.counter(channel) > before[reader][channel], f"{channel} did not reach the reader"
        assert writer.hub.counter(channel) == before[writer][channel] + 1, f"{channel}: the writer woke twice"
