"""Running queued guest agent operations (exec, files, freeze/thaw) and turning outcomes into answers."""

from __future__ import annotations

import base64
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.clock import utc_now
from app.db import OPERATIONS_CHANNEL, Database, signal
from app.repositories import operations
from app.schemas.common import JsonObject
from app.schemas.operations import ExecRequest, FileReadRequest, FileWriteRequest, audit_view
from app.virt.driver import (
    AgentUnavailable,
    GuestCommandFailed,
    GuestFileTooLarge,
    Hypervisor,
    HypervisorError,
)
from app.virt.guest import MalformedReply


def run_operation(hv: Hypervisor, domain: str, kind: str, request: JsonObject) -> JsonObject:
    if kind == "exec":
        spec = ExecRequest.model_validate(request)
        outcome = hv.guest_exec(domain, spec.command, spec.stdin_bytes(), spec.timeout_seconds)
        result = {k: v for k, v in outcome.items() if k not in ("stdout", "stderr")}
        for stream in ("stdout", "stderr"):
            raw: bytes = outcome[stream]
            result[stream] = raw.decode(errors="replace")
            result[f"{stream}Base64"] = base64.b64encode(raw).decode()
        return result
    if kind == "file-read":
        read = FileReadRequest.model_validate(request)
        data = hv.guest_file_read(domain, read.path, read.max_bytes)
        return {"path": read.path, "size": len(data), "contentBase64": base64.b64encode(data).decode()}
    if kind == "file-write":
        write = FileWriteRequest.model_validate(request)
        data = base64.b64decode(write.content_base64)
        hv.guest_file_write(domain, write.path, data)
        return {"path": write.path, "size": len(data)}
    return hv.guest_fsfreeze(domain, freeze=kind == "freeze")


def failure(exc: Exception) -> tuple[int, str]:
    """The HTTP status and message an operation's failure answers with."""
    if isinstance(exc, AgentUnavailable):
        return 409, f"the guest agent is not answering (AgentConnected=False or busy): {exc}"
    if isinstance(exc, GuestFileTooLarge):
        return 413, str(exc)
    if isinstance(exc, GuestCommandFailed):
        return 422, f"the guest refused: {exc}"
    if isinstance(exc, MalformedReply):
        return 502, str(exc)
    if isinstance(exc, HypervisorError):
        return 502, f"libvirt: {exc}"
    raise exc


QueuedOperation = tuple[str, str, JsonObject]  # (id, kind, request)


def queued_operations(session: Session, uid: str) -> tuple[QueuedOperation, ...]:
    """The instance's guest operations still to run, in the order they were asked."""
    return tuple((op.id, op.kind, dict(op.request)) for op in operations.pending(session, uid))


def run_queued(
    db: Database,
    hv: Hypervisor | None,
    queued: tuple[QueuedOperation, ...],
    domain: str,
    agent: str,
    on_freeze: Callable[[Session, str], None],
) -> None:
    """Run queued guest operations, one at a time. `agent` is the AgentConnected condition's status;
    `on_freeze` records a freeze or thaw's fsFreezeStatus."""
    for op_id, kind, request in queued:
        result: JsonObject = {}
        error: tuple[int, str] | None = None
        if hv is None or agent != "True":
            error = failure(AgentUnavailable(f"AgentConnected={agent}"))
        else:
            try:
                result = run_operation(hv, domain, kind, request)
            except Exception as exc:
                error = failure(exc)
        with db.transaction() as session:
            op = operations.get(session, op_id)
            if op is None:
                continue
            op.state, op.result, op.finished_at = ("Failed" if error else "Succeeded"), result, utc_now()
            op.error_status, op.error = (error[0], error[1][:2000]) if error else (None, None)
            op.request = audit_view(request)  # stdin and file contents are not kept
            if error is None and kind in ("freeze", "thaw"):
                on_freeze(session, str(result.get("fsFreezeStatus")))
            signal(session, OPERATIONS_CHANNEL)
