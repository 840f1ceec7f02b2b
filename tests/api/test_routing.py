"""Routing: a router that serves none of a request's path does not walk its routes, and every operation of the
API is still found."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Host, Match, Route
from starlette.types import Scope

from app.api.routing import PrefilteredRouter, api_router
from app.db import Database
from app.main import create_app


class CountedRoute(APIRoute):
    looked_at = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        CountedRoute.looked_at += 1
        return super().matches(scope)


def answer(app: FastAPI, method: str, path: str, host: str = "corral.test") -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            return await client.request(method, path)

    return asyncio.run(send())


@pytest.fixture
def app() -> FastAPI:
    counted = PrefilteredRouter(route_class=CountedRoute)
    later = api_router()

    @counted.get("/v1/namespaces/{namespace}/things/{name}")
    async def read(namespace: str, name: str) -> dict[str, Any]:
        return {"namespace": namespace, "name": name}

    @later.post("/v1/namespaces/{namespace}/pools/{name}/claim")
    async def claim(namespace: str, name: str) -> dict[str, Any]:
        return {"claimed": name}

    app = FastAPI()
    app.include_router(counted)
    app.include_router(later)
    CountedRoute.looked_at = 0
    return app


def test_a_router_serving_none_of_the_path_is_skipped_without_walking_its_routes(app: FastAPI) -> None:
    claimed = answer(app, "POST", "/v1/namespaces/a/pools/p/claim")
    assert claimed.status_code == 200 and claimed.json() == {"claimed": "p"}
    assert CountedRoute.looked_at == 0


def test_its_own_paths_still_match_and_a_wrong_method_is_still_405(app: FastAPI) -> None:
    assert answer(app, "GET", "/v1/namespaces/a/things/t").json() == {"namespace": "a", "name": "t"}
    assert CountedRoute.looked_at > 0
    assert answer(app, "PUT", "/v1/namespaces/a/things/t").status_code == 405
    assert answer(app, "GET", "/v1/namespaces/a/things").status_code == 404
    assert answer(app, "GET", "/v1/namespaces/a/things/t/more").status_code == 404


def test_a_router_with_a_route_not_matched_by_path_leaves_every_path_to_its_routes() -> None:
    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"hello from {request.url.hostname}")

    router = PrefilteredRouter()

    @router.get("/v1/things")
    async def things() -> list[str]:
        return []

    router.routes.append(Host("docs.corral.test", app=Starlette(routes=[Route("/guide", hello)])))
    app = FastAPI()
    app.include_router(router)
    assert answer(app, "GET", "/guide", host="docs.corral.test").text == "hello from docs.corral.test"
    assert answer(app, "GET", "/v1/things").json() == []


def test_every_operation_of_the_api_is_found(db: Database) -> None:
    corral = create_app(db)
    operations = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, item in corral.openapi()["paths"].items()
        for method in item
    ]
    assert len(operations) > 80
    for method, path in operations:
        scope = {"type": "http", "method": method, "path": path, "root_path": "", "path_params": {}}
        found = [route for route in corral.router.routes if route.matches(scope)[0] is Match.FULL]
        assert found, f"{method} {path}: no route"
