"""Routes that retry a request whose transaction lost a race in the database (a deadlock or serialization
failure): the client sees the answer of the retry, not the race."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette._utils import get_route_path
from starlette.routing import Match
from starlette.types import Scope

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


class PrefilteredRouter(APIRouter):
    """A router that looks at its routes one by one only for a path one of them serves. The application
    asks each included router in turn, and each walks its routes in Python: a claim, whose router comes
    after a dozen others, spent about a third of a millisecond finding its route, as long as the rest of
    its request. One regular expression of all the router's paths rejects the others at once. Method
    mismatches still reach the routes, for 405. Routers are included without a prefix of their own."""

    _paths: tuple[int, re.Pattern[str]] | None = None  # (how many routes it was built from, the pattern)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] in ("http", "websocket") and not self._serves(get_route_path(scope)):
            return Match.NONE, {}
        return super().matches(scope)

    def _serves(self, path: str) -> bool:
        if self._paths is None or self._paths[0] != len(self.routes):
            # Group names repeat from route to route, and one pattern may use each only once.
            patterns = [
                re.sub(r"[(][?]P<[^>]+>", "(?:", route.path_regex.pattern)
                for route in self.routes
                if hasattr(route, "path_regex")
            ]
            # A route not matched by its path (a Host) leaves every path to the routes themselves.
            pattern = "|".join(f"(?:{p})" for p in patterns) if len(patterns) == len(self.routes) else ""
            self._paths = (len(self.routes), re.compile(pattern))
        return self._paths[1].match(path) is not None


def api_router(**options: Any) -> APIRouter:
    """Every router of the API: its routes retry requests that lost a race in the database."""
    return PrefilteredRouter(route_class=RetryingRoute, **options)
