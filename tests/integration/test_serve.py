"""`corral serve` on the embedded defaults (SQLite file, the local libvirtd), driven with curl and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "crl_integration-token"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def corral(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env |= {"CORRAL_DATA_DIR": str(tmp_path / "data"), "CORRAL_ADMIN_TOKEN": TOKEN,
            "CORRAL_HEARTBEAT_SECONDS": "2"}  # fmt: skip
    corral_bin = Path(sys.executable).parent / "corral"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [corral_bin, "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("corral serve did not become ready:\n" + (tmp_path / "serve.log").read_text())
        yield url, env | {"CORRAL_SERVER": url, "CORRAL_TOKEN": TOKEN}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    assert (tmp_path / "data" / "corral.db").exists()


def curl(*args: str) -> Any:
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {TOKEN}", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout) if out.stdout else None


def test_serve_registers_the_local_qemu_node_and_serves_the_api(corral: tuple[str, dict[str, str]]) -> None:
    url, env = corral
    assert shutil.which("curl"), "curl is required"
    deadline, local = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        local = curl(f"{url}/v1/nodes/local")
        if local["status"].get("phase") == "Ready":
            break
        time.sleep(0.2)
    assert local is not None and local["status"]["phase"] == "Ready", local
    assert local["spec"]["uri"] == "qemu:///system"  # the local libvirtd answered, so no test driver
    assert local["status"]["nodeInfo"]["hypervisorType"] == "QEMU"
    assert local["status"]["virtType"] == "qemu"  # this host's KVM is paravirtual: guests run under TCG

    corral_bin = str(Path(sys.executable).parent / "corral")
    applied = subprocess.run(
        [corral_bin, "apply", "-f", str(ROOT / "examples" / "vmi-guest-agent.yaml")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "instances/test-vmi created" in applied.stdout
    listed = subprocess.run(
        [corral_bin, "get", "instances"], env=env, capture_output=True, text=True, check=True
    )
    assert "test-vmi" in listed.stdout
    subprocess.run([corral_bin, "delete", "instances", "test-vmi"], env=env, check=True, capture_output=True)
    deadline = time.monotonic() + 10
    while (
        httpx.get(
            f"{url}/v1/namespaces/default/instances/test-vmi",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        ).status_code
        != 404
    ):
        assert time.monotonic() < deadline, "the worker did not finalize the deletion"
        time.sleep(0.05)

    created = curl(
        "-X",
        "POST",
        "-H",
        "Content-Type: application/yaml",
        "--data-binary",
        f"@{ROOT / 'examples' / 'vmi-status-shape.yaml'}",
        f"{url}/v1/namespaces/demo/instances",
    )
    assert created["metadata"]["namespace"] == "demo"
    bad = subprocess.run(
        [
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "-d",
            "{",
            f"{url}/v1/nodes",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.stdout == "400"
    assert httpx.get(f"{url}/v1/nodes").status_code == 401
