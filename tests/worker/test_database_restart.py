"""The real PostgreSQL stops and starts again under a live API and event bridge: every request meanwhile is
a 503 with Retry-After (never a 500 or a dropped connection), the API answers again once the database does,
and a libvirt event that arrived during the outage is enqueued afterwards."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
from sqlalchemy import select

from app.controllers.nodes import NodeReconciler
from app.db import Database
from app.kinds import NODES
from app.models import WorkItemRow
from app.virt.driver import EventKind, HypervisorEvent
from app.virt.libvirt_driver import connect
from app.worker.connections import NodeConnections
from app.worker.events import EventBridge
from tests.conftest import ADMIN_TOKEN, LiveServer, bearer, wait_for


def cluster() -> list[str]:
    version = max(Path("/usr/lib/postgresql").iterdir(), key=lambda p: float(p.name)).name
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def test_a_database_outage_is_503_and_loses_no_event(pg: Database, servers: dict[int, LiveServer]) -> None:
    if id(pg) not in servers:
        servers[id(pg)] = LiveServer(pg)
    server = servers[id(pg)]
    bridge = EventBridge(pg, [NodeReconciler(pg, NodeConnections(connect), heartbeat_seconds=10)])
    bridge.start()
    key = NODES.work_key("", "gone-node")
    client = httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=10)
    try:
        subprocess.run([*cluster(), "stop", "-m", "fast"], check=True, capture_output=True)
        try:
            for method, path in (
                ("GET", "/v1/nodes"),
                ("POST", "/v1/namespaces/default/instances/x/start"),
                ("GET", "/readyz"),
            ):
                answer = client.request(method, path)
                assert answer.status_code == 503, (method, path, answer.text)
                if path != "/readyz":
                    assert answer.headers["Retry-After"] == "2"
                    assert answer.headers["Content-Type"] == "application/problem+json"
                    assert answer.json()["reason"] == "DatabaseUnavailable"
            bridge(  # libvirt said the node's connection closed while the database was away
                "gone-node", HypervisorEvent("test:///default", EventKind.CONNECTION_CLOSED, "Closed", "0")
            )
        finally:
            subprocess.run([*cluster(), "start"], check=True, capture_output=True)
        wait_for(lambda: client.get("/v1/nodes").status_code == 200, timeout=30, what="the API answering")

        def enqueued() -> bool:
            with pg.read() as session:
                return (
                    session.scalars(select(WorkItemRow.key).where(WorkItemRow.key == key)).first() is not None
                )

        wait_for(enqueued, timeout=30, what="the event from the outage enqueued")
    finally:
        client.close()
        bridge.stop()
