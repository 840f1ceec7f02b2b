"""create_app(): routers, problem+json handlers, stable operationIds, the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import Histogram
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.routing import NoMatchFound
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import __version__
from app.api import (
    consoles,
    datavolumes,
    devices,
    guest,
    instances,
    migrations,
    operations,
    pools,
    problems,
    system,
)
from app.api.deps import NodeAccess
from app.api.resources import resource_router
from app.api.threads import limit_request_threads
from app.clock import utc_now
from app.db import API_CHANNELS, Database
from app.kinds import KINDS, Kind
from app.schemas.auth import TokenRequest
from app.schemas.common import WatchEvent
from app.schemas.devices import PermittedHostDevices
from app.schemas.instance import StopOptions
from app.schemas.migration import MigrateOptions
from app.schemas.operations import ExecRequest, FileReadRequest, FileWriteRequest
from app.schemas.pool import ClaimRequest
from app.services.auth import PrincipalCache
from app.services.nodes import mark_unreported, unreported
from app.services.shown import ShownObjects

REQUESTS = Histogram(
    "corral_http_request_duration_seconds",
    "API request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
log = logging.getLogger(__name__)
DESCRIPTION = (
    "Corral runs virtual machines with the ergonomics of containers: KubeVirt-shaped resources (instances, "
    "warm pools, migrations, nodes, host devices) in front of libvirt. Errors are RFC 9457 problem+json; "
    "request bodies are JSON or YAML (send Content-Type: application/yaml); writes take `If-Match` or "
    "`metadata.resourceVersion` as a precondition."
)


async def _mark_unreported_nodes(db: Database, grace_seconds: float) -> None:
    """In the API process, so that nodes whose workers all died still turn Ready=Unknown."""

    def mark() -> None:
        with db.read() as session:
            silent = unreported(session, grace_seconds, utc_now())
        if silent:  # a write transaction only when there is something to write
            with db.transaction() as session:
                for name in mark_unreported(session, silent, grace_seconds, utc_now()):
                    log.warning(
                        "node %s: no worker reported it for %.0fs; Ready=Unknown", name, grace_seconds
                    )

    while True:
        await asyncio.sleep(grace_seconds / 4)
        try:
            await run_in_threadpool(mark)
        except Exception:  # the database may be briefly away: the next round tries again
            log.warning("could not check node heartbeats", exc_info=True)


class RequestMetrics:
    """Latency per method, route and status: plain ASGI (Starlette's BaseHTTPMiddleware costs a task and
    a stream copy per request, and breaks streamed answers' backpressure)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            REQUESTS.labels(scope["method"], route, str(status)).observe(time.perf_counter() - started)


def build_routes(app: FastAPI) -> None:
    """FastAPI builds an included router's routes (their validators and serializers) on the first request
    that reaches it, which then takes a hundred milliseconds or more: build them all before serving. Looking
    up a route name that none has walks every router, so it builds them all."""
    with suppress(NoMatchFound):
        app.url_path_for("corral-builds-every-route")


def create_app(
    db: Database,
    node_grace_seconds: float = 40.0,
    metrics_tenant_labels: bool = False,
    node_access: NodeAccess | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        db.start_listener(API_CHANNELS)
        limit_request_threads(db.pool_size)
        lifecycle = asyncio.create_task(_mark_unreported_nodes(db, node_grace_seconds))
        yield
        lifecycle.cancel()

    app = FastAPI(title="Corral", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.db = db
    app.state.metrics_tenant_labels = metrics_tenant_labels
    app.state.node_access = node_access
    app.state.principals = PrincipalCache(db.hub)
    app.state.principal_lookups = {}  # the token lookups in flight, by event loop and Authorization header
    problems.install(app)
    app.include_router(system.router)
    app.state.shown = ShownObjects()  # one per app: what each object looks like at its resourceVersion
    for kind in KINDS.values():
        app.include_router(resource_router(kind, app.state.shown))
    app.include_router(instances.router)
    app.include_router(pools.router)
    app.include_router(migrations.router)
    app.include_router(migrations.drain_router)
    app.include_router(devices.router)
    app.include_router(guest.router)
    app.include_router(operations.router)
    app.include_router(datavolumes.router)
    app.include_router(consoles.router)

    app.add_middleware(RequestMetrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            # Bodies are parsed by Corral (JSON or YAML), so FastAPI does not see their models: add them.
            parsed_bodies: list[type[BaseModel]] = [k.body_model for k in KINDS.values()]
            parsed_bodies += [
                TokenRequest,
                WatchEvent,
                StopOptions,
                ClaimRequest,
                MigrateOptions,
                PermittedHostDevices,
            ]
            parsed_bodies += [ExecRequest, FileReadRequest, FileWriteRequest]
            for model in parsed_bodies:
                model_schema = model.model_json_schema(
                    by_alias=True, ref_template="#/components/schemas/{model}"
                )
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            _problems_everywhere(schema)
            _headers_documented(schema, {k.object_model.__name__ for k in KINDS.values()})
            _links(schema, KINDS.values())
            for kind in KINDS.values():  # the apiVersions and kind each body may name (None: the path's)
                fields = components[kind.body_model.__name__]["properties"]
                fields["apiVersion"]["enum"] = [*kind.api_versions, None]
                fields["kind"]["enum"] = [kind.kind, None]
            schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _links(schema: dict[str, Any], kinds: Iterable[Kind[Any]]) -> None:
    """OpenAPI links from each create to the operations on the object it made (the stateful tests and
    generated clients follow them)."""
    operations = {
        op["operationId"]: op
        for path in schema["paths"].values()
        for op in path.values()
        if "operationId" in op
    }
    for kind in kinds:
        create = operations.get(f"create{kind.singular}")
        if create is None:
            continue
        parameters = {"name": "$response.body#/metadata/name"}
        if kind.namespaced:
            parameters["namespace"] = "$request.path.namespace"
        create["responses"]["201"]["links"] = {
            f"{verb}{kind.singular}": {"operationId": f"{verb}{kind.singular}", "parameters": parameters}
            for verb in ("read", "replace", "patch", "delete")
            if f"{verb}{kind.singular}" in operations
        }


def _headers_documented(schema: dict[str, Any], object_schemas: set[str]) -> None:
    """The response headers the server sets: ETag on every answer that is one object (its resourceVersion,
    for If-Match), Location on every 201 that made one, Retry-After on every 503."""
    etag = {
        "description": "The object's resourceVersion, quoted: send it as If-Match",
        "schema": {"type": "string"},
    }
    location = {"description": "The created object's path", "schema": {"type": "string"}}
    retry = {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for code, response in operation.get("responses", {}).items():
                headers = response.setdefault("headers", {})
                ref = str(
                    response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
                )
                one_object = ref.rsplit("/", 1)[-1] in object_schemas
                if code.startswith("2") and one_object:
                    headers["ETag"] = etag
                if code == "201" and one_object:
                    headers["Location"] = location
                if code == "503":
                    headers["Retry-After"] = retry
                if not headers:
                    del response["headers"]


def _problems_everywhere(schema: dict[str, Any]) -> None:
    """Every error answer is application/problem+json with the Problem schema, as the server sends it."""
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for code, response in operation.get("responses", {}).items():
                if code[0] in "45":
                    response["content"] = problem
