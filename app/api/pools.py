"""The claim: one warm member handed over in milliseconds, or 503 with Retry-After (or a bounded wait)."""

import asyncio
import time
import weakref
from typing import Annotated, Any

from fastapi import Query, Request
from prometheus_client import Counter, Histogram
from starlette.concurrency import run_in_threadpool

from app.api.deps import DB, Caller, Shown, optional_body, poll_until, shown_object
from app.api.resources import PROBLEMS, NamePath, NamespacePath
from app.api.routing import api_router
from app.db import EVENTS_CHANNEL, Database
from app.errors import CorralError, Unavailable
from app.kinds import INSTANCES, POOLS
from app.schemas.common import JsonObject
from app.schemas.instance import Instance
from app.services.health import TENANT_REGISTRY
from app.services.pools import PoolService

router = api_router(tags=["pools"])
CLAIM_SECONDS = Histogram(
    "corral_pool_claim_duration_seconds",
    "Claim latency (answered claims)",
    ["result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)
CLAIMS = Counter(
    "corral_pool_claims_total",
    "Claims by outcome: hit (a member) or miss (none ready)",
    ["namespace", "pool", "result"],
    registry=TENANT_REGISTRY,
)
RETRY_AFTER_SECONDS = 5
CLAIM_LINGER_SECONDS = 0.001
# 32 racing claims take 15-23 ms to come in through one API process (parsing, authentication): a 5-ms cap
# split a quarter of such races in two, the rest waiting out the first part's whole transaction.
CLAIM_LINGER_MAX_SECONDS = 0.02


class ClaimDesk:
    """Claims of a pool that arrive while a batch of them is being served wait, and are then served together
    in one transaction: a burst of claims costs a few short transactions instead of one each, queued behind
    the pool row's lock."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiting: dict[tuple[str, str], list[tuple[Any, asyncio.Future[JsonObject | None]]]] = {}
        self._serving: dict[tuple[str, str], asyncio.Task[None]] = {}  # (the event loop's thread only)

    async def claim(self, namespace: str, name: str, body: Any) -> JsonObject | None:
        key = (namespace, name)
        answer: asyncio.Future[JsonObject | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((body, answer))
        if key not in self._serving:  # a task of its own: a client that goes away cancels only its wait
            self._serving[key] = asyncio.create_task(self._serve(key))
        return await asyncio.shield(answer)

    async def _serve(self, key: tuple[str, str]) -> None:
        try:
            await self._gathered(key)
            while batch := self._waiting.pop(key, None):
                answers: list[JsonObject | Exception | None]
                try:
                    answers = list(await run_in_threadpool(self._claim_many, key, [b for b, _ in batch]))
                except Exception as exc:  # the transaction failed: every claim in it did
                    answers = [exc] * len(batch)
                for (_, future), answer in zip(batch, answers, strict=True):
                    if future.done():
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            del self._serving[key]

    async def _gathered(self, key: tuple[str, str]) -> None:
        """Let the rest of a burst come in first: wait while the last millisecond brought more claims of
        the pool, up to 20 ms. A burst then costs one transaction, run while the event loop is idle, instead
        of a first claim's transaction fighting the burst's requests for the GIL (several times slower) and
        the rest waiting behind it."""
        deadline = time.monotonic() + CLAIM_LINGER_MAX_SECONDS
        waiting = 0
        while waiting != (waiting := len(self._waiting.get(key, ()))) and time.monotonic() < deadline:
            await asyncio.sleep(CLAIM_LINGER_SECONDS)

    def _claim_many(self, key: tuple[str, str], bodies: list[Any]) -> list[JsonObject | CorralError | None]:
        with self.db.transaction() as session:
            return PoolService(session).claim_many(*key, bodies)


_desks: weakref.WeakKeyDictionary[Database, ClaimDesk] = weakref.WeakKeyDictionary()


def desk_for(db: Database) -> ClaimDesk:
    desk = _desks.get(db)
    if desk is None:
        desk = _desks[db] = ClaimDesk(db)
    return desk


@router.post(
    "/v1/namespaces/{namespace}/pools/{name}/claim",
    operation_id="claimPool",
    status_code=201,
    response_model=Instance,
    response_model_exclude_none=True,
    responses={**PROBLEMS, 503: {"description": "No member is ready; retry after Retry-After seconds"}},
    summary="Claim a warm instance from the pool",
    description="Atomically hands over one ready member: it leaves the pool, keeps running, takes the name "
    "and labels asked for, and is returned as an ordinary instance. Without one: 503 with Retry-After, or "
    "with `waitSeconds` the request waits up to that long for one.",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ClaimRequest"}}},
        }
    },
)
async def claim(
    request: Request,
    db: DB,
    caller: Caller,
    shown: Shown,
    namespace: NamespacePath,
    name: NamePath,
    wait_seconds: Annotated[float, Query(alias="waitSeconds", ge=0, le=300)] = 0,
) -> Any:
    started = time.perf_counter()
    caller.require_write(POOLS.read_role, INSTANCES.write_role, namespace)
    body = await optional_body(request)

    desk = desk_for(db)
    claimed = await poll_until(  # member status writes wake it
        db, EVENTS_CHANNEL, lambda: desk.claim(namespace, name, body), wait_seconds
    )
    result = "hit" if claimed is not None else "miss"
    CLAIMS.labels(namespace, name, result).inc()
    CLAIM_SECONDS.labels(result).observe(time.perf_counter() - started)
    if claimed is None:
        raise Unavailable(
            f"pool {name!r} has no ready member; retry after {RETRY_AFTER_SECONDS}s",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    location = f"/v1/namespaces/{namespace}/instances/{claimed['metadata']['name']}"
    return shown_object(shown, INSTANCES, claimed, 201, Location=location)
