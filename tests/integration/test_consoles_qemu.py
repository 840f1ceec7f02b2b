"""The serial console of a real guest over a WebSocket: the guest's output, the echo of what is typed and
the shell's answer; one client at a time unless forced; viewers refused; the socket closes when the guest
stops."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ADMIN_TOKEN, bearer, conditions, make_token, server_with_pool, wait_for

INSTANCES = "/v1/namespaces/default/instances"


def console(server: Any, token: str, force: bool = False) -> ClientConnection:
    url = (
        server.url.replace("http://", "ws://")
        + f"{INSTANCES}/term/console"
        + ("?force=true" if force else "")
    )
    return connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)


def read_until(socket: ClientConnection, wanted: bytes, timeout: float = 15) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"{wanted!r} not seen on the console; got {seen[-300:]!r}"
        try:
            frame = socket.recv(timeout=left)
        except TimeoutError:
            continue
        seen += frame if isinstance(frame, bytes) else frame.encode()
    return seen


@pytest.mark.qemu
def test_the_serial_console_over_a_websocket(api: httpx.Client, server: Any) -> None:
    spec = {"domain": {"resources": {"requests": {"memory": "192Mi"}}}}
    assert api.post(INSTANCES, json={"metadata": {"name": "term"}, "spec": spec}).status_code == 201
    wait_for(
        lambda: conditions(api.get(f"{INSTANCES}/term").json()).get("AgentConnected") == "True",
        timeout=90,
        interval=0.2,
        what="the guest up",
    )
    # `corral console`: what is typed goes to the guest, its output comes back, Ctrl-] leaves.
    env = {**os.environ, "CORRAL_TOKEN": ADMIN_TOKEN, "CORRAL_LOG_LEVEL": "WARNING"}
    cli = subprocess.Popen(
        [str(Path(sys.executable).with_name("corral")), "console", "term", "--server", server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert cli.stdin is not None and cli.stdout is not None
    output: list[bytes] = []
    threading.Thread(
        target=lambda: output.extend(iter(lambda: cli.stdout.read1(4096), b"")), daemon=True
    ).start()
    cli.stdin.write(b"\recho cli-$((3*3))\r")
    cli.stdin.flush()
    wait_for(lambda: b"cli-9\r\n" in b"".join(output), timeout=15, what="the guest's answer through the CLI")
    cli.stdin.write(b"\x1d")
    cli.stdin.flush()
    assert cli.wait(10) == 0

    viewer = make_token(api, "watcher", [{"role": "viewer", "namespace": "default"}])
    with pytest.raises(InvalidStatus) as refused:
        console(server, viewer)
    assert refused.value.response.status_code == 403

    with console(server, ADMIN_TOKEN) as first:
        first.send(b"\recho corral-$((6*7))\r")
        seen = read_until(first, b"corral-42\r\n")
        assert b"echo corral-$((6*7))" in seen  # the echo of what was typed, then the shell's answer
        with pytest.raises(InvalidStatus) as busy:
            console(server, ADMIN_TOKEN)
        assert busy.value.response.status_code == 409

        with console(server, ADMIN_TOKEN, force=True) as second:  # takes the console over: the first ends
            with pytest.raises(ConnectionClosed):
                while True:
                    first.recv(timeout=10)
            second.send("echo second-$((2+3))\r")
            read_until(second, b"second-5")

            assert api.post(f"{INSTANCES}/term/stop").status_code == 202  # the guest stops: its console ends
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    second.recv(timeout=60)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def display(base_url: str, name: str) -> ClientConnection:
    url = base_url.replace("http://", "ws://") + f"{INSTANCES}/{name}/vnc"
    return connect(url, additional_headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, open_timeout=10)


@pytest.mark.qemu
def test_the_display_speaks_rfb_over_a_websocket(api: httpx.Client, server: Any, pg_url: str) -> None:
    spec = {"domain": {"resources": {"requests": {"memory": "192Mi"}}}}
    assert api.post(INSTANCES, json={"metadata": {"name": "screen"}, "spec": spec}).status_code == 201
    wait_for(lambda: api.get(f"{INSTANCES}/screen").json()["status"].get("phase") == "Running", timeout=60)
    with display(server.url, "screen") as rfb:
        buffer = b""

        def take(count: int) -> bytes:
            nonlocal buffer
            while len(buffer) < count:
                frame = rfb.recv(timeout=10)
                buffer += frame if isinstance(frame, bytes) else frame.encode()
            taken, buffer = buffer[:count], buffer[count:]
            return taken

        assert take(12).startswith(b"RFB 003.")  # the server's protocol version
        rfb.send(b"RFB 003.008\n")
        count = take(1)[0]
        assert 1 in take(count)  # security type None: Corral authorized the caller
        rfb.send(bytes([1]))
        assert take(4) == b"\0\0\0\0"  # security result: OK
        rfb.send(bytes([1]))  # ClientInit, shared
        width, height = int.from_bytes(take(2), "big"), int.from_bytes(take(2), "big")
        assert width > 0 and height > 0  # ServerInit: the framebuffer

    # Open displays wait on the guest in threads of their own: an API process with two request threads
    # (a database pool of two) still answers with three displays open, each blocked reading.
    with server_with_pool(pg_url, 2) as narrow, ExitStack() as opened:
        for _ in range(3):
            viewer = opened.enter_context(display(narrow.url, "screen"))
            assert viewer.recv(timeout=10)[:8] == b"RFB 003."  # its reader now waits for more
        started = time.monotonic()
        answer = httpx.get(f"{narrow.url}{INSTANCES}/screen", headers=bearer(ADMIN_TOKEN), timeout=10)
        assert answer.status_code == 200 and time.monotonic() - started < 5
