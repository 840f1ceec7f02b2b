"""Events a pass's own actions cause, so they do not wake another pass.

A pass that defines, starts, stops, pauses, resumes or undefines a domain looks at it again afterwards and
writes what it saw: the libvirt event its own action causes carries nothing new, yet would cost a second pass
(KubeVirt's controllers keep "expectations" for the same reason). The events are expected before the action
(libvirt may deliver them before the call returns), withdrawn when it fails, and waited for a short while
only: an event that comes later, or that no action here caused, wakes a pass as always.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXPECTED_FOR = 10.0  # seconds an action's event is waited for
SWEEP_ABOVE = 1000  # domains with expectations before expired ones are swept


class Expectations:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[str, list[tuple[str, float]]] = {}  # domain uuid -> (event, deadline)
        self._sweep_above = SWEEP_ABOVE  # doubles with what a sweep leaves: a sweep's cost is spread out

    def expect(self, uuid: str, *events: str) -> None:
        """This process's action on the domain causes these events (names as HypervisorEvent has)."""
        now = self._clock()
        with self._lock:
            if len(self._waiting) > self._sweep_above:
                self._sweep(now)
                self._sweep_above = max(SWEEP_ABOVE, 2 * len(self._waiting))
            self._waiting.setdefault(uuid, []).extend((event, now + EXPECTED_FOR) for event in events)

    @contextmanager
    def acting(self, uuid: str, *events: str) -> Iterator[None]:
        """Expect the events of the action in the block; an action that raises caused none of them."""
        self.expect(uuid, *events)
        try:
            yield
        except BaseException:
            self.withdraw(uuid, *events)
            raise

    def withdraw(self, uuid: str, *events: str) -> None:
        """The action did not happen: its events are no longer expected."""
        with self._lock:
            for event in events:
                self._take(uuid, event, None)

    def met(self, uuid: str, event: str, at: float) -> bool:
        """Whether the event (arrived at `at`, on this clock) is one an action here caused; it is
        expected once only."""
        with self._lock:
            return self._take(uuid, event, at)

    def _take(self, uuid: str, event: str, at: float | None) -> bool:
        """Remove one expectation of the event (still waited for at `at`); whether there was one."""
        waiting = [
            (name, deadline) for name, deadline in self._waiting.pop(uuid, []) if at is None or deadline > at
        ]
        index = next((i for i, (name, _) in enumerate(waiting) if name == event), None)
        if index is not None:
            del waiting[index]
        if waiting:
            self._waiting[uuid] = waiting
        return index is not None

    def _sweep(self, now: float) -> None:
        for uuid in list(self._waiting):
            live = [(name, deadline) for name, deadline in self._waiting[uuid] if deadline > now]
            if live:
                self._waiting[uuid] = live
            else:
                del self._waiting[uuid]
