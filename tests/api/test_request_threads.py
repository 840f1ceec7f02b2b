"""A burst of requests larger than the database pool waits for request threads instead of opening Postgres
connections beyond the pool (each a server process forked, then closed)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import event

from app.db import Database
from tests.conftest import ADMIN_TOKEN, bearer, server_with_pool


def test_a_burst_past_the_pool_opens_no_connection_beyond_it(pg: Database, pg_url: str) -> None:
    opened: list[Any] = []

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=bearer(ADMIN_TOKEN), timeout=30) as client:
            await client.get("/v1/namespaces/default/instances")  # the token, looked up once
            return await asyncio.gather(*(client.get("/v1/namespaces/default/instances") for _ in range(48)))

    with server_with_pool(pg_url, 3) as server:
        event.listen(server.db.engine, "connect", lambda connection, _record: opened.append(connection))
        answers = asyncio.run(burst(server.url))
    assert [answer.status_code for answer in answers] == [200] * 48
    assert 1 <= len(opened) <= 3
