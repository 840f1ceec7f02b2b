"""One router per resource kind, built from its description: the conventions live here once."""

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import StreamingResponse

from app.api.deps import DB, Caller, IfMatch, ObjectBody, PatchBody, shown_object
from app.api.routing import api_router
from app.kinds import Kind
from app.schemas.common import Problem
from app.services.registry import service_for
from app.services.resources import CONTINUE_PATTERN, decode_continue
from app.services.selectors import SELECTOR_PATTERN
from app.services.shown import ShownObjects
from app.services.watch import Watch, parse_resource_version

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NamePath = Annotated[str, Path(min_length=1, max_length=63, pattern=DNS_LABEL)]
NamespacePath = Annotated[str, Path(min_length=1, max_length=63, pattern=DNS_LABEL)]
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for code, text in {
        400: "Malformed request",
        401: "Missing or invalid token",
        403: "Not allowed",
        404: "Not found",
        409: "Conflict (exists, stale resourceVersion, wrong phase)",
        415: "Unsupported media type",
        422: "Invalid field",
    }.items()
}


# The namespace path parameter, or None for cluster-scoped kinds (async, as app.api.deps explains).
ScopeOf = Callable[..., Awaitable[str | None]]


async def namespaced(namespace: NamespacePath) -> str | None:
    return namespace


async def cluster_scoped() -> str | None:
    return None


def request_body(model: str, *, patch: bool = False) -> dict[str, Any]:
    # YAML is accepted too (application/yaml, the same document) but stated in prose: SDK generators take
    # one JSON media type per body and warn on, or duplicate, any other.
    media_type, schema = (
        (
            "application/merge-patch+json",
            {"type": "object", "description": "RFC 7386 merge patch of the object"},
        )
        if patch
        else ("application/json", {"$ref": f"#/components/schemas/{model}"})
    )
    return {
        "requestBody": {
            "required": True,
            "description": "JSON, or the same document as YAML (Content-Type: application/yaml).",
            "content": {media_type: {"schema": schema}},
        }
    }


def resource_router(kind: Kind[Any], shown: ShownObjects) -> APIRouter:
    router = api_router(tags=[kind.plural])
    base = f"/v1/namespaces/{{namespace}}/{kind.plural}" if kind.namespaced else f"/v1/{kind.plural}"
    item = base + "/{name}"
    one, many = kind.singular, kind.singular + "s"
    a_one = f"an {one}" if one[0] in "AEIOU" else f"a {one}"
    scope_dep: ScopeOf = namespaced if kind.namespaced else cluster_scoped
    scope_param = Annotated[str | None, Depends(scope_dep)]
    common: dict[str, Any] = {
        "response_model": kind.object_model,
        "response_model_exclude_none": True,
        "responses": PROBLEMS,
    }

    def stored_ns(scope: str | None) -> str:
        return scope or ""

    watch_events = {"application/x-ndjson": {"schema": {"$ref": "#/components/schemas/WatchEvent"}}}

    def add_list(path: str, operation_id: str, scope_of: ScopeOf, where: str) -> None:
        @router.get(
            path,
            operation_id=operation_id,
            response_model=kind.list_model,
            response_model_exclude_none=True,
            summary=f"List or watch {kind.plural}{where}",
            description=f"List {kind.plural}{where}, or with `watch=true` stream changes as "
            "newline-delimited JSON events (resumable from `resourceVersion`).",
            responses={**PROBLEMS, 200: {"content": watch_events}},
            # Generated clients cannot consume the stream (they wait for the whole body): say it is one.
            openapi_extra={"x-stream": {"parameter": "watch", "contentType": "application/x-ndjson"}},
        )
        def list_objects(
            db: DB,
            caller: Caller,
            scope: Annotated[str | None, Depends(scope_of)],
            label_selector: Annotated[
                str | None,
                Query(
                    alias="labelSelector",
                    max_length=4096,
                    description="Kubernetes label selector: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, "
                    "`k notin (a,b)`, comma-separated (all must hold).",
                    json_schema_extra={"pattern": SELECTOR_PATTERN},
                ),
            ] = None,
            limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
            continue_: Annotated[
                str | None,
                Query(
                    alias="continue",
                    description="Where the next page starts: `metadata.continue` of the previous page.",
                    json_schema_extra={"pattern": f"^$|{CONTINUE_PATTERN}"},
                ),
            ] = None,
            watch: Annotated[
                bool,
                Query(
                    description="Stream changes instead of a list: newline-delimited JSON WatchEvents, one "
                    "per line as they happen, until the client closes the connection (read it as a stream)."
                ),
            ] = False,
            resource_version: Annotated[
                str | None,
                Query(
                    alias="resourceVersion",
                    max_length=18,  # within a 64-bit revision
                    description="With `watch`: the version to resume after (empty: from the current state).",
                    json_schema_extra={"pattern": "^[0-9]*$"},
                ),
            ] = None,
            allow_watch_bookmarks: Annotated[bool, Query(alias="allowWatchBookmarks")] = False,
            timeout_seconds: Annotated[
                int | None,
                Query(
                    alias="timeoutSeconds",
                    ge=1,
                    le=86400,
                    description="With `watch`: end the stream after this many seconds (default: never).",
                ),
            ] = None,
        ) -> Any:
            caller.require(kind.read_role, scope)
            if watch:
                decode_continue(continue_)  # checked like a list's, though a watch starts from the beginning
                stream = Watch(
                    db, kind, scope, resource_version, label_selector, allow_watch_bookmarks, timeout_seconds
                )
                return StreamingResponse(
                    stream.stream(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"}
                )
            parse_resource_version(resource_version)  # a list is always current; the value is still checked
            with db.read() as session:
                page = service_for(session, kind.kind).list_json(
                    scope, label_selector, limit, continue_, shown
                )
            return Response(page, media_type="application/json")

    add_list(base, f"list{many}", scope_dep, "")
    if kind.namespaced:
        # Kubernetes' listPodForAllNamespaces: every namespace at once, for a cluster-wide viewer.
        add_list(f"/v1/{kind.plural}", f"list{many}ForAllNamespaces", cluster_scoped, " in every namespace")

    @router.post(
        base,
        operation_id=f"create{one}",
        status_code=201,
        summary=f"Create {a_one}",
        openapi_extra=request_body(kind.body_model.__name__),
        **common,
    )
    def create(db: DB, caller: Caller, scope: scope_param, body: ObjectBody) -> Any:
        caller.require(kind.write_role, scope)
        with db.transaction() as session:
            obj = service_for(session, kind.kind).create(stored_ns(scope), body)
        return shown_object(
            shown, kind, obj, 201, Location=f"{base.format(namespace=scope)}/{obj['metadata']['name']}"
        )

    @router.get(item, operation_id=f"read{one}", summary=f"Read {a_one}", **common)
    def read(db: DB, caller: Caller, scope: scope_param, name: NamePath) -> Any:
        caller.require(kind.read_role, scope, hide=True)
        with db.read() as session:
            obj = service_for(session, kind.kind).get(stored_ns(scope), name)
        return shown_object(shown, kind, obj)

    @router.put(
        item,
        operation_id=f"replace{one}",
        summary=f"Replace {a_one}'s spec, labels and annotations",
        openapi_extra=request_body(kind.body_model.__name__),
        **common,
    )
    def replace(
        db: DB,
        caller: Caller,
        scope: scope_param,
        body: ObjectBody,
        name: NamePath,
        if_match: IfMatch = None,
    ) -> Any:
        caller.require_write(kind.read_role, kind.write_role, scope)
        with db.transaction() as session:
            obj = service_for(session, kind.kind).replace(stored_ns(scope), name, body, if_match)
        return shown_object(shown, kind, obj)

    @router.patch(
        item,
        operation_id=f"patch{one}",
        summary=f"Merge-patch {a_one} (RFC 7386)",
        openapi_extra=request_body(kind.body_model.__name__, patch=True),
        **common,
    )
    def patch(
        db: DB,
        caller: Caller,
        scope: scope_param,
        body: PatchBody,
        name: NamePath,
        if_match: IfMatch = None,
    ) -> Any:
        caller.require_write(kind.read_role, kind.write_role, scope)
        with db.transaction() as session:
            obj = service_for(session, kind.kind).patch(stored_ns(scope), name, body, if_match)
        return shown_object(shown, kind, obj)

    @router.delete(
        item,
        operation_id=f"delete{one}",
        status_code=202,
        summary=f"Delete {a_one}: marked now, torn down by the worker, then gone",
        **common,
    )
    def delete(
        db: DB,
        caller: Caller,
        scope: scope_param,
        name: NamePath,
        if_match: IfMatch = None,
    ) -> Any:
        caller.require_write(kind.read_role, kind.write_role, scope)
        with db.transaction() as session:
            obj = service_for(session, kind.kind).delete(stored_ns(scope), name, if_match)
        return shown_object(shown, kind, obj, 202)

    return router
