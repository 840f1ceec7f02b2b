"""The guest's serial console and display as WebSockets: bytes both ways between the client and libvirt
(the console stream, the VNC socket) on the node that runs the guest. One console client at a time
(libvirt's rule, across API processes): another is refused with 409 unless it asks `?force=true`, which
ends the first one's socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi import APIRouter, WebSocket

from app.api.deps import node_access
from app.api.problems import problem_response
from app.api.threads import in_node_io_thread
from app.errors import Conflict, CorralError
from app.kinds import INSTANCES
from app.services.auth import authenticate
from app.services.instances import console_target
from app.virt.driver import ByteStream, ConsoleBusy, Hypervisor, HypervisorError

router = APIRouter(tags=["instances"])
CHUNK = 4096


async def _deny(websocket: WebSocket, error: CorralError) -> None:
    """Answer the handshake with the problem (an HTTP status and problem+json body)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        response = problem_response(error.status, error.title, error.detail, error.reason, error.errors)
        await websocket.send_denial_response(response)
    else:  # a server without denial responses: the handshake fails with 403, the reason in the close
        await websocket.close(code=1008, reason=f"{error.status} {error.detail}"[:120])


@router.websocket("/v1/namespaces/{namespace}/instances/{name}/console")
async def console(websocket: WebSocket, namespace: str, name: str, force: bool = False) -> None:
    """Serial console (operator role): binary frames carry the guest's bytes; text frames are sent to the
    guest as UTF-8. The socket closes (1000) when the guest stops, migrates or another client forces."""

    def open_console(hv: Hypervisor, domain: str) -> ByteStream:
        try:
            return hv.open_console(domain, force=force)
        except ConsoleBusy:
            raise Conflict(
                f"another client has instance {name!r}'s console; ?force=true takes it over"
            ) from None

    await _bridge(websocket, namespace, name, open_console)


@router.websocket("/v1/namespaces/{namespace}/instances/{name}/vnc")
async def vnc(websocket: WebSocket, namespace: str, name: str) -> None:
    """The guest's display as plain RFB in binary frames (operator role): what noVNC speaks. Needs a node
    reached over a local UNIX socket (libvirt hands the display's socket over)."""
    await _bridge(websocket, namespace, name, lambda hv, domain: hv.open_graphics(domain))


async def _bridge(
    websocket: WebSocket, namespace: str, name: str, opener: Callable[[Hypervisor, str], ByteStream]
) -> None:
    """Authorize (operator), find the guest's node, open the device and pump bytes until either side ends."""
    db = websocket.app.state.db
    authorization = websocket.headers.get("authorization")

    def open_stream() -> ByteStream:
        with db.read() as session:
            caller = authenticate(session, authorization)
            caller.require_write(INSTANCES.read_role, INSTANCES.write_role, namespace)
            uri, domain = console_target(session, namespace, name)
        hv = node_access(websocket.app).connect(uri)
        try:
            return opener(hv, domain)
        except HypervisorError as exc:
            raise Conflict(f"instance {name!r}: the device cannot be opened: {exc}") from None

    try:
        stream = await in_node_io_thread(open_stream)
    except CorralError as exc:
        await _deny(websocket, exc)
        return
    await websocket.accept()
    try:
        await _pump(websocket, stream)
    finally:
        stream.close()


async def _pump(websocket: WebSocket, stream: ByteStream) -> None:
    """Guest -> client and client -> guest until either side ends."""

    async def to_client() -> None:
        while data := await in_node_io_thread(stream.read, CHUNK):
            await websocket.send_bytes(data)

    async def to_guest() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") or (message.get("text") or "").encode()
            if data:
                await in_node_io_thread(stream.write, data)

    tasks = [asyncio.create_task(to_client()), asyncio.create_task(to_guest())]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stream.close()  # ends a read blocked in its thread
    for task in pending:
        task.cancel()
    if tasks[0] in done:  # the guest's side ended: say so to the client
        with contextlib.suppress(Exception):
            await websocket.close(code=1000, reason="the console ended (the guest stopped or moved)")
