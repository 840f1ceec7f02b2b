"""DataVolume uploads: the request body is streamed to a scratch file on the API host (never held in
memory), checked as untrusted input, converted and grown, then streamed into the node's storage pool."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import DB, Caller, Shown, node_access, shown_object
from app.api.resources import PROBLEMS, NamePath, NamespacePath
from app.api.threads import in_node_io_thread
from app.disks.untrusted import UnsafeDisk
from app.errors import FieldError, Invalid, Unavailable
from app.kinds import DATAVOLUMES
from app.schemas.datavolume import DataVolume
from app.services.datavolumes import record_upload, upload_target
from app.virt.disk_import import data_volume_file, finish_import
from app.virt.driver import HypervisorError

# Not a retrying router: a retry would run the handler again on a body already streamed away. A lost
# database race in the final write answers 503 with Retry-After, and the client sends the upload again.
router = APIRouter(tags=["datavolumes"])


@router.put(
    "/v1/namespaces/{namespace}/datavolumes/{name}/upload",
    operation_id="uploadDataVolume",
    response_model=DataVolume,
    response_model_exclude_none=True,
    responses={**PROBLEMS},
    summary="Upload the disk of an upload DataVolume",
    description="The body is the disk image (qcow2 or raw, `application/octet-stream`), streamed. The "
    "DataVolume must be in phase UploadReady. The image is checked (no backing or data file, virtual size "
    "within the limit and the requested storage), converted to qcow2, grown to the requested size and "
    "stored on the DataVolume's node; the answer is the DataVolume, now Succeeded. A refused image "
    "answers 422 and the DataVolume stays UploadReady for another try.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload(
    request: Request, db: DB, caller: Caller, shown: Shown, namespace: NamespacePath, name: NamePath
) -> Any:
    caller.require_write(DATAVOLUMES.read_role, DATAVOLUMES.write_role, namespace)
    uploads = node_access(request.app)

    def target() -> tuple[str, str, str, int | None]:
        with db.read() as session:
            return upload_target(session, namespace, name)

    uid, node, uri, requested = await run_in_threadpool(target)
    uploads.scratch.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"upload-{uid}-", dir=uploads.scratch))
    try:
        received = directory / "disk"
        with received.open("wb") as sink:
            async for chunk in request.stream():
                await in_node_io_thread(sink.write, chunk)

        def store() -> int:
            hv = uploads.connect(uri)
            try:
                return finish_import(
                    hv,
                    received,
                    data_volume_file(uid),
                    requested=requested,
                    max_bytes=uploads.max_disk_bytes,
                    volume_dir=uploads.volume_dir,
                )
            finally:
                hv.close()

        try:
            capacity = await in_node_io_thread(store)
        except UnsafeDisk as exc:
            raise Invalid(f"the uploaded disk is refused: {exc}", [FieldError("body", str(exc))]) from None
        except HypervisorError as exc:
            raise Unavailable(f"node {node}: {exc}", headers={"Retry-After": "5"}) from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def record() -> Any:
        with db.transaction() as session:
            return record_upload(session, namespace, name, uid, capacity)

    return shown_object(shown, DATAVOLUMES, await run_in_threadpool(record))
