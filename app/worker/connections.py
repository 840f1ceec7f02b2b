"""Open libvirt connections by node, each wired to the event bridge."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from app.virt.driver import Connector, Hypervisor, HypervisorEvent

log = logging.getLogger(__name__)
NodeEventCallback = Callable[[str, HypervisorEvent], None]


class NodeConnections:
    def __init__(self, connector: Connector, on_event: NodeEventCallback | None = None) -> None:
        self._connector = connector
        self._on_event = on_event
        self._open: dict[str, Hypervisor] = {}
        self._lock = threading.Lock()
        self._node_locks: dict[str, threading.Lock] = {}

    def get(self, node: str, uri: str) -> Hypervisor:
        with self._lock:
            current = self._open.get(node)
            if current is not None and current.uri == uri and current.alive:
                return current
            node_lock = self._node_locks.setdefault(node, threading.Lock())
        with node_lock:  # one connect per node at a time; others wait for it
            with self._lock:
                current = self._open.get(node)
                if current is not None and current.uri == uri and current.alive:
                    return current
            if current is not None:
                current.close()
            hypervisor = self._connector(uri)
            if self._on_event is not None:
                on_event = self._on_event
                hypervisor.subscribe(lambda event: on_event(node, event))
            with self._lock:
                self._open[node] = hypervisor
            log.info("connected to node %s at %s", node, uri)
            return hypervisor

    def forget(self, node: str) -> None:
        with self._lock:
            hypervisor = self._open.pop(node, None)
        if hypervisor is not None:
            hypervisor.close()

    def close_all(self) -> None:
        with self._lock:
            nodes = list(self._open)
        for node in nodes:
            self.forget(node)
