"""Postgres: a commit wakes other processes' watches and workers through NOTIFY (sent by triggers on the
change log and the queue), and its own process once, through the in-process hub."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from app.db import EVENTS_CHANNEL, WORK_CHANNEL, Database
from app.kinds import INSTANCES
from app.models import InstanceRow
from app.repositories import workqueue
from app.repositories.resources import ResourceRepository


@pytest.fixture
def two_processes(pg_url: str) -> Iterator[tuple[Database, Database]]:
    """Two Database objects on one database: as two processes see it (each its own identity)."""
    writer, reader = Database(pg_url), Database(pg_url)
    writer.start_listener()
    reader.start_listener()
    time.sleep(0.5)  # both LISTEN before anything is written
    yield writer, reader
    writer.dispose()
    reader.dispose()


def test_a_commit_wakes_other_processes_once_and_its_own_once(
    two_processes: tuple[Database, Database],
) -> None:
    writer, reader = two_processes
    before = {db: {c: db.hub.counter(c) for c in (EVENTS_CHANNEL, WORK_CHANNEL)} for db in two_processes}
    with writer.transaction() as session:
        row = InstanceRow(
            uid=str(uuid.uuid4()), namespace="default", name=f"n-{uuid.uuid4().hex[:6]}", spec={}, status={}
        )
        ResourceRepository[InstanceRow](session, INSTANCES).add(row)
        workqueue.enqueue(session, INSTANCES.work_key("default", row.name))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and reader.hub.counter(WORK_CHANNEL) == before[reader][WORK_CHANNEL]:
        time.sleep(0.02)
    time.sleep(0.3)  # the writer's own NOTIFY has arrived by now too
    for channel in (EVENTS_CHANNEL, WORK_CHANNEL):
        assert reader.hub.counter(channel) > before[reader][channel], f"{channel} did not reach the reader"
        assert writer.hub.counter(channel) == before[writer][channel] + 1, f"{channel}: the writer woke twice"
