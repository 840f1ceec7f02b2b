"""Migration verbs beyond CRUD: cancel, the instance shortcut, and node drains."""

from collections.abc import Callable
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.deps import DB, Caller, Shown, optional_body, shown_object
from app.api.resources import PROBLEMS, NamePath, NamespacePath
from app.api.routing import api_router
from app.kinds import INSTANCES, MIGRATIONS, NODES
from app.schemas.migration import DrainStatus, MigrateOptions, Migration
from app.services.migrations import MigrationService
from app.services.validation import invalid

router = api_router(tags=["migrations"])
drain_router = api_router(tags=["nodes"])  # a drain is a node operation, carried out by migrations
DRAIN = "/v1/nodes/{name}/drain"


@router.post(
    "/v1/namespaces/{namespace}/migrations/{name}/cancel",
    operation_id="cancelMigration",
    status_code=202,
    response_model=Migration,
    response_model_exclude_none=True,
    responses=PROBLEMS,
    summary="Abort a migration; the instance keeps running on its source node",
    description="The worker aborts the libvirt job (or never starts it); the migration ends Failed with "
    "abortStatus Succeeded. 409 when it already finished. DELETE of the migration aborts too.",
)
async def cancel(db: DB, caller: Caller, namespace: NamespacePath, name: NamePath) -> Any:
    caller.require_write(MIGRATIONS.read_role, MIGRATIONS.write_role, namespace)

    def run() -> dict[str, Any]:
        with db.transaction() as session:
            return MigrationService(session).cancel(namespace, name)

    return await run_in_threadpool(run)


@router.post(
    "/v1/namespaces/{namespace}/instances/{name}/migrate",
    operation_id="migrateInstance",
    status_code=201,
    response_model=Migration,
    response_model_exclude_none=True,
    responses=PROBLEMS,
    summary="Live-migrate the instance: creates a VirtualMachineInstanceMigration",
    description="Optional body: targetNode and policy overrides. 409 with the reason when the instance "
    "cannot migrate (not Running, not LiveMigratable, already migrating).",
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MigrateOptions"}}},
        }
    },
)
async def migrate(
    request: Request, db: DB, caller: Caller, shown: Shown, namespace: NamespacePath, name: NamePath
) -> Any:
    caller.require_write(INSTANCES.read_role, MIGRATIONS.write_role, namespace)
    body = await optional_body(request)
    try:
        options = MigrateOptions.model_validate(body or {})
    except ValidationError as exc:
        raise invalid(exc) from exc

    def run() -> dict[str, Any]:
        with db.transaction() as session:
            return MigrationService(session).migrate_instance(namespace, name, options)

    created = await run_in_threadpool(run)
    location = f"/v1/namespaces/{namespace}/migrations/{created['metadata']['name']}"
    return shown_object(shown, MIGRATIONS, created, 201, Location=location)


@drain_router.post(
    DRAIN,
    operation_id="drainNode",
    status_code=202,
    response_model=DrainStatus,
    responses=PROBLEMS,
    summary="Drain a node: mark it unschedulable and live-migrate every migratable instance away",
    description="Instances that cannot migrate are listed with the reason. Repeatable: a second drain "
    "starts migrations for instances that became migratable. Cancel with DELETE.",
)
async def drain(db: DB, caller: Caller, name: NamePath) -> Any:
    caller.require(NODES.write_role, None)
    return await _drain_call(db, lambda service: service.drain(name))


@drain_router.get(
    DRAIN,
    operation_id="readNodeDrain",
    response_model=DrainStatus,
    responses=PROBLEMS,
    summary="The node's drain: its migrations and the instances that cannot move",
)
async def drain_status(db: DB, caller: Caller, name: NamePath) -> Any:
    caller.require(NODES.read_role, None)
    return await _drain_call(db, lambda service: service.drain_status(name))


@drain_router.delete(
    DRAIN,
    operation_id="cancelNodeDrain",
    response_model=DrainStatus,
    responses=PROBLEMS,
    summary="Cancel a drain: abort its unfinished migrations (the node stays unschedulable)",
)
async def cancel_drain(db: DB, caller: Caller, name: NamePath) -> Any:
    caller.require(NODES.write_role, None)
    return await _drain_call(db, lambda service: service.cancel_drain(name))


async def _drain_call(db: DB, call: Callable[[MigrationService], DrainStatus]) -> DrainStatus:
    def run() -> DrainStatus:
        with db.transaction() as session:
            return call(MigrationService(session))

    return await run_in_threadpool(run)
