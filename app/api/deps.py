"""Typed dependencies of the routes: the database, the caller, request bodies."""

from __future__ import annotations

import json
from typing import Annotated, Any

import yaml
from fastapi import Depends, Header, Request

from app.db import Database
from app.errors import BadRequest, FieldError, UnsupportedMediaType
from app.services.auth import Principal, authenticate

MAX_BODY_BYTES = 8 * 1024 * 1024  # room for a 4 MiB guest file in base64
JSON_TYPES = ("application/json", "application/merge-patch+json")
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


def _load_yaml(raw: bytes) -> Any:
    # Anchors and aliases are refused: an alias bomb expands into gigabytes during validation.
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(raw, Loader=yaml.SafeLoader)):
        raise BadRequest("YAML aliases are not accepted", [FieldError("body", "contains a YAML alias")])
    return yaml.safe_load(raw)


def get_db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


DB = Annotated[Database, Depends(get_db)]


def get_principal(db: DB, authorization: Annotated[str | None, Header()] = None) -> Principal:
    with db.read() as session:
        return authenticate(session, authorization)


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


async def optional_body(request: Request) -> Any:
    """The body when there is one (actions and claims may be sent without), else None."""
    return await read_body(request) if await request.body() else None


async def object_body(request: Request) -> Any:
    return await read_body(request)


async def patch_body(request: Request) -> Any:
    return await read_body(request, patch=True)


ObjectBody = Annotated[Any, Depends(object_body)]
PatchBody = Annotated[Any, Depends(patch_body)]
