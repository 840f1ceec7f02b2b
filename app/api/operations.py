"""Guest agent operations: exec, file-read, file-write, freeze, thaw, and the record of who ran what."""

from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import DB, Caller, optional_body, poll_until
from app.api.resources import PROBLEMS, NamePath, NamespacePath
from app.api.routing import api_router
from app.db import OPERATIONS_CHANNEL
from app.errors import GatewayTimeout
from app.kinds import INSTANCES
from app.schemas.auth import Role
from app.schemas.operations import OPERATION_RESULTS, OperationKind, OperationList
from app.services.operations import OperationService

router = api_router(tags=["guest"])
BASE = "/v1/namespaces/{namespace}/instances/{name}/guest"
# Running programs and touching files inside a guest goes beyond operating the VM: namespace admins only.
ROLES: dict[str, Role] = {
    "exec": Role.admin,
    "file-read": Role.admin,
    "file-write": Role.admin,
    "freeze": Role.operator,
    "thaw": Role.operator,
}
SUMMARIES = {
    "exec": "Run a program in the guest (argv, stdin, timeout): exit code, stdout, stderr",
    "file-read": "Read a file from the guest (binary-safe, at most 4 MiB)",
    "file-write": "Write a file in the guest (binary-safe, at most 4 MiB)",
    "freeze": "Freeze the guest's filesystems (for a consistent snapshot)",
    "thaw": "Thaw the guest's filesystems",
}
BODIES = {"exec": "ExecRequest", "file-read": "FileReadRequest", "file-write": "FileWriteRequest"}
SLACK = 15.0  # seconds beyond the operation's own timeout that the request waits for the worker


def add_operation(kind: OperationKind) -> None:
    extra: dict[str, Any] = {}
    if kind in BODIES:
        schema = {"$ref": f"#/components/schemas/{BODIES[kind]}"}
        extra = {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
    operation = "".join(part.title() for part in kind.split("-"))

    @router.post(
        f"{BASE}/{kind}",
        operation_id=f"guest{operation}",
        response_model=OPERATION_RESULTS[kind],
        responses=PROBLEMS,
        summary=SUMMARIES[kind],
        openapi_extra=extra,
    )
    async def run(
        request: Request,
        db: DB,
        caller: Caller,
        namespace: NamespacePath,
        name: NamePath,
        body: Annotated[Any, Depends(optional_body)],
    ) -> dict[str, Any]:
        caller.require_write(INSTANCES.read_role, ROLES[kind], namespace)

        def submit() -> str:
            with db.transaction() as session:
                return OperationService(session).submit(namespace, name, kind, body, caller.name)

        operation_id = await run_in_threadpool(submit)
        timeout = float((body or {}).get("timeoutSeconds", 30)) if isinstance(body, dict) else 30.0

        def outcome() -> dict[str, Any] | None:
            with db.read() as session:
                return OperationService(session).outcome(operation_id)

        result = await poll_until(db, OPERATIONS_CHANNEL, lambda: run_in_threadpool(outcome), timeout + SLACK)
        if result is not None:
            return {"id": operation_id, **result}
        where = BASE.format(namespace=namespace, name=name)
        raise GatewayTimeout(f"operation {operation_id} has not finished; see {where}/operations")


for _kind in ROLES:
    add_operation(_kind)  # type: ignore[arg-type]


@router.get(
    f"{BASE}/operations",
    operation_id="listGuestOperations",
    response_model=OperationList,
    responses=PROBLEMS,
    summary="Who ran what in the guest, and when (the last 100)",
)
def history(db: DB, caller: Caller, namespace: NamespacePath, name: NamePath) -> dict[str, Any]:
    caller.require_write(INSTANCES.read_role, Role.operator, namespace)
    with db.read() as session:
        return {"items": OperationService(session).history(namespace, name)}
