"""Shared fixtures: a migrated database per test (real Postgres, and the embedded SQLite), a live API server,
admin credentials. Missing Postgres or libvirtd fails the run loudly; nothing is skipped."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import migrate
from app.api.deps import NodeAccess
from app.db import CHANNELS, Database
from app.main import create_app
from app.models import Base
from app.services.auth import bootstrap_admin
from app.virt.libvirt_driver import connect
from tests.registry import Registry, disk_layer

ADMIN_TOKEN = "crl_test-admin-" + uuid.uuid4().hex
PG_ADMIN_URL = os.environ.get(
    "CORRAL_TEST_DATABASE_URL", "postgresql+psycopg://corral:corral@127.0.0.1/corral"
)
# Every table a test may fill; the revision counter is reset, not emptied.
# node_allocations is kept by triggers on instances (deleting those writes it): emptied after them.
TABLES = tuple(
    sorted(
        (t.name for t in Base.metadata.sorted_tables if t.name != "revisions"),
        key=lambda name: name == "node_allocations",
    )
)


def _pg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this run, migrated with Alembic (which proves the migrations)."""
    name = f"corral_test_{os.getpid()}"
    try:
        admin = psycopg.connect(_pg_dsn(PG_ADMIN_URL), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required for the test suite ({PG_ADMIN_URL}): {exc}. Run scripts/setup-host.sh.",
            pytrace=False,
        )
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    with psycopg.connect(_pg_dsn(PG_ADMIN_URL), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def reset(db: Database) -> None:
    with db.transaction() as session:
        if db.is_postgres:
            session.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                session.execute(text(f"DELETE FROM {table}"))
        session.execute(text("UPDATE revisions SET value = 0"))
        bootstrap_admin(session, ADMIN_TOKEN)


@pytest.fixture(scope="session")
def pg_db(pg_url: str) -> Iterator[Database]:
    db = Database(pg_url)
    db.start_listener(CHANNELS)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def sqlite_db(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("sqlite-db") / "corral.db"
    shutil.copy(sqlite_template, path)
    db = Database(f"sqlite:///{path}")
    yield db
    db.dispose()


@pytest.fixture(params=["pg", "sqlite"])
def db(request: pytest.FixtureRequest) -> Database:
    """A migrated, emptied database: each API test runs on Postgres and on the embedded SQLite."""
    database: Database = request.getfixturevalue(f"{request.param}_db")
    reset(database)
    return database


@pytest.fixture
def pg(pg_db: Database) -> Database:
    """Postgres only (workers in several processes need a server database)."""
    reset(pg_db)
    return pg_db


class LiveServer:
    """uvicorn in a thread: real HTTP, real streaming (watch), the app sharing the test's Database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.sock = sock
        config = uvicorn.Config(
            create_app(
                db, node_access=NodeAccess(connect, Path(tempfile.gettempdir()) / "corral-test-uploads")
            ),
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the test API server did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@contextmanager
def server_with_pool(url: str, pool_size: int) -> Iterator[LiveServer]:
    """An API process of its own on the database at `url`, keeping `pool_size` connections (and as many
    request threads)."""
    db = Database(url, pool_size=pool_size)
    server = LiveServer(db)
    try:
        yield server
    finally:
        server.stop()
        db.dispose()


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[int, LiveServer]]:
    running: dict[int, LiveServer] = {}
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture
def server(db: Database, servers: dict[int, LiveServer]) -> LiveServer:
    if id(db) not in servers:
        servers[id(db)] = LiveServer(db)
    return servers[id(db)]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api(server: LiveServer) -> Iterator[httpx.Client]:
    """An httpx client against the live server, authenticated as cluster admin."""
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=30) as client:
        yield client


@pytest.fixture
def anon(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def make_token(api: httpx.Client, name: str, grants: list[dict[str, str]]) -> str:
    response = api.post("/v1/tokens", json={"name": name, "grants": grants})
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def vmi(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "labels": labels},
        "spec": {"domain": {"resources": {"requests": {"cpu": "1", "memory": "128Mi"}}}},
    }


IMAGE_DIR = Path(os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images"))


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(interval)


def conditions(obj: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}


TEST_GUEST_DISK = IMAGE_DIR / "corral" / "test-guest" / "latest" / "containerdisk.qcow2"


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A real OCI registry on loopback holding the test guest as containerDisks: `containerdisks/test-guest`
    (tags latest and gzip-free `plain`) and, under the founding manifests' name, `containerdisks/ubuntu:22.04`
    (it is the test guest, not Ubuntu)."""
    served = Registry(tmp_path_factory.mktemp("registry"))
    served.start()
    layer = disk_layer(TEST_GUEST_DISK)
    for repository, tag in (("containerdisks/test-guest", "latest"), ("containerdisks/ubuntu", "22.04")):
        served.push_image(repository, tag, [layer])
    served.push_image(
        "containerdisks/test-guest", "plain", [disk_layer(TEST_GUEST_DISK, compress=False)], compressed=False
    )
    yield served
    served.stop()


def worker_settings(registry: Registry, **overrides: Any) -> Any:
    """Settings for a test worker: fast heartbeats, the test registry searched for short image names."""
    from app.config import Settings

    values: dict[str, Any] = {
        "image_dir": IMAGE_DIR,
        "heartbeat_seconds": 2,
        "resync_seconds": 30,
        "lease_seconds": 10,
        "device_inventory_seconds": 2,
        "image_registries": f"{registry.host}/containerdisks",
        "insecure_registries": registry.host,
        "import_allowed_hosts": "127.0.0.1",  # the tests' import server; localhost stays refused
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def worker(pg: Database, registry: Registry, tmp_path: Path) -> Iterator[Any]:
    """The real worker (reconcilers, libvirt connections, event bridge) in this process, on Postgres."""
    from app.worker.main import build_worker

    settings = worker_settings(registry, data_dir=tmp_path)
    process = build_worker(pg, settings)
    process.start()
    yield process
    process.stop()


def add_node(api: httpx.Client, name: str, uri: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    created = api.post(
        "/v1/nodes", json={"metadata": {"name": name, "labels": labels or {}}, "spec": {"uri": uri}}
    )
    assert created.status_code == 201, created.text
    return wait_for(
        lambda: (n := api.get(f"/v1/nodes/{name}").json())["status"].get("phase") == "Ready" and n,
        timeout=30,
        what=f"node {name} Ready",
    )
