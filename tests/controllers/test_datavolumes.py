"""DataVolumes on libvirt's test driver with a real registry and a real HTTP server: every source, every
refusal, the single-writer rule, deletion while in use, and instances pinned to the disk's node. The
bytes themselves (imported, written by a guest, read back after the instance is gone) are proven on QEMU in
tests/integration/test_datavolumes_qemu.py."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.virt.driver import STORAGE_POOL, Hypervisor
from tests.conftest import TEST_GUEST_DISK, conditions, wait_for
from tests.controllers.test_instances import BASE, get, instance, wait_phase
from tests.http_source import HttpSource
from tests.registry import Registry

DVS = "/v1/namespaces/default/datavolumes"
DATA_DISK = TEST_GUEST_DISK.with_name("disk.qcow2")  # the test guest's 64 MiB ext4 data disk


@pytest.fixture
def files(tmp_path: Path) -> Iterator[HttpSource]:
    (tmp_path / "data.qcow2").write_bytes(DATA_DISK.read_bytes())
    subprocess.run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "/etc/shadow",
            "-F",
            "raw",
            str(tmp_path / "evil.qcow2"),
        ],
        check=True,
    )
    served = HttpSource(tmp_path)
    yield served
    served.stop()


def dv(name: str, source: dict[str, Any], size: str | None = "128Mi", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": source, **spec}
    if size is not None:
        body["storage"] = {"resources": {"requests": {"storage": size}}}
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name},
        "spec": body,
    }


def dv_status(api: httpx.Client, name: str) -> dict[str, Any]:
    return api.get(f"{DVS}/{name}").json().get("status", {})


def wait_dv(api: httpx.Client, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(
        lambda: dv_status(api, name).get("phase") == phase and dv_status(api, name),
        timeout=timeout,
        what=f"DataVolume {name} {phase} (now {dv_status(api, name)})",
    )


def attaching(name: str, *volumes: str) -> dict[str, Any]:
    return instance(
        name, volumes=[{"name": f"d{i}", "dataVolume": {"name": v}} for i, v in enumerate(volumes)]
    )


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_http_import_with_checksum_grows_to_the_request(
    api: httpx.Client, files: HttpSource, hv: Hypervisor
) -> None:
    source = {"http": {"url": files.url("redirect/data.qcow2"), "checksum": sha256(DATA_DISK)}}
    assert api.post(DVS, json=dv("imported", source, "256Mi")).status_code == 201
    status = wait_dv(api, "imported", "Succeeded")
    assert status["progress"] == "100.0%" and status["capacity"] == 256 << 20 and status["nodeName"] == "td"
    assert (conditions({"status": status})["Ready"], conditions({"status": status})["Bound"]) == (
        "True",
        "True",
    )
    assert files.requests[:2] == ["/redirect/data.qcow2", "/files/data.qcow2"]
    uid = api.get(f"{DVS}/imported").json()["metadata"]["uid"]
    assert hv.volume_path(STORAGE_POOL, f"dv-{uid}.qcow2") is not None


@pytest.mark.parametrize(
    ("path", "checksum", "size", "expected"),
    [
        ("files/data.qcow2", "sha256:" + "0" * 64, "128Mi", "checksum mismatch: expected sha256:000"),
        ("files/evil.qcow2", None, "128Mi", "names a backing file"),
        ("truncated/data.qcow2", None, "128Mi", "the transfer ended early"),
        ("to-metadata", None, "128Mi", "169.254.169.254"),
        ("files/data.qcow2", None, "1Mi", "smaller than the image's virtual size"),
        ("files/missing.qcow2", None, "128Mi", "404"),
    ],
)
def test_import_refusals_fail_naming_the_cause(
    api: httpx.Client, files: HttpSource, path: str, checksum: str | None, size: str, expected: str
) -> None:
    source: dict[str, Any] = {"url": files.url(path)}
    if checksum:
        source["checksum"] = checksum
    api.post(DVS, json=dv("refused", {"http": source}, size))
    status = wait_dv(api, "refused", "Failed", timeout=40)
    assert expected in status["message"], status["message"]
    assert conditions({"status": status})["Ready"] == "False"
    if path.startswith("truncated"):
        assert files.requests.count(f"/{path}") == 3  # tried again before giving up


def test_loopback_by_name_and_other_schemes_are_refused(api: httpx.Client, files: HttpSource) -> None:
    port = files.server.server_address[1]
    api.post(DVS, json=dv("local", {"http": {"url": f"http://localhost:{port}/files/data.qcow2"}}))
    message = wait_dv(api, "local", "Failed")["message"]
    assert "loopback, link-local or metadata" in message
    assert message.startswith("GET http://localhost")  # a message is never taken for a URL
    for unparsable in ("https://x]y/disk", "https://[1.2]/disk", "https://a b/disk"):
        refused = api.post(DVS, json=dv("odd", {"http": {"url": unparsable}}))
        assert refused.status_code == 422 and "spec.source.http.url" in refused.text, unparsable
    ftp = api.post(DVS, json=dv("ftp", {"http": {"url": "ftp://example.com/disk.qcow2"}}))
    assert ftp.status_code == 422 and "spec.source.http.url" in ftp.text
    two = api.post(DVS, json=dv("two", {"blank": {}, "upload": {}}))
    assert two.status_code == 422 and "exactly one source" in two.text
    sizeless = api.post(DVS, json=dv("sizeless", {"blank": {}}, None))
    assert sizeless.status_code == 422 and "requests.storage" in sizeless.text


def test_registry_import(api: httpx.Client, registry: Registry) -> None:
    source = {"registry": {"url": f"docker://{registry.host}/containerdisks/test-guest:latest"}}
    api.post(DVS, json=dv("from-registry", source, None))
    status = wait_dv(api, "from-registry", "Succeeded")
    assert status["capacity"] > 0
    missing = {"registry": {"url": f"docker://{registry.host}/containerdisks/nothing:1"}}
    api.post(DVS, json=dv("not-there", missing, None))
    assert "MANIFEST_UNKNOWN" in wait_dv(api, "not-there", "Failed")[
        "message"
    ] or "NAME_UNKNOWN" in dv_status(api, "not-there").get("message", "")


def test_upload_then_refusals(api: httpx.Client, files: HttpSource, hv: Hypervisor) -> None:
    api.post(DVS, json=dv("uploaded", {"upload": {}}, "100Mi"))
    wait_dv(api, "uploaded", "UploadReady")
    evil = api.put(f"{DVS}/uploaded/upload", content=(files.root / "evil.qcow2").read_bytes())
    assert evil.status_code == 422 and "backing file" in evil.json()["detail"]
    assert dv_status(api, "uploaded")["phase"] == "UploadReady"  # another try is welcome
    with DATA_DISK.open("rb") as disk:
        done = api.put(f"{DVS}/uploaded/upload", content=iter(lambda: disk.read(1 << 16), b""))
    assert done.status_code == 200, done.text
    assert done.json()["status"]["phase"] == "Succeeded" and done.json()["status"]["capacity"] == 100 << 20
    again = api.put(f"{DVS}/uploaded/upload", content=b"x")
    assert again.status_code == 409 and "Succeeded" in again.json()["detail"]
    api.post(DVS, json=dv("not-upload", {"blank": {}}))
    assert api.put(f"{DVS}/not-upload/upload", content=b"x").status_code == 409


def test_clone_blank_and_instances_on_the_disks_node(api: httpx.Client, hv: Hypervisor) -> None:
    api.post(DVS, json=dv("original", {"blank": {}}, "64Mi"))
    wait_dv(api, "original", "Succeeded")
    api.post(DVS, json=dv("copy", {"pvc": {"name": "original"}}, "96Mi"))
    copy = wait_dv(api, "copy", "Succeeded")
    assert copy["capacity"] == 96 << 20 and copy["nodeName"] == "td"
    api.post(BASE, json=attaching("user", "original", "copy"))
    running = wait_phase(api, "user", "Running")
    assert running["status"]["nodeName"] == "td"
    assert conditions(running)["LiveMigratable"] == "True"  # its disks move with it (copy-storage)
    xml = hv.domain_xml(running["status"]["domainName"])
    for name in ("original", "copy"):
        assert f"dv-{api.get(f'{DVS}/{name}').json()['metadata']['uid']}.qcow2" in xml


def test_one_instance_per_disk_and_no_deletion_while_used(api: httpx.Client, hv: Hypervisor) -> None:
    api.post(DVS, json=dv("shared", {"blank": {}}))
    wait_dv(api, "shared", "Succeeded")
    uid = api.get(f"{DVS}/shared").json()["metadata"]["uid"]
    assert api.post(BASE, json=attaching("first", "shared")).status_code == 201
    second = api.post(
        BASE,
        json=instance("second", volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "shared"}}]),
    )
    assert second.status_code == 409 and "'first'" in second.json()["detail"]
    assert "spec.volumes[0].persistentVolumeClaim.claimName" in second.text
    busy = api.delete(f"{DVS}/shared")
    assert busy.status_code == 409 and "in use by instance 'first'" in busy.json()["detail"]
    wait_phase(api, "first", "Running")
    api.delete(f"{BASE}/first")
    wait_for(lambda: api.get(f"{BASE}/first").status_code == 404, what="first deleted")
    assert hv.volume_path(STORAGE_POOL, f"dv-{uid}.qcow2") is not None  # the disk outlived it
    assert api.delete(f"{DVS}/shared").status_code == 202
    wait_for(lambda: api.get(f"{DVS}/shared").status_code == 404, what="DataVolume deleted")
    assert hv.volume_path(STORAGE_POOL, f"dv-{uid}.qcow2") is None


def test_an_instance_waits_for_its_disk(api: httpx.Client) -> None:
    api.post(BASE, json=attaching("early", "later"))
    waiting = wait_phase(api, "early", "Pending", "DataVolumeNotReady")
    assert "later does not exist" in waiting["status"]["message"]
    api.post(DVS, json=dv("later", {"blank": {}}))
    wait_phase(api, "early", "Running")
    assert get(api, "early")["status"]["nodeName"] == "td"


def test_pools_cannot_share_a_disk(api: httpx.Client) -> None:
    template = {"spec": attaching("x", "disk")["spec"]}
    body = {"metadata": {"name": "p"}, "spec": {"size": 1, "template": template}}
    refused = api.post("/v1/namespaces/default/pools", json=body)
    assert refused.status_code == 422 and "spec.template.spec.volumes" in refused.text
