"""The controller tests run the real API and worker on Postgres, with libvirt's test driver as node `td`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.db import Database
from app.virt.driver import Hypervisor
from app.virt.libvirt_driver import connect
from tests.conftest import ADMIN_TOKEN, add_node, bearer


@pytest.fixture
def db(pg: Database) -> Database:
    return pg


@pytest.fixture
def api(pg: Database, worker: Any, server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=30) as client:
        add_node(client, "td", "test:///default", {"driver": "test"})
        yield client


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    """A connection of this test's own to test:///default (one shared host per process: the worker's)."""
    conn = connect("test:///default")
    yield conn
    conn.close()
