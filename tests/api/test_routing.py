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
from starlette.routing import Match
from starlette.types import Scope

from app.api.routing import PrefilteredRouter, api_router
from app.db import Database
from app.main import create_app


class CountedRoute(APIRoute):
    looked_at = 0

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        CountedRoute.looked_at += 1
        return super().matches(scope)


def answer(app: FastAPI, method: str, path: str) -> httpx.Response:
    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
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
