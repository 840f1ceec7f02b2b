"""Shared pieces of the benchmarks: a `corral serve` to measure, a watch recorder, statistics."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import libvirt
import libvirt_qemu

CORRAL = str(Path(sys.executable).parent / "corral")
TOKEN = "crl_bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RESULTS = Path(__file__).parent / "results"


@contextmanager
def corral_serve(**env_extra: str) -> Iterator[httpx.Client]:
    """A fresh `corral serve` on the embedded defaults (SQLite, qemu:///system) and a client for it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tempfile.mkdtemp(prefix="corral-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env |= {"CORRAL_DATA_DIR": data, "CORRAL_ADMIN_TOKEN": TOKEN, "CORRAL_LOG_LEVEL": "WARNING", **env_extra}
    if "CORRAL_IMAGE_DIR" in os.environ:
        env["CORRAL_IMAGE_DIR"] = os.environ["CORRAL_IMAGE_DIR"]
    log = Path(data) / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([CORRAL, "serve", "--port", str(port)], env=env, stdout=out, stderr=out)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                node = client.get("/v1/nodes/local").json()
                if node.get("status", {}).get("phase") == "Ready":
                    break
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("corral serve did not start:\n" + log.read_text())
            time.sleep(0.1)
        yield client
    finally:
        remove_instances(client)
        client.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


_event_loop = threading.Lock()
_event_loop_started: list[bool] = []


def open_libvirt(uri: str = "qemu:///system") -> Any:
    """A libvirt connection with events delivered (the benchmarks watch libvirt beside Corral)."""
    with _event_loop:  # one event loop for every connection of the process
        if not _event_loop_started:
            libvirt.virEventRegisterDefaultImpl()
            libvirt.registerErrorHandler(lambda *_: None, None)
            threading.Thread(
                target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)], daemon=True
            ).start()
            _event_loop_started.append(True)
    return libvirt.open(uri)


def overlay_on(backing: str | Path, overlay: Path) -> None:
    """A qcow2 copy-on-write overlay on a qcow2 image: how the raw baselines give each guest its own disk."""
    command = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(backing), str(overlay)]
    subprocess.run(command, check=True)


def ping_until_answered(dom: Any, timeout: float = 120) -> None:
    """Return once qemu-ga in the domain answers guest-ping (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 1, 0)
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)


def remove_instances(client: httpx.Client) -> None:
    """Guests outlive the control plane: delete every instance a benchmark made before stopping Corral."""
    for namespace in ("bench", "default"):
        path = f"/v1/namespaces/{namespace}/instances"
        names = [i["metadata"]["name"] for i in client.get(path).json().get("items", [])]
        for name in names:
            client.delete(f"{path}/{name}")
        for name in names:
            deadline = time.monotonic() + 60
            while client.get(f"{path}/{name}").status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.05)


class WatchRecorder:
    """Every event of a watch stream with the monotonic time it arrived."""

    def __init__(self, client: httpx.Client, path: str) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.changed = threading.Condition()
        self._client = httpx.Client(
            base_url=client.base_url, headers=client.headers, timeout=httpx.Timeout(30, read=None)
        )
        opened = threading.Event()

        def run() -> None:
            try:
                with self._client.stream("GET", path, params={"watch": "true"}) as response:
                    opened.set()
                    for line in response.iter_lines():
                        if line:
                            arrived = time.monotonic()
                            with self.changed:
                                self.events.append((arrived, json.loads(line)))
                                self.changed.notify_all()
            except httpx.HTTPError:
                return

        threading.Thread(target=run, daemon=True).start()
        opened.wait(10)

    def wait(self, name: str, test: Any, after: float, timeout: float = 120) -> float:
        """Arrival time of the first event after `after` whose object named `name` passes `test`."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for arrived, event in self.events:
                    obj = event["object"]
                    if arrived >= after and obj["metadata"]["name"] == name and test(obj):
                        return arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching event for {name}")
                self.changed.wait(left)

    def close(self) -> None:
        self._client.close()


def phase(value: str) -> Any:
    return lambda obj: obj.get("status", {}).get("phase") == value


def agent_connected(obj: dict[str, Any]) -> bool:
    return any(
        c["type"] == "AgentConnected" and c["status"] == "True"
        for c in obj.get("status", {}).get("conditions", [])
    )


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "n": len(samples),
        "median": statistics.median(samples),
        "min": ordered[0],
        "max": ordered[-1],
        "p99": p99,
    }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
