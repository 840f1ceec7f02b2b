"""Host devices (read-only: discovered by the worker) and the admin's permittedHostDevices rules."""

from typing import Annotated, Any

from fastapi import Path, Query, Request
from starlette.concurrency import run_in_threadpool

from app.api.deps import DB, Caller, read_body
from app.api.resources import PROBLEMS, NamePath
from app.api.routing import api_router
from app.schemas.auth import Role
from app.schemas.devices import HostDevice, HostDeviceList, PermittedHostDevices
from app.services.devices import DeviceService

router = api_router(tags=["devices"])
DeviceName = Annotated[str, Path(min_length=1, max_length=253, description="libvirt's node-device name")]
RULES = "/v1/config/permittedHostDevices"


@router.get(
    "/v1/devices",
    operation_id="listHostDevices",
    response_model=HostDeviceList,
    response_model_exclude_none=True,
    responses=PROBLEMS,
    summary="Every node's devices, with the permitted resourceName and the holder (the ledger)",
    description="Filters: `node`, `holder` (an instance: namespace/name, name or uid), `resourceName`, "
    "`free`.",
)
async def list_devices(
    db: DB,
    caller: Caller,
    node: Annotated[str | None, Query(max_length=63)] = None,
    holder: Annotated[str | None, Query(max_length=127, description="namespace/name, name or uid")] = None,
    resource_name: Annotated[str | None, Query(alias="resourceName", max_length=253)] = None,
    free: bool | None = None,
) -> Any:
    caller.require(Role.viewer, None)
    return await _read(db, lambda s: s.list(node=node, holder=holder, resource_name=resource_name, free=free))


@router.get(
    "/v1/nodes/{name}/devices",
    operation_id="listNodeDevices",
    response_model=HostDeviceList,
    response_model_exclude_none=True,
    responses=PROBLEMS,
    summary="One node's devices",
)
async def node_devices(db: DB, caller: Caller, name: NamePath) -> Any:
    caller.require(Role.viewer, None)
    return await _read(db, lambda s: s.list(node=name))


@router.get(
    "/v1/nodes/{name}/devices/{device}",
    operation_id="readNodeDevice",
    response_model=HostDevice,
    response_model_exclude_none=True,
    responses=PROBLEMS,
    summary="One device",
)
async def node_device(db: DB, caller: Caller, name: NamePath, device: DeviceName) -> Any:
    caller.require(Role.viewer, None)
    return await _read(db, lambda s: s.get(name, device))


@router.get(
    RULES,
    operation_id="readPermittedHostDevices",
    response_model=PermittedHostDevices,
    responses=PROBLEMS,
    summary="Which devices instances may take, and as what",
)
async def get_rules(db: DB, caller: Caller) -> Any:
    caller.require(Role.viewer, None)
    return await _read(db, lambda s: s.rules())


@router.put(
    RULES,
    operation_id="replacePermittedHostDevices",
    response_model=PermittedHostDevices,
    responses=PROBLEMS,
    summary="Replace the permittedHostDevices rules (admin)",
    description="KubeVirt's shape: `pciHostDevices[{pciVendorSelector, resourceName}]` and "
    "`mediatedDevices[{mdevNameSelector, resourceName}]`. Devices already held stay held.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PermittedHostDevices"}}
            },
        }
    },
)
async def put_rules(request: Request, db: DB, caller: Caller) -> Any:
    caller.require(Role.admin, None)
    body = await read_body(request)

    def run() -> PermittedHostDevices:
        with db.transaction() as session:
            return DeviceService(session).set_rules(body)

    return await run_in_threadpool(run)


async def _read(db: DB, call: Any) -> Any:
    def run() -> Any:
        with db.read() as session:
            return call(DeviceService(session))

    return await run_in_threadpool(run)
