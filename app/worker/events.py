"""The bridge from libvirt events to work-queue wake-ups.

libvirt calls back on its event-loop thread, which must never block on the database: events go through a
queue to a bridge thread that asks every reconciler which keys the event concerns and enqueues them.
Observers that only note an event (and never wait) see it on the event-loop thread, on arrival.
"""

from __future__ import annotations

import logging
import queue
import threading

from prometheus_client import Counter

from app.controllers.base import Reconciler
from app.db import Database
from app.repositories import workqueue
from app.virt.driver import EventCallback, HypervisorEvent

log = logging.getLogger(__name__)
EVENTS = Counter("corral_libvirt_events_total", "libvirt events received", ["kind", "event"])


class EventBridge:
    def __init__(self, db: Database, reconcilers: list[Reconciler]) -> None:
        self.db = db
        self.reconcilers = reconcilers  # read per event, so the list may be filled after construction
        self.observers: list[EventCallback] = []
        self._queue: queue.Queue[tuple[str, HypervisorEvent] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="event-bridge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def __call__(self, node: str, event: HypervisorEvent) -> None:
        EVENTS.labels(event.kind.value, event.event).inc()
        for observe in self.observers:
            observe(event)
        self._queue.put((node, event))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            node, event = item
            try:
                with self.db.transaction() as session:
                    for reconciler in self.reconcilers:
                        for key in reconciler.keys_for_event(session, node, event):
                            workqueue.enqueue(session, key)
            except Exception:
                log.warning("could not enqueue for %s on %s", event, node, exc_info=True)
