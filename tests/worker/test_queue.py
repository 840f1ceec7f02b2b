"""The keyed work queue: leases, re-enqueue during a pass, requeue, backoff, and two processes at once."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from app.clock import utc_now
from app.controllers.base import Result
from app.db import Database
from app.kinds import INSTANCES
from app.models import WorkItemRow
from app.repositories import workqueue
from app.services.instances import InstanceService
from app.worker.runner import RESYNC_KEY, Worker, backoff

ROOT = Path(__file__).resolve().parents[2]


def lease(db: Database, worker: str, n: int = 10, seconds: float = 30) -> list[workqueue.Lease]:
    with db.transaction() as session:
        return workqueue.lease(session, worker, n, seconds)


def enqueue(db: Database, key: str, delay: float = 0) -> None:
    with db.transaction() as session:
        workqueue.enqueue(session, key, delay)


def test_a_key_is_leased_once_and_finished(db: Database) -> None:
    enqueue(db, "K/ns/a")
    enqueue(db, "K/ns/a")  # deduplicated
    enqueue(db, "K/ns/later", delay=60)
    first = lease(db, "w1")
    assert [t.key for t in first] == ["K/ns/a"]
    assert lease(db, "w2") == []  # held by w1; `later` is not due
    with db.transaction() as session:
        workqueue.finish(session, "w1", first[0])
        assert workqueue.depth(session) == 1


def test_enqueue_during_a_pass_runs_the_key_again(db: Database) -> None:
    enqueue(db, "K/ns/a")
    taken = lease(db, "w1")
    enqueue(db, "K/ns/a")  # something changed while w1 was working
    assert lease(db, "w2") == []
    with db.transaction() as session:
        workqueue.finish(session, "w1", taken[0])
    again = lease(db, "w2")
    assert [t.key for t in again] == ["K/ns/a"]


def test_enqueues_are_written_with_the_revisions_of_a_write(db: Database) -> None:
    """A write that versions rows carries its enqueues to the server with its revisions and COMMIT (one
    round trip on Postgres): a new key, and one already queued that keeps its earlier due time and counts
    the request."""
    enqueue(db, "K/ns/queued", delay=30)
    with db.read() as session:
        seq_before, due_before = session.execute(
            select(WorkItemRow.seq, WorkItemRow.due_at).where(WorkItemRow.key == "K/ns/queued")
        ).one()
    with db.transaction() as session:
        workqueue.enqueue(session, "K/ns/queued", delay=60)
        workqueue.enqueue(session, "K/ns/new")
        spec = {"domain": {"resources": {"requests": {"memory": "128Mi"}}}}
        InstanceService(session).create("ns", {"metadata": {"name": "versioned"}, "spec": spec})
    with db.read() as session:
        queued = {row.key: row for row in session.scalars(select(WorkItemRow))}
    assert {"K/ns/new", "K/ns/queued", INSTANCES.work_key("ns", "versioned")} <= set(queued)
    assert queued["K/ns/queued"].seq == seq_before + 1
    assert queued["K/ns/queued"].due_at == due_before
    assert {t.key for t in lease(db, "w1")} == {"K/ns/new", INSTANCES.work_key("ns", "versioned")}


def test_requeue_after_and_error_backoff(db: Database) -> None:
    enqueue(db, "K/ns/a")
    taken = lease(db, "w1")
    with db.transaction() as session:
        workqueue.finish(session, "w1", taken[0], requeue_after=0.3)
    assert lease(db, "w1") == []
    time.sleep(0.35)
    taken = lease(db, "w1")
    assert len(taken) == 1 and taken[0].attempts == 0
    with db.transaction() as session:
        workqueue.finish(session, "w1", taken[0], requeue_after=0.0, error="boom")
    retried = lease(db, "w1")
    assert retried[0].attempts == 1
    assert [backoff(a) for a in range(4)] == [0.25, 0.5, 1.0, 2.0] and backoff(40) == 300


def test_an_expired_lease_is_taken_over(db: Database) -> None:
    enqueue(db, "K/ns/a")
    lease(db, "dead-worker")
    with db.transaction() as session:
        session.execute(update(WorkItemRow).values(lease_until=utc_now() - timedelta(seconds=1)))
    taken = lease(db, "w2")
    assert [t.key for t in taken] == ["K/ns/a"]
    with db.transaction() as session:
        workqueue.finish(session, "dead-worker", taken[0])  # the old holder cannot finish it
        assert workqueue.depth(session) == 1


def test_a_restarted_worker_frees_the_leases_of_dead_local_workers(db: Database) -> None:
    import socket

    from app.worker.runner import Worker

    host = socket.gethostname()
    enqueue(db, "K/ns/a")
    enqueue(db, "K/ns/b")
    enqueue(db, "K/ns/c")
    lease(db, f"{host}:999999999:dead", n=1)  # a pid that cannot exist: a killed `corral serve`
    lease(db, f"{host}:{os.getpid()}:alive", n=1)  # this process: alive
    lease(db, "elsewhere:1:remote", n=1)  # another host: cannot tell, left to expire
    Worker(db, {}).release_dead_local_leases()
    assert [t.key for t in lease(db, "new")] == ["K/ns/a"]


def test_racing_leases_in_threads_never_share_a_key(db: Database) -> None:
    for i in range(40):
        enqueue(db, f"K/ns/k{i}")
    won: dict[str, list[str]] = defaultdict(list)

    def grab(worker: str) -> None:
        for _ in range(10):
            for taken in lease(db, worker, n=3):
                won[taken.key].append(worker)

    threads = [threading.Thread(target=grab, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 40 and all(len(holders) == 1 for holders in won.values())


def test_two_worker_processes_never_reconcile_one_key_at_once(
    pg: Database, pg_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "passes.log"
    keys = [f"VirtualMachineInstance/ns/vm{i}" for i in range(6)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "worker" / "probe_worker.py"), pg_url, str(log), "6"],
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # keep poking the same keys while both workers run
        for key in keys:
            enqueue(pg, key)
        time.sleep(0.01)
    for proc in procs:
        assert proc.wait(30) == 0
    passes: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        key, pid, start, end = line.split()
        passes[key].append((float(start), float(end), pid))
    assert set(passes) == {k.split("/", 1)[1] for k in keys}
    assert len({pid for runs in passes.values() for _, _, pid in runs}) == 2, (
        "both processes must have worked"
    )
    for key, runs in passes.items():
        runs.sort()
        assert len(runs) > 10
        for (_, end, _), (start, _, _) in itertools.pairwise(runs):
            assert start >= end, f"{key}: two passes overlapped"


def test_a_node_heartbeat_is_leased_before_an_older_backlog(db: Database) -> None:
    for i in range(50):
        enqueue(db, f"VirtualMachineInstance/ns/vm-{i}")
    time.sleep(0.01)
    enqueue(db, "Node//local")  # due later than all of the backlog
    assert [taken.key for taken in lease(db, "w1", n=1)] == ["Node//local"]
    assert lease(db, "w1", n=1)[0].key == "VirtualMachineInstance/ns/vm-0"  # then oldest first


def test_keys_leased_beyond_the_one_asked_for_are_run_not_left_idle(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should a lease return more keys than the finishing transaction asked for (Postgres did, see
    workqueue._lease_statement), every key leased is run at once, none left until its lease runs out."""
    reconciled: list[str] = []
    first_pass = threading.Event()

    class Recorder:
        kind = "K"

        def reconcile(self, namespace: str, name: str) -> Result:
            reconciled.append(name)
            first_pass.wait(10)  # the others are enqueued while the first pass runs
            return Result()

        def keys_for_events(self, session: object, events: object) -> list[str]:
            return []

    real_lease = workqueue.lease

    def greedy(session: Any, worker: str, limit: int, seconds: float) -> list[workqueue.Lease]:
        return real_lease(session, worker, limit if limit > 1 else 3, seconds)  # as the over-lease does

    monkeypatch.setattr(workqueue, "lease", greedy)
    enqueue(db, "K/ns/a")
    worker = Worker(db, {"K": Recorder()}, concurrency=1, lease_seconds=60, resync_seconds=3600)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not reconciled and time.monotonic() < deadline:
            time.sleep(0.01)
        for name in ("b", "c"):
            enqueue(db, f"K/ns/{name}")
        first_pass.set()
        while len(reconciled) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert sorted(reconciled) == ["a", "b", "c"]  # within seconds, not after the 60-s lease


def test_workers_sharing_a_database_resync_in_turn_not_each(db: Database) -> None:
    """The periodic resync wakes every object: two workers on one database run it once per period between
    them, not once each (which would double every idle object's passes), and the next one waits in the
    queue for whichever worker is there."""
    runs: list[datetime] = []

    def counted(session: object) -> list[str]:
        runs.append(utc_now())
        return []

    workers = [Worker(db, {}, concurrency=2, resync_seconds=1.0, resync_sources=[counted]) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        # Each start asks for one at once (the second may come during the first: one more), then one a
        # period after the last, taken within a second of falling due (the loops' idle poll).
        time.sleep(4.5)
    finally:
        for worker in workers:
            worker.stop()
    assert 3 <= len(runs) <= 6, runs  # each on its own would make 10
    assert min((b - a).total_seconds() for a, b in itertools.pairwise(sorted(runs[-3:]))) >= 0.8, runs
    with db.transaction() as session:
        due = session.scalar(select(WorkItemRow.due_at).where(WorkItemRow.key == RESYNC_KEY))
    # The next one is queued, a period after the last, for whichever worker is there (it may be due by now:
    # stopping the workers takes up to their idle poll).
    assert due is not None and due >= max(runs) + timedelta(seconds=0.8), (due, runs)
