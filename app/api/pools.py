"""The claim: one warm member handed over in milliseconds, or 503 with Retry-After (or a bounded wait)."""

import time
from typing import Annotated, Any

from fastapi import Query, Request, Response
from prometheus_client import Counter, Histogram

from app.api.deps import DB, Caller, optional_body, poll_until, with_etag
from app.api.resources import PROBLEMS, NamePath, NamespacePath
from app.api.routing import api_router
from app.db import EVENTS_CHANNEL
from app.errors import Unavailable
from app.kinds import INSTANCES, POOLS
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
    response: Response,
    db: DB,
    caller: Caller,
    namespace: NamespacePath,
    name: NamePath,
    wait_seconds: Annotated[float, Query(alias="waitSeconds", ge=0, le=300)] = 0,
) -> Any:
    started = time.perf_counter()
    caller.require_write(POOLS.read_role, INSTANCES.write_role, namespace)
    body = await optional_body(request)

    def attempt() -> dict[str, Any] | None:
        with db.transaction() as session:
            return PoolService(session).claim(namespace, name, body)

    claimed = await poll_until(db, EVENTS_CHANNEL, attempt, wait_seconds)  # member status writes wake it
    result = "hit" if claimed is not None else "miss"
    CLAIMS.labels(namespace, name, result).inc()
    CLAIM_SECONDS.labels(result).observe(time.perf_counter() - started)
    if claimed is None:
        raise Unavailable(
            f"pool {name!r} has no ready member; retry after {RETRY_AFTER_SECONDS}s",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    response.headers["Location"] = f"/v1/namespaces/{namespace}/instances/{claimed['metadata']['name']}"
    return with_etag(response, claimed)
