"""The server side of `corral`: serve (API and worker in one process), api, worker, db-upgrade, openapi."""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import click

from app.config import Settings, get_settings

log = logging.getLogger("corral")


def _database(settings: Settings) -> Any:
    from app import migrate
    from app.db import Database

    url = settings.resolved_database_url()
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.auto_migrate:
        migrate.upgrade(url)
    return Database(url)


def _bootstrap_token(db: Any, settings: Settings) -> None:
    from app.services.auth import bootstrap_admin

    with db.transaction() as session:
        minted = bootstrap_admin(session, settings.admin_token)
    if minted:
        path = settings.data_dir / "admin-token"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(minted + "\n")
        log.warning(
            "no CORRAL_ADMIN_TOKEN set: minted an admin token, stored in %s (mode 0600)", path.resolve()
        )


def _serve_http(db: Any, host: str, port: int) -> None:
    import uvicorn

    from app.api.deps import NodeAccess
    from app.main import build_routes, create_app
    from app.virt.libvirt_driver import connect

    settings = get_settings()
    access = NodeAccess(connect, settings.data_dir / "uploads", settings.max_disk_bytes)
    app = create_app(db, settings.node_grace_seconds, settings.metrics_tenant_labels, access)
    build_routes(app)
    freeze_heap()
    # Watches stream until the client leaves: bound the wait for them at shutdown.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> None:
    """Two malloc arenas instead of glibc's eight per core: the request and reconcile threads otherwise
    each grow an arena of their own, which costs a server tens of MiB of RSS and buys it nothing (the GIL
    serializes them anyway). Before any thread starts; MALLOC_ARENA_MAX in the environment wins."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    with suppress(OSError, AttributeError):  # not glibc (musl has no arenas to limit)
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def freeze_heap() -> None:
    """Leave what startup built (routes, validators, mappers: hundreds of thousands of objects) out of the
    garbage collector's full passes, which otherwise stall the process for 100-200 ms now and then."""
    gc.collect()
    gc.freeze()


def _run_worker(db: Any, settings: Settings) -> Any:
    from app.worker.main import build_worker, register_local_node

    register_local_node(db, settings)
    process = build_worker(db, settings)
    process.start()
    return process


def _api_database() -> tuple[Settings, Any]:
    """The settings and the migrated database, with the bootstrap admin token in place."""
    settings = get_settings()
    db = _database(settings)
    _bootstrap_token(db, settings)
    return settings, db


def listen(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--port", type=int, default=8080, show_default=True)(command)
    return click.option("--host", default="127.0.0.1", show_default=True)(command)


@click.command()
@listen
def serve(host: str, port: int) -> None:
    """API and worker in one process (embedded defaults)."""
    limit_malloc_arenas()
    settings, db = _api_database()
    process = _run_worker(db, settings)
    try:
        _serve_http(db, host, port)
    finally:
        process.stop()


@click.command()
@listen
def api(host: str, port: int) -> None:
    """The API server alone."""
    limit_malloc_arenas()
    _serve_http(_api_database()[1], host, port)


@click.command()
def worker() -> None:
    """The reconcile worker alone."""
    limit_malloc_arenas()
    settings = get_settings()
    db = _database(settings)
    process = _run_worker(db, settings)
    freeze_heap()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    process.stop()


def openapi_document() -> str:
    from app.db import Database
    from app.main import create_app

    document = create_app(Database("sqlite://")).openapi()
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="write to this file")
def openapi(output: str | None) -> None:
    """Print the OpenAPI document (openapi/openapi.json)."""
    if output:
        Path(output).write_text(openapi_document())
    else:
        sys.stdout.write(openapi_document())


@click.command("db-upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the latest revision."""
    from app import migrate

    migrate.upgrade(get_settings().resolved_database_url())
    click.echo(f"schema at {migrate.head_revision()}")


SERVER_COMMANDS = (serve, api, worker, openapi, db_upgrade)
