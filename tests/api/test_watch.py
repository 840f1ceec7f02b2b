"""Watch streams: a watch opened before a change sees it; a resumed watch misses nothing."""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest

from app.db import Database
from app.kinds import INSTANCES as INSTANCE_KIND
from app.repositories.revisions import compact_events, current_revision
from app.services import shared_calls, watch
from app.services.instances import InstanceService
from tests.api.test_resources import INSTANCES, problem
from tests.conftest import vmi

MERGE = {"Content-Type": "application/merge-patch+json"}


class Stream:
    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.opened = threading.Event()

    def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def take(self, n: int, timeout: float = 5.0) -> list[tuple[str, str]]:
        return [(e["type"], e["object"]["metadata"]["name"]) for e in (self.next(timeout) for _ in range(n))]


@contextmanager
def watching(api: httpx.Client, path: str = INSTANCES, **params: Any) -> Iterator[Stream]:
    stream = Stream()
    client = httpx.Client(base_url=api.base_url, headers=api.headers, timeout=httpx.Timeout(30, read=60))

    def run() -> None:
        try:
            with client.stream("GET", path, params={"watch": "true", **params}) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("application/x-ndjson")
                stream.opened.set()
                for line in response.iter_lines():
                    if line:
                        stream.events.put(json.loads(line))
        except httpx.HTTPError:
            return  # closed by the test

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert stream.opened.wait(5)
    time.sleep(0.05)  # the stream's first fetch has run: later writes arrive as live events
    try:
        yield stream
    finally:
        client.close()


def test_watch_sees_changes_made_after_it_opened(api: httpx.Client) -> None:
    api.post(INSTANCES, json=vmi("before"))
    with watching(api) as stream:
        assert stream.take(1) == [("ADDED", "before")]  # the current state first
        api.post(INSTANCES, json=vmi("after", app="x"))
        api.patch(f"{INSTANCES}/after", json={"spec": {"runStrategy": "Halted"}}, headers=MERGE)
        api.delete(f"{INSTANCES}/after")
        api.post("/v1/namespaces/elsewhere/instances", json=vmi("other-ns"))
        events = [stream.next() for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "after"),
        ("MODIFIED", "after"),
        ("MODIFIED", "after"),
    ]
    assert events[1]["object"]["spec"]["runStrategy"] == "Halted"
    assert events[2]["object"]["metadata"]["deletionTimestamp"]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3


def test_resumed_watch_misses_nothing(api: httpx.Client) -> None:
    start = api.get(INSTANCES).json()["metadata"]["resourceVersion"]
    for i in range(5):
        api.post(INSTANCES, json=vmi(f"r{i}"))
    api.patch(f"{INSTANCES}/r2", json={"metadata": {"labels": {"x": "y"}}}, headers=MERGE)
    with watching(api, resourceVersion=start) as stream:
        assert stream.take(6) == [("ADDED", f"r{i}") for i in range(5)] + [("MODIFIED", "r2")]
        api.post(INSTANCES, json=vmi("live"))
        assert stream.take(1) == [("ADDED", "live")]
        with watching(api, resourceVersion=start, labelSelector="x=y") as filtered:
            assert filtered.take(1) == [("ADDED", "r2")]  # it came to match the selector
        assert stream.events.empty()


def test_a_label_filtered_watch_shows_objects_entering_and_leaving_the_selector(api: httpx.Client) -> None:
    api.post(INSTANCES, json=vmi("in", tier="web"))
    api.post(INSTANCES, json=vmi("never", tier="db"))
    with watching(api, labelSelector="tier=web") as stream:
        assert stream.take(1) == [("ADDED", "in")]
        api.patch(f"{INSTANCES}/in", json={"metadata": {"labels": {"tier": "db"}}}, headers=MERGE)
        assert stream.take(1) == [("DELETED", "in")]  # Kubernetes' rule: leaving the selector is a delete
        api.patch(f"{INSTANCES}/never", json={"spec": {"runStrategy": "Halted"}}, headers=MERGE)
        api.patch(f"{INSTANCES}/in", json={"metadata": {"labels": {"tier": "web"}}}, headers=MERGE)
        assert stream.take(1) == [("ADDED", "in")]  # back in; "never" was never shown
        api.patch(f"{INSTANCES}/in", json={"spec": {"runStrategy": "Halted"}}, headers=MERGE)
        assert stream.take(1) == [("MODIFIED", "in")]
        api.delete(f"{INSTANCES}/in")
        assert stream.take(1)[0][0] in ("MODIFIED", "DELETED")
    # Resumed after the object was shown inside: the change that takes it out reads as a delete too.
    api.post(INSTANCES, json=vmi("later", tier="web"))
    after_create = api.get(INSTANCES).json()["metadata"]["resourceVersion"]
    api.patch(f"{INSTANCES}/later", json={"metadata": {"labels": {"tier": "db"}}}, headers=MERGE)
    with watching(api, resourceVersion=after_create, labelSelector="tier=web") as resumed:
        assert resumed.take(1) == [("DELETED", "later")]


def test_cluster_watch_and_cross_namespace(api: httpx.Client) -> None:
    with watching(api, "/v1/nodes") as stream:
        api.post("/v1/nodes", json={"metadata": {"name": "w1"}, "spec": {"uri": "test:///default"}})
        assert stream.take(1) == [("ADDED", "w1")]


def test_a_watch_with_timeout_seconds_ends_cleanly_after_it(api: httpx.Client) -> None:
    assert api.post(INSTANCES, json=vmi("before")).status_code == 201
    started = time.monotonic()
    response = api.get(INSTANCES, params={"watch": "true", "timeoutSeconds": 1})
    took = time.monotonic() - started
    assert response.status_code == 200 and 0.9 <= took < 5, took
    assert [json.loads(line)["type"] for line in response.text.splitlines()] == ["ADDED"]
    problem(api.get(INSTANCES, params={"watch": "true", "timeoutSeconds": 0}), 422)


def test_watch_rejects_bad_and_expired_versions(api: httpx.Client, db: Database) -> None:
    for i in range(4):
        api.post(INSTANCES, json=vmi(f"c{i}"))
    problem(api.get(INSTANCES, params={"watch": "true", "resourceVersion": "abc"}), 400)
    problem(api.get(INSTANCES, params={"watch": "true", "resourceVersion": "9" * 19}), 422)  # past 64 bits
    # A version not reached yet is waited for (as in etcd): nothing has happened after it.
    future = api.get(INSTANCES, params={"watch": "true", "resourceVersion": "999999", "timeoutSeconds": 1})
    assert future.status_code == 200 and future.text == ""
    with db.transaction() as session:
        compact_events(session, keep=1)
    body = problem(api.get(INSTANCES, params={"watch": "true", "resourceVersion": "1"}), 410)
    assert "too old" in body["detail"]


def test_a_watch_opens_while_a_write_is_under_way(api: httpx.Client, db: Database) -> None:
    """The snapshot a watch starts from is a read: on SQLite it does not queue for the one writer's lock
    (it waited up to the 30-s busy timeout), and what the write commits reaches it as a live event."""
    api.post(INSTANCES, json=vmi("before"))
    with ExitStack() as writing:
        session = writing.enter_context(db.transaction())
        InstanceService(session).create("default", vmi("during"))
        session.flush()  # the write lock is taken (SQLite) and held until the commit
        with watching(api) as stream:
            assert stream.take(1) == [("ADDED", "before")]
            writing.close()  # commits
            assert stream.take(1) == [("ADDED", "during")]


def test_a_change_wakes_every_watch_of_an_event_loop_through_one_thread_hand_off(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken together by one change, the watches need the change log read once: one of them reads it in
    the thread pool and the others wait for that read, instead of each taking a thread of the pool."""
    hand_offs: list[object] = []  # this test's: the live server's event loop hands off work too
    real = shared_calls.run_in_threadpool
    loops: list[asyncio.AbstractEventLoop] = []

    async def counted(call: Any, *args: Any) -> Any:
        if asyncio.get_running_loop() in loops:
            hand_offs.append(call)
        return await real(call, *args)

    monkeypatch.setattr(shared_calls, "run_in_threadpool", counted)
    monkeypatch.setattr(watch, "run_in_threadpool", counted)
    # A Database of its own: its feed has no other watchers (the live server's streams of other tests wake
    # on every change too, and a feed busy with one of them is read around, in a thread).
    own = Database(db.engine.url.render_as_string(hide_password=False))

    async def twenty_watches_see_one_create() -> list[bytes]:
        loops.append(asyncio.get_running_loop())
        await watch.feed_for(own).caught_up()  # its buffer starts here: the watches' first looks need no read
        with own.read() as session:
            version = str(current_revision(session))
        watches = [watch.Watch(own, INSTANCE_KIND, "default", version, None, False) for _ in range(20)]
        streams = [w.stream() for w in watches]
        lines = [asyncio.ensure_future(anext(stream)) for stream in streams]
        await asyncio.sleep(0.2)  # each has looked once (nothing new) and waits
        hand_offs.clear()
        with own.transaction() as session:
            InstanceService(session).create("default", vmi("woken"))
        try:
            return await asyncio.wait_for(asyncio.gather(*lines), 10)
        finally:
            for stream in streams:
                await stream.aclose()

    try:
        lines = asyncio.run(twenty_watches_see_one_create())
    finally:
        own.dispose()
    assert [json.loads(line)["object"]["metadata"]["name"] for line in lines] == ["woken"] * 20
    assert len(hand_offs) == 1
