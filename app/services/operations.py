"""Guest agent operations: validate, check the agent, queue for the worker, report the outcome."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ValidationError

from app.clock import utc_now
from app.errors import BY_STATUS, BadGateway, BadRequest, FieldError
from app.kinds import INSTANCES
from app.models import OperationRow
from app.repositories import operations, workqueue
from app.schemas.common import JsonObject
from app.schemas.operations import ExecRequest, FileReadRequest, FileWriteRequest, OperationKind, audit_view
from app.services.guest import GuestService
from app.services.validation import invalid

REQUESTS: dict[str, type[BaseModel] | None] = {
    "exec": ExecRequest,
    "file-read": FileReadRequest,
    "file-write": FileWriteRequest,
    "freeze": None,
    "thaw": None,
}


class OperationService(GuestService):
    def submit(self, namespace: str, name: str, kind: OperationKind, body: Any, principal: str) -> str:
        model = REQUESTS[kind]
        request: JsonObject = {}
        if model is not None:
            try:
                request = model.model_validate(body if body is not None else {}).model_dump(by_alias=True)
            except ValidationError as exc:
                raise invalid(exc) from exc
        elif body not in (None, {}):
            raise BadRequest(f"{kind} takes no body", [FieldError("body", "must be empty")])
        self.report(namespace, name)  # 409 at once when the agent is not connected
        row = self._row(namespace, name)
        operation = OperationRow(
            id=str(uuid.uuid4()),
            instance_uid=row.uid,
            namespace=namespace,
            instance=name,
            kind=kind,
            request=request,
            requested_by=principal,
            state="Pending",
            result={},
            created_at=utc_now(),
        )
        operations.add(self.session, operation)
        workqueue.enqueue(self.session, INSTANCES.work_key(namespace, name))
        return operation.id

    def outcome(self, operation_id: str) -> JsonObject | None:
        """The result once the worker ran it (None before); a failure is raised as its HTTP error."""
        row = operations.get(self.session, operation_id)
        if row is None or row.state == "Pending":
            return None
        if row.state == "Failed":
            raise BY_STATUS.get(row.error_status or 502, BadGateway)(row.error or "the operation failed")
        return dict(row.result)

    def history(self, namespace: str, name: str) -> list[JsonObject]:
        row = self._row(namespace, name)
        return [record(op) for op in operations.recent(self.session, row.uid)]


def record(op: OperationRow) -> JsonObject:
    return {
        "id": op.id,
        "kind": op.kind,
        "requestedBy": op.requested_by,
        "state": op.state,
        "request": audit_view(op.request),
        "error": op.error,
        "createdAt": op.created_at,
        "finishedAt": op.finished_at,
    }
