"""Typed dependencies of the routes: the database, the caller, request bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from fastapi import Depends, Header, Request, Response

from app.db import Database
from app.errors import BadRequest, FieldError, Unavailable, UnsupportedMediaType
from app.kinds import Kind
from app.services.auth import Principal, PrincipalCache, authenticate
from app.services.shared_calls import Pending, shared_in_thread
from app.services.shown import ShownObjects
from app.virt.driver import Hypervisor

T = TypeVar("T")
MAX_BODY_BYTES = 8 * 1024 * 1024  # room for a 4 MiB guest file in base64
JSON_TYPES = ("application/json", "application/merge-patch+json")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


def _load_yaml(raw: bytes) -> Any:
    # Anchors and aliases are refused: an alias bomb expands into gigabytes during validation.
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(raw, Loader=yaml.SafeLoader)):
        raise BadRequest("YAML aliases are not accepted", [FieldError("body", "contains a YAML alias")])
    return yaml.safe_load(raw)


@dataclass(frozen=True)
class NodeAccess:
    """What the API needs to reach a node's libvirt itself (uploads, consoles): how to connect, and where
    to stage uploads."""

    connect: Callable[[str], Hypervisor]
    scratch: Path
    max_disk_bytes: int = 2 << 40
    volume_dir: str = "/var/lib/corral/instances"


def etag(obj: dict[str, Any]) -> str:
    """The object's resourceVersion as an ETag (for If-Match)."""
    return f'"{obj["metadata"]["resourceVersion"]}"'


def shown_object(
    shown: ShownObjects, kind: Kind[Any], obj: dict[str, Any], status_code: int = 200, **headers: str
) -> Response:
    """The object as its response model shows it (encoded once per resourceVersion, and not validated again
    by FastAPI), its resourceVersion as the ETag (for If-Match)."""
    return Response(
        shown.encoded(kind, obj), status_code, {"ETag": etag(obj), **headers}, media_type="application/json"
    )


# Dependencies are async even when they do not wait: FastAPI runs a plain `def` one in the thread pool, a
# thread hop per request for reading app.state.
async def shown_objects(request: Request) -> ShownObjects:
    shown: ShownObjects = request.app.state.shown
    return shown


Shown = Annotated[ShownObjects, Depends(shown_objects)]


def node_access(app: Any) -> NodeAccess:
    access: NodeAccess | None = getattr(app.state, "node_access", None)
    if access is None:
        raise Unavailable("this API process does not reach nodes (it was made without a libvirt connector)")
    return access


async def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


DB = Annotated[Database, Depends(get_db)]


async def get_principal(db: DB, request: Request) -> Principal:
    # The header is read here, not declared as a parameter: the OpenAPI document's bearer security scheme
    # says how to send it, and SDK methods get no `authorization` argument.
    authorization = request.headers.get("authorization")
    cache: PrincipalCache = request.app.state.principals
    cached = cache.principal(authorization)
    if cached is not None:
        return cached  # no thread hop and no database round trip

    def lookup() -> Principal:
        with db.read() as session:
            return authenticate(session, authorization)

    # Requests with one header that miss together share one lookup (after the entry expired, a burst).
    pending: Pending[Principal] = request.app.state.principal_lookups
    return await shared_in_thread(pending, authorization, lambda: cache.fill(authorization, lookup))


Caller = Annotated[Principal, Depends(get_principal)]
IfMatch = Annotated[str | None, Header(alias="If-Match")]


async def read_body(request: Request, *, patch: bool = False) -> Any:
    """The request body as data, from JSON or YAML (merge patches: JSON or YAML too)."""
    media = (request.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest("the body is larger than 8 MiB", [FieldError("body", "too large")])
    if patch and media == "application/json":
        raise UnsupportedMediaType("PATCH takes application/merge-patch+json (or application/yaml)")
    if media in JSON_TYPES:
        try:
            return json.loads(raw)
        except RecursionError as exc:
            raise BadRequest("the body is nested too deeply", [FieldError("body", "too deep")]) from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(
                f"the body is not valid JSON: {exc}", [FieldError("body", "malformed JSON")]
            ) from exc
    if media in YAML_TYPES:
        try:
            return _load_yaml(raw)
        except RecursionError as exc:
            raise BadRequest("the body is nested too deeply", [FieldError("body", "too deep")]) from exc
        except yaml.YAMLError as exc:
            raise BadRequest(
                f"the body is not valid YAML: {exc}", [FieldError("body", "malformed YAML")]
            ) from exc
    accepted = ", ".join(
        ("application/merge-patch+json", *YAML_TYPES[:1]) if patch else (JSON_TYPES[0], YAML_TYPES[0])
    )
    raise UnsupportedMediaType(f"content type {media!r} is not accepted; use {accepted}")


async def poll_until(
    db: Database, channel: str, probe: Callable[[], Awaitable[T | None]], timeout: float
) -> T | None:
    """Run `probe` until it finds something or `timeout` passes; a signal on `channel` runs it again at
    once, and a 1 s poll covers writers the hub cannot hear (another process on SQLite)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = db.hub.counter(channel)
        found = await probe()
        left = deadline - time.monotonic()
        if found is not None or left <= 0:
            return found
        await db.hub.wait_async(channel, seen, min(left, 1.0))


async def optional_body(request: Request) -> Any:
    """The body when there is one (actions and claims may be sent without), else None."""
    return await read_body(request) if await request.body() else None


async def object_body(request: Request) -> Any:
    return await read_body(request)


async def patch_body(request: Request) -> Any:
    return await read_body(request, patch=True)


ObjectBody = Annotated[Any, Depends(object_body)]
PatchBody = Annotated[Any, Depends(patch_body)]
