"""DataVolumes on real QEMU guests: a disk imported over HTTP (checksum verified) is attached next to a
containerDisk pulled from the registry, a guest writes to it through the guest agent, the instance goes, a
new instance reads the data back; a clone carries it too; `corral upload` stores exactly the file's bytes."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.virt.driver import STORAGE_POOL
from app.virt.libvirt_driver import connect
from tests.conftest import (
    ADMIN_TOKEN,
    TEST_GUEST_DISK,
    conditions,
    wait_for,
)
from tests.http_source import HttpSource

INSTANCES = "/v1/namespaces/default/instances"
DVS = "/v1/namespaces/default/datavolumes"
DATA_DISK = TEST_GUEST_DISK.with_name("disk.qcow2")
MESSAGE = b"written-by-a-guest"


def wait_dv(api: httpx.Client, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status = api.get(f"{DVS}/{name}").json()["status"]
        assert status["phase"] != "Failed", status
        return status if status["phase"] == "Succeeded" else None

    return wait_for(done, timeout=60, interval=0.2, what=f"DataVolume {name} Succeeded")


def boot_with(api: httpx.Client, name: str, data_volume: str) -> None:
    """The registry's test guest as the boot disk (vda), the DataVolume as vdb; waits for the agent."""
    volumes = [
        {"name": "boot", "containerDisk": {"image": "test-guest"}},
        {"name": "data", "dataVolume": {"name": data_volume}},
    ]
    spec = {"domain": {"resources": {"requests": {"memory": "256Mi"}}}, "volumes": volumes}
    created = api.post(INSTANCES, json={"metadata": {"name": name}, "spec": spec})
    assert created.status_code == 201, created.text
    wait_for(
        lambda: conditions(api.get(f"{INSTANCES}/{name}").json()).get("AgentConnected") == "True",
        timeout=90,
        interval=0.2,
        what=f"{name}'s guest agent",
    )


def run(api: httpx.Client, name: str, script: str) -> bytes:
    ran = api.post(f"{INSTANCES}/{name}/guest/exec", json={"command": ["/bin/sh", "-c", script]})
    assert ran.status_code == 200 and ran.json()["exitCode"] == 0, ran.text
    return base64.b64decode(ran.json()["stdoutBase64"])


def delete(api: httpx.Client, name: str) -> None:
    api.delete(f"{INSTANCES}/{name}")
    wait_for(lambda: api.get(f"{INSTANCES}/{name}").status_code == 404, timeout=60, what=f"{name} deleted")


@pytest.mark.qemu
def test_data_outlives_the_instance_and_travels_with_a_clone(api: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "data.qcow2").write_bytes(DATA_DISK.read_bytes())
    files = HttpSource(tmp_path / "files")
    try:
        checksum = "sha256:" + hashlib.sha256(DATA_DISK.read_bytes()).hexdigest()
        source = {"http": {"url": files.url("files/data.qcow2"), "checksum": checksum}}
        body = {
            "metadata": {"name": "data"},
            "spec": {"source": source, "storage": {"resources": {"requests": {"storage": "96Mi"}}}},
        }
        assert api.post(DVS, json=body).status_code == 201
        assert wait_dv(api, "data")["capacity"] == 96 << 20
    finally:
        files.stop()

    boot_with(api, "writer", "data")
    assert run(api, "writer", "cat /sys/block/vdb/size").strip() == str((96 << 20) // 512).encode()
    run(api, "writer", f"printf '{MESSAGE.decode()}' > /dev/vdb && sync")
    delete(api, "writer")

    boot_with(api, "reader", "data")
    assert run(api, "reader", f"head -c {len(MESSAGE)} /dev/vdb") == MESSAGE
    delete(api, "reader")

    clone = {"metadata": {"name": "copy"}, "spec": {"source": {"pvc": {"name": "data"}}}}
    assert api.post(DVS, json=clone).status_code == 201
    wait_dv(api, "copy")
    boot_with(api, "clone-reader", "copy")
    assert run(api, "clone-reader", f"head -c {len(MESSAGE)} /dev/vdb") == MESSAGE


@pytest.mark.qemu
def test_corral_upload_stores_the_files_bytes(api: httpx.Client, server: Any) -> None:
    cli = Path(sys.executable).with_name("corral")
    env = {**os.environ, "CORRAL_TOKEN": ADMIN_TOKEN, "CORRAL_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [
            str(cli),
            "upload",
            "dv",
            "uploaded",
            "--file",
            str(DATA_DISK),
            "--size",
            "80Mi",
            "--server",
            server.url,
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "datavolumes/uploaded Succeeded" in done.stdout
    assert "uploading disk.qcow2" in done.stderr and "100%" in done.stderr  # the bar's final frame
    uid = api.get(f"{DVS}/uploaded").json()["metadata"]["uid"]
    hv = connect("qemu:///system")
    try:
        path = hv.volume_path(STORAGE_POOL, f"dv-{uid}.qcow2")
    finally:
        hv.close()
    assert path is not None
    same = subprocess.run(["qemu-img", "compare", "-q", str(DATA_DISK), path], check=False)
    assert same.returncode == 0  # the same guest-visible bytes (the rest of the 80 MiB reads as zeros)
    boot_with(api, "uploaded-reader", "uploaded")  # a guest sees the uploaded ext4 disk: its label
    assert run(api, "uploaded-reader", "dd if=/dev/vdb bs=1 skip=1144 count=11 2>/dev/null") == b"corral-data"
