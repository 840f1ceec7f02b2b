"""Routes that retry a request whose transaction lost a race in the database (a deadlock or serialization
failure): the client sees the answer of the retry, not the race."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from app.db import transient_failure

ATTEMPTS = 4


class RetryingRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def retrying(request: Request) -> Response:
            attempt = 1
            while True:
                try:
                    return await handle(request)
                except Exception as exc:
                    if attempt == ATTEMPTS or transient_failure(exc) != "contention":
                        raise
                # The body was read once and is cached on the request; the handler runs again whole.
                await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
                attempt += 1

        return retrying


def api_router(**options: Any) -> APIRouter:
    """Every router of the API: its routes retry requests that lost a race in the database."""
    return APIRouter(route_class=RetryingRoute, **options)
