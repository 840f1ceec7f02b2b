"""Health, readiness, metrics, and API tokens."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import Field, ValidationError

from app.api.deps import DB, Caller, ObjectBody
from app.api.resources import PROBLEMS, request_body
from app.api.routing import api_router
from app.db import Database
from app.schemas.auth import Role, TokenCreated, TokenList, TokenRequest, WhoAmI
from app.schemas.common import ApiModel
from app.services import auth, health
from app.services.validation import invalid

router = api_router()
PUBLIC: dict[str, object] = {"security": []}  # OpenAPI: no token needed
TOKEN_OPTIONAL: dict[str, object] = {"security": [{}, {"bearer": []}]}  # a token adds to the answer


@router.get(
    "/healthz",
    operation_id="healthz",
    tags=["system"],
    summary="Liveness: the process answers",
    openapi_extra=PUBLIC,
)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


class Readiness(ApiModel):
    status: Literal["ok", "not ready"]
    problems: list[str] = Field(default_factory=list)


@router.get(
    "/readyz",
    operation_id="readyz",
    tags=["system"],
    summary="Readiness: the database answers at the expected schema revision",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready: `problems` says why"}},
    openapi_extra=PUBLIC,
)
def readyz(db: DB) -> Any:
    problems = health.readiness(db)
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return {"status": "ok"}


@router.get(
    "/metrics",
    operation_id="metrics",
    tags=["system"],
    summary="Prometheus metrics (series naming namespaces and pools need a token with a cluster-wide role)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    openapi_extra=TOKEN_OPTIONAL,
)
def metrics(request: Request, db: DB) -> Response:
    health.refresh_gauges(db)
    body = generate_latest()
    if request.app.state.metrics_tenant_labels or _sees_every_namespace(
        db, request.headers.get("authorization")
    ):
        body += generate_latest(health.TENANT_REGISTRY)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def _sees_every_namespace(db: Database, authorization: str | None) -> bool:
    """Whether the caller holds a cluster-wide role (a bad token is refused; no token sees aggregates)."""
    if authorization is None:
        return False
    with db.read() as session:
        return auth.authenticate(session, authorization).cluster_role is not None


@router.get(
    "/v1/whoami",
    operation_id="whoAmI",
    tags=["tokens"],
    response_model=WhoAmI,
    responses=PROBLEMS,
    summary="The caller's token name and grants",
)
def whoami(caller: Caller) -> dict[str, Any]:
    return {
        "name": caller.name,
        "grants": [{"namespace": ns, "role": r.name} for ns, r in caller.grants.items()],
    }


def _token(row: Any) -> dict[str, Any]:
    return {
        "name": row.name,
        "createdAt": row.created_at,
        "grants": [{"namespace": g.namespace, "role": g.role} for g in row.grants],
    }


@router.get(
    "/v1/tokens",
    operation_id="listTokens",
    tags=["tokens"],
    response_model=TokenList,
    responses=PROBLEMS,
    summary="List API tokens (admin)",
)
def list_tokens(db: DB, caller: Caller) -> dict[str, Any]:
    caller.require(Role.admin, None)
    with db.transaction() as session:
        return {"items": [_token(t) for t in auth.list_tokens(session)]}


@router.post(
    "/v1/tokens",
    operation_id="createToken",
    tags=["tokens"],
    status_code=201,
    response_model=TokenCreated,
    responses=PROBLEMS,
    openapi_extra=request_body("TokenRequest"),
    summary="Create an API token with per-namespace roles (admin); the secret is shown once",
)
def create_token(db: DB, caller: Caller, body: ObjectBody) -> dict[str, Any]:
    caller.require(Role.admin, None)
    try:
        request = TokenRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid(exc) from exc
    with db.transaction() as session:
        row, secret = auth.create_token(
            session, request.name, {g.namespace: Role[g.role] for g in request.grants}
        )
        return {**_token(row), "token": secret}


@router.delete(
    "/v1/tokens/{name}",
    operation_id="deleteToken",
    tags=["tokens"],
    status_code=204,
    responses=PROBLEMS,
    summary="Revoke an API token (admin)",
)
def delete_token(db: DB, caller: Caller, name: str) -> Response:
    caller.require(Role.admin, None)
    with db.transaction() as session:
        auth.delete_token(session, name)
    return Response(status_code=204)
