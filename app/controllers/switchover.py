"""The guest's pause at a migration's switch-over, timed from libvirt's events on this process's clock."""

from __future__ import annotations

import threading

from app.virt.driver import EventKind, HypervisorEvent


class SwitchoverClock:
    """When each domain was last paused for a migration on its source and resumed on its target, as libvirt's
    events reached this process: the guest's pause on one clock, whatever the hosts' clocks say. libvirt's own
    downtime figure ends only after its bookkeeping on the target (status saved, monitor released), 10-20 ms
    after the guest runs again (QEMU's tracepoints on the test rig)."""

    PAUSED = frozenset({("Suspended", "Migrated"), ("Suspended", "PostCopy")})
    RESUMED = frozenset({("Resumed", "Migrated"), ("Resumed", "PostCopy")})

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._paused: dict[str, float] = {}
        self._resumed: dict[str, float] = {}

    def observe(self, event: HypervisorEvent) -> None:
        """Called on libvirt's event thread: no waiting here."""
        pair = (event.event, event.detail)
        if event.kind is not EventKind.LIFECYCLE or not event.domain_uuid:
            return
        if pair in self.PAUSED or pair in self.RESUMED:
            with self._changed:
                (self._paused if pair in self.PAUSED else self._resumed)[event.domain_uuid] = event.at
                self._changed.notify_all()

    def pause_ms(self, uuid: str, since: float, wait: float = 1.0) -> int | None:
        """The pause of the switch-over after `since` (monotonic), once both events are in; None if they do
        not come within `wait` seconds (this process started after the switch-over, or lost a connection)."""

        def seen() -> bool:
            return self._paused.get(uuid, 0.0) >= since and self._resumed.get(uuid, 0.0) >= since

        with self._changed:
            if not self._changed.wait_for(seen, timeout=wait):
                return None
            paused, resumed = self._paused.pop(uuid), self._resumed.pop(uuid)
        return round((resumed - paused) * 1000) if resumed >= paused else None
