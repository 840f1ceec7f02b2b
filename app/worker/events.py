"""The bridge from libvirt events to work-queue wake-ups.

libvirt calls back on its event-loop thread, which must never block on the database: events go through a
queue to a bridge thread that asks every reconciler which keys the event concerns and enqueues them. While
the database is away the bridge retries the event at hand and the queue keeps the ones behind it: none is
lost. Observers that only note an event (and never wait) see it on the event-loop thread, on arrival, and
the events of this process's own actions, which its passes saw through, stop there.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from prometheus_client import Counter

from app.controllers.base import NodeEvent, Reconciler
from app.db import Database
from app.repositories import workqueue
from app.virt.driver import EventCallback, HypervisorEvent

log = logging.getLogger(__name__)
BATCH = 500  # events per transaction at most
RETRY_FIRST, RETRY_MAX = 0.1, 2.0  # seconds between attempts to deliver an event while the database is away
EVENTS = Counter("corral_libvirt_events_total", "libvirt events received", ["kind", "event"])


class EventBridge:
    def __init__(self, db: Database, reconcilers: list[Reconciler]) -> None:
        self.db = db
        self.reconcilers = reconcilers  # read per event, so the list may be filled after construction
        self.observers: list[EventCallback] = []
        # Whether an event is one an action of this process caused and its pass saw through: such an event
        # wakes nothing, so it is dropped on arrival, before any transaction.
        self.caused_here: list[Callable[[HypervisorEvent], bool]] = []
        self._queue: queue.Queue[NodeEvent | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="event-bridge", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(5)

    def __call__(self, node: str, event: HypervisorEvent) -> None:
        EVENTS.labels(event.kind.value, event.event).inc()
        for observe in self.observers:
            observe(event)
        if not any(caused(event) for caused in self.caused_here):
            self._queue.put((node, event))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            batch, stopping = [item], False
            # A burst (a thousand domains starting) is delivered in one transaction, not one per event.
            while len(batch) < BATCH and not stopping:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                else:
                    batch.append(more)
            delay = RETRY_FIRST
            while not self._deliver(batch):
                if self._stopping.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX)
            if stopping:
                return

    def _deliver(self, batch: list[NodeEvent]) -> bool:
        try:
            # Lookups, then the enqueues in one statement: nothing to keep atomic, so no BEGIN and COMMIT
            # for a burst that wakes nothing (another worker's actions, which its passes saw through).
            with self.db.statements() as session:
                for reconciler in self.reconcilers:
                    for key in reconciler.keys_for_events(session, batch):
                        workqueue.enqueue(session, key)
        except Exception as exc:
            log.warning("could not enqueue for %d event(s) (kept, retrying): %s", len(batch), exc)
            return False
        return True
