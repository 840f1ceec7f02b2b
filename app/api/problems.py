"""RFC 9457 problem+json for every error the API answers."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from app.db import transient_failure
from app.errors import CorralError, FieldError
from app.services.validation import field_path

log = logging.getLogger(__name__)
PROBLEM = "application/problem+json"
TYPE_BASE = "https://corral.dev/problems/"
DATABASE_RETRY_SECONDS = 2  # a restarting Postgres answers again within a few seconds


def problem_response(
    status: int,
    title: str,
    detail: str,
    reason: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    instance: str | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + reason,
        "title": title,
        "status": status,
        "detail": detail,
        "reason": reason,
        "errors": [{"field": e.field, "message": e.message} for e in errors or []],
    }
    if instance:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (each method is its own route, and the router names only
    the first route that matched the path)."""
    routes = request.app.router.routes
    served = [
        m
        for m in HTTP_METHODS
        if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)
    ]
    return ", ".join(served)


def install(app: FastAPI) -> None:
    @app.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> JSONResponse:
        return problem_response(
            exc.status, exc.title, exc.detail, exc.reason, exc.errors, exc.headers, request.url.path
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            loc = tuple(err.get("loc", ()))
            # ("query", "limit") -> "limit": clients know where they put a parameter.
            if loc and loc[0] in ("query", "path", "header", "body"):
                loc = loc[1:]
            errors.append(FieldError(field_path(loc) or "request", str(err.get("msg", "invalid"))))
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors[:5])
        return problem_response(
            422,
            "Unprocessable Content",
            f"the request is invalid: {detail}",
            "Invalid",
            errors,
            instance=request.url.path,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        reasons = {404: "NotFound", 405: "MethodNotAllowed"}
        detail = str(exc.detail) if exc.detail else "error"
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            detail = f"no route {request.url.path}"
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
        return problem_response(
            exc.status_code,
            "Method Not Allowed" if exc.status_code == 405 else detail.split(":")[0],
            detail,
            reasons.get(exc.status_code, "Error"),
            headers=headers,
            instance=request.url.path,
        )

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        kind = transient_failure(exc)
        if kind is None:
            return await unexpected(request, exc)
        log.warning("database %s on %s %s: %s", kind, request.method, request.url.path, exc.orig)
        outage = kind == "outage"
        detail = (
            "the database is not answering; retry shortly"
            if outage
            else "the request kept losing races with other writers; retry"
        )
        return problem_response(
            503,
            "Service Unavailable",
            detail,
            "DatabaseUnavailable" if outage else "DatabaseBusy",
            headers={"Retry-After": str(DATABASE_RETRY_SECONDS if outage else 1)},
            instance=request.url.path,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "Internal Server Error",
            "an unexpected error occurred; see the server log",
            "InternalError",
            instance=request.url.path,
        )
