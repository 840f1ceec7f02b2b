"""The guest agent's view of an instance: OS, hostname, timezone, interfaces, filesystems, users."""

from typing import Annotated, Any

from fastapi import Query
from starlette.concurrency import run_in_threadpool

from app.api.deps import DB, Caller, poll_until
from app.api.resources import PROBLEMS, NamePath, NamespacePath
from app.api.routing import api_router
from app.db import EVENTS_CHANNEL
from app.errors import Unavailable
from app.kinds import INSTANCES
from app.schemas.guest import SECTIONS, GuestView, Items, OSInfo, guest_view
from app.services.guest import GuestService

router = api_router(tags=["guest"])
REFRESH_WAIT = 10.0  # seconds a refresh waits for the agent's answer (libvirt's own agent timeout is 5 s)
Refresh = Annotated[bool, Query(description="Ask the guest agent now instead of serving the last report.")]
BASE = "/v1/namespaces/{namespace}/instances/{name}/guest"


async def current(db: DB, caller: Caller, namespace: str, name: str, refresh: bool) -> dict[str, Any]:
    caller.require(INSTANCES.read_role, namespace, hide=True)

    def read() -> dict[str, Any]:
        with db.read() as session:
            return GuestService(session).report(namespace, name)

    if not refresh:
        return guest_view(await run_in_threadpool(read))

    def ask() -> str | None:
        with db.transaction() as session:
            return GuestService(session).request_refresh(namespace, name)

    before = await run_in_threadpool(ask)

    def fresh() -> dict[str, Any] | None:
        report = read()
        return report if report.get("observedAt") != before else None

    report = await poll_until(db, EVENTS_CHANNEL, lambda: run_in_threadpool(fresh), REFRESH_WAIT)
    if report is not None:
        return guest_view(report)
    raise Unavailable(
        f"the guest agent of {name!r} did not report within {REFRESH_WAIT:.0f}s", headers={"Retry-After": "5"}
    )


@router.get(
    BASE,
    operation_id="readInstanceGuest",
    response_model=GuestView,
    responses=PROBLEMS,
    summary="Everything the guest agent reported, each section with observedAt",
)
async def read_guest(
    db: DB, caller: Caller, namespace: NamespacePath, name: NamePath, refresh: Refresh = False
) -> Any:
    return await current(db, caller, namespace, name, refresh)


def add_section(path: str, key: str) -> None:
    model = OSInfo if key == "osInfo" else Items

    @router.get(
        f"{BASE}/{path}",
        operation_id=f"readInstanceGuest{key[0].upper()}{key[1:]}",
        response_model=model,
        responses=PROBLEMS,
        summary=f"The guest agent's {key}",
    )
    async def read_section(
        db: DB, caller: Caller, namespace: NamespacePath, name: NamePath, refresh: Refresh = False
    ) -> Any:
        return (await current(db, caller, namespace, name, refresh))[key]


for _path, _key in SECTIONS.items():
    add_section(_path, _key)
