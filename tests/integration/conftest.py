"""The real-guest tests' shared rig: the worker in this process on Postgres, the test registry searched,
the local libvirtd as node `local`, and everything the test made removed before the worker stops (guests
outlive it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import Database
from app.worker.main import build_worker
from tests.conftest import ADMIN_TOKEN, add_node, bearer, wait_for, worker_settings
from tests.registry import Registry

INSTANCES = "/v1/namespaces/default/instances"
DATAVOLUMES = "/v1/namespaces/default/datavolumes"


@pytest.fixture
def db(pg: Database) -> Database:
    return pg


@pytest.fixture
def api(pg: Database, registry: Registry, server: Any, tmp_path: Path) -> Iterator[httpx.Client]:
    process = build_worker(pg, worker_settings(registry, data_dir=tmp_path))
    process.start()
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=60) as client:
        add_node(client, "local", "qemu:///system")
        try:
            yield client
        finally:
            for path, wait in ((INSTANCES, 90), (DATAVOLUMES, 30)):  # instances first: they hold the disks
                for item in client.get(path).json()["items"]:
                    client.delete(f"{path}/{item['metadata']['name']}")
                wait_for(
                    lambda p=path: not client.get(p).json()["items"], timeout=wait, what=f"{path} emptied"
                )
            process.stop()
