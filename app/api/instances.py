"""Instance actions: start, stop, restart, softreboot, pause, unpause (with Idempotency-Key)."""

from typing import Annotated, Any

from fastapi import Header, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import DB, Caller, Shown, optional_body, shown_object
from app.api.resources import PROBLEMS, NamePath, NamespacePath
from app.api.routing import api_router
from app.kinds import INSTANCES
from app.schemas.instance import Instance
from app.schemas.phases import Action
from app.services.instances import INSTANCE_ACTIONS, InstanceService, request_fingerprint

router = api_router(tags=["instances"])
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[ -~]+$")
]
SUMMARIES = {
    Action.START: "Start (or retry) the instance",
    Action.STOP: "Stop: graceful (ACPI or guest agent), forced after the grace period or with force=true",
    Action.RESTART: "Restart: power off and boot again (a fresh QEMU process)",
    Action.SOFTREBOOT: "Reboot the guest OS (guest agent, else ACPI)",
    Action.PAUSE: "Pause the vCPUs",
    Action.UNPAUSE: "Resume paused vCPUs",
}
OPERATION = {Action.SOFTREBOOT: "softRebootInstance"}


def add_action(action: Action) -> None:
    body_doc: dict[str, Any] = {}
    if action is Action.STOP:
        ref = {"$ref": "#/components/schemas/StopOptions"}
        body_doc = {"requestBody": {"required": False, "content": {"application/json": {"schema": ref}}}}

    @router.post(
        f"/v1/namespaces/{{namespace}}/instances/{{name}}/{action.value}",
        operation_id=OPERATION.get(action, f"{action.value}Instance"),
        status_code=202,
        response_model=Instance,
        response_model_exclude_none=True,
        responses=PROBLEMS,
        summary=SUMMARIES[action],
        description="Illegal in the current phase: 409 naming the phase and the legal actions. A retry with "
        "the same Idempotency-Key gets the first answer and acts once.",
        openapi_extra=body_doc,
    )
    async def act(
        request: Request,
        db: DB,
        caller: Caller,
        shown: Shown,
        namespace: NamespacePath,
        name: NamePath,
        idempotency_key: IdempotencyKey = None,
    ) -> Any:
        caller.require_write(INSTANCES.read_role, INSTANCES.write_role, namespace)
        body = await optional_body(request)
        fingerprint = request_fingerprint("POST", request.url.path, body)

        def run() -> tuple[int, dict[str, Any]]:
            with db.transaction() as session:
                return InstanceService(session).act(
                    namespace, name, action, body, caller.name, idempotency_key, fingerprint
                )

        status, obj = await run_in_threadpool(run)
        return shown_object(shown, INSTANCES, obj, status)


for _action in INSTANCE_ACTIONS:
    add_action(_action)
