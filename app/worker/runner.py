"""The worker loop: lease due keys, run their reconcilers on a thread pool, renew leases, resync.

Several worker processes may share one database: the queue's leases keep each key to one pass at a time,
the periodic resync included (it is a key of the queue too).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy.orm import Session

from app.controllers.base import Reconciler
from app.db import WORK_CHANNEL, WORKER_CHANNELS, Database
from app.kinds import KINDS, split_work_key
from app.repositories import idempotency, operations, revisions, workqueue
from app.repositories.resources import ResourceRepository

log = logging.getLogger(__name__)
PASSES = Histogram(
    "corral_reconcile_duration_seconds",
    "Reconcile pass duration",
    ["kind", "outcome"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)
ERRORS = Counter("corral_reconcile_errors_total", "Reconcile passes that raised", ["kind"])
MAX_BACKOFF = 300.0
IDLE_POLL = 1.0  # picks up delayed keys and, on SQLite, other processes' enqueues
IDEMPOTENCY_TTL = timedelta(hours=24)  # how long a retried action still gets its first answer
OPERATIONS_TTL = timedelta(days=7)  # how long the record of guest operations is kept
# The periodic resync's key: one worker at a time runs it, however many share the database, and another
# takes it over when that one dies (its lease runs out).
RESYNC_KEY = "Resync//all"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def backoff(attempts: int) -> float:
    return float(min(0.25 * 2**attempts, MAX_BACKOFF))


class Worker:
    def __init__(
        self,
        db: Database,
        reconcilers: Mapping[str, Reconciler],
        *,
        concurrency: int = 4,
        lease_seconds: float = 30.0,
        resync_seconds: float = 60.0,
        event_retention: int = 100_000,
        resync_sources: Sequence[Callable[[Session], list[str]]] = (),
        identity: str | None = None,
    ) -> None:
        self.db = db
        self.reconcilers = dict(reconcilers)
        self.resync_sources = tuple(resync_sources)  # work keys of what is not an API kind (image pulls)
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.resync_seconds = resync_seconds
        self.event_retention = event_retention
        self.identity = identity or workqueue.new_holder()
        self._inflight: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="reconcile")

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        self.db.start_listener(WORKER_CHANNELS)
        self.release_dead_local_leases()
        with self.db.transaction() as session:
            workqueue.enqueue(session, RESYNC_KEY)  # at once: what changed while no worker ran
        for target, name in ((self._loop, "worker-loop"), (self._renew_loop, "worker-renew")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker %s started: %s", self.identity, ", ".join(sorted(self.reconcilers)))

    def release_dead_local_leases(self) -> None:
        """A worker killed on this host leaves leases that would block its keys until they expire; a process
        that no longer exists holds nothing, so they go now. Other hosts' leases are left to expire."""
        host = socket.gethostname()
        with self.db.transaction() as session:
            for holder in workqueue.holders(session):
                name, _, rest = holder.partition(":")
                pid = rest.partition(":")[0]
                if name == host and pid.isdigit() and not _alive(int(pid)):
                    released = workqueue.release(session, holder)
                    log.info("released %d lease(s) of dead worker %s", released, holder)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.db.hub.notify(WORK_CHANNEL)
        for thread in self._threads:
            thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- loops -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        hub = self.db.hub
        while not self._stop.is_set():
            seen = hub.counter(WORK_CHANNEL)
            with self._lock:
                free = self.concurrency - len(self._inflight)
            taken: list[workqueue.Lease] = []
            if free > 0:
                try:
                    with self.db.statements() as session:
                        taken = workqueue.lease(session, self.identity, free, self.lease_seconds)
                except Exception:
                    log.warning("leasing work failed", exc_info=True)
                    self._stop.wait(IDLE_POLL)
                    continue
            for lease in taken:
                with self._lock:
                    self._inflight.add(lease.key)
                self._pool.submit(self._process, lease)
            if not taken or free - len(taken) <= 0:
                hub.wait(WORK_CHANNEL, seen, IDLE_POLL)

    def _process(self, lease: workqueue.Lease) -> None:
        """Run passes on this thread as long as the queue has due keys: each pass's finish leases the next
        key as well, so a busy worker needs no extra statement and no hand-over through the loop per pass."""
        following: workqueue.Lease | None = lease
        while following is not None:
            following = self._pass(following)

    def _pass(self, lease: workqueue.Lease) -> workqueue.Lease | None:
        """One reconcile of the leased key, then its lease ended; returns the next key leased, if any."""
        kind_name, namespace, name = split_work_key(lease.key)
        reconciler = self.reconcilers.get(kind_name)
        started = time.perf_counter()
        outcome, requeue, error = "ok", None, None
        try:
            if lease.key == RESYNC_KEY:
                self.resync()
                requeue = self.resync_seconds
            elif reconciler is None:
                outcome = "unhandled"
            else:
                requeue = reconciler.reconcile(namespace, name).requeue_after
        except Exception as exc:
            outcome, error = "error", f"{exc.__class__.__name__}: {exc}"
            requeue = backoff(lease.attempts)
            ERRORS.labels(kind_name).inc()
            log.warning(
                "%s: pass failed, retry in %.1fs: %s",
                lease.key,
                requeue,
                error,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        PASSES.labels(kind_name, outcome).observe(time.perf_counter() - started)
        again, taken = True, []
        try:
            with self.db.statements() as session:
                again = workqueue.finish(session, self.identity, lease, requeue_after=requeue, error=error)
                if not self._stop.is_set():
                    taken = workqueue.lease(session, self.identity, 1, self.lease_seconds)
        except Exception:
            log.warning("finishing %s failed", lease.key, exc_info=True)
            taken = []
        following = taken[0] if taken else None
        with self._lock:
            self._inflight.discard(lease.key)
            self._inflight.update(t.key for t in taken)
        # Every key leased is run, none left leased and idle until its lease runs out, should the lease
        # return more than the one asked for (Postgres did, before the pick became a materialized CTE: a
        # 1,000-instance delete stood still twice for the 30-s lease).
        for extra in taken[1:]:
            self._pool.submit(self._process, extra)
        if following is None and again:
            self.db.hub.notify(WORK_CHANNEL)  # due again, and this thread took nothing: the loop looks
        return following

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            with self._lock:
                keys = sorted(self._inflight)
            try:
                with self.db.statements() as session:
                    workqueue.renew(session, self.identity, keys, self.lease_seconds)
            except Exception:
                log.warning("renewing leases failed", exc_info=True)

    def resync(self) -> None:
        """Every object gets a pass now and then, whatever events were lost (level-triggered)."""
        with self.db.transaction() as session:
            for kind_name in self.reconcilers:
                kind = KINDS.get(kind_name)
                if kind is not None:
                    for namespace, name in ResourceRepository[Any](session, kind).all_keys():
                        workqueue.enqueue(session, kind.work_key(namespace, name))
            for source in self.resync_sources:
                for key in source(session):
                    workqueue.enqueue(session, key)
            revisions.compact_events(session, self.event_retention)
            idempotency.expire(session, IDEMPOTENCY_TTL)
            operations.expire(session, OPERATIONS_TTL)
