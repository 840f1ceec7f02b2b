"""The reconciler contract (controller-runtime's): level-triggered passes over one key at a time.

`reconcile` re-reads desired and actual state every pass. Returning a Result ends the pass (optionally asking
to run again later); raising means retry with backoff.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from app.virt.driver import HypervisorEvent

NodeEvent = tuple[str, HypervisorEvent]  # an event and the node it came from


@dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


class Reconciler(Protocol):
    kind: str

    def reconcile(self, namespace: str, name: str) -> Result: ...

    def keys_for_events(self, session: Session, events: Sequence[NodeEvent]) -> list[str]:
        """Work keys these libvirt events should wake (the event bridge asks every reconciler, a burst's
        events at once)."""
        ...
