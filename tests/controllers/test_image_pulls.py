"""containerDisks from a real OCI registry (Debian's docker-registry on loopback) onto libvirt's test driver:
references by tag, digest and short name, indexes, plain layers, refusals, back-off and recovery, the cache
shared by instances and collected when unused. Booting the pulled disk is proven on QEMU in
tests/integration/test_pools_qemu.py."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import Database
from app.models import CachedImageRow
from app.virt.driver import Hypervisor
from app.worker.main import build_worker
from tests.conftest import TEST_GUEST_DISK, wait_for, worker_settings
from tests.controllers.test_instances import BASE, get, instance, wait_phase
from tests.registry import Registry, disk_layer

KEEP_UNUSED = 3.0


@pytest.fixture
def worker(pg: Database, registry: Registry, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Quick back-off, and a cache with no room: an image unused for KEEP_UNUSED seconds goes as soon as
    another is pulled. A test using `private_registry` has that one spoken to over plain HTTP too."""
    insecure = [registry.host]
    if "private_registry" in request.fixturenames:
        insecure.append(request.getfixturevalue("private_registry").host)
    settings = worker_settings(
        registry,
        data_dir=tmp_path,
        image_pull_backoff_seconds=0.5,
        image_cache_bytes=0,
        image_keep_unused_seconds=KEEP_UNUSED,
        insecure_registries=",".join(insecure),
    )
    process = build_worker(pg, settings)
    process.start()
    yield process
    process.stop()


def booting(name: str, image: str, **source: Any) -> dict[str, Any]:
    return instance(name, volumes=[{"name": "boot", "containerDisk": {"image": image, **source}}])


def cached(pg: Database) -> list[CachedImageRow]:
    with pg.read() as session:
        rows = list(session.scalars(select(CachedImageRow).order_by(CachedImageRow.id)))
        session.expunge_all()
        return rows


def test_short_name_pulls_once_for_every_instance_on_the_node(
    api: httpx.Client, pg: Database, registry: Registry
) -> None:
    for name in ("first", "second"):
        assert api.post(BASE, json=booting(name, "test-guest")).status_code == 201
    for name in ("first", "second"):
        wait_phase(api, name, "Running", timeout=30)
    [row] = cached(pg)
    assert (row.node, row.name, row.state) == ("td", "test-guest", "Ready")
    assert row.reference and row.reference.startswith(
        f"{registry.host}/containerdisks/test-guest:latest@sha256:"
    )
    assert row.volume == f"image-{row.reference.rsplit(':', 1)[1]}.qcow2" and row.waiters == []
    assert row.bytes_done == row.bytes_total > 0 and row.virtual_size > 0


def test_digest_reference_and_plain_layers(api: httpx.Client, pg: Database, registry: Registry) -> None:
    digest = httpx.get(
        f"http://{registry.host}/v2/containerdisks/test-guest/manifests/latest",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).headers["docker-content-digest"]
    pinned = f"{registry.host}/containerdisks/test-guest@{digest}"
    api.post(BASE, json=booting("pinned", pinned))
    api.post(BASE, json=booting("plain", "test-guest:plain"))
    wait_phase(api, "pinned", "Running", timeout=30)
    wait_phase(api, "plain", "Running", timeout=30)
    references = {r.name: r.reference for r in cached(pg)}
    assert references[pinned] == f"{registry.host}/containerdisks/test-guest@{digest}"
    assert str(references["test-guest:plain"]).startswith(f"{registry.host}/containerdisks/test-guest:plain@")


def test_an_index_is_followed_to_this_platform(api: httpx.Client, pg: Database, registry: Registry) -> None:
    amd64 = registry.push_image("containerdisks/multi", "amd64", [disk_layer(TEST_GUEST_DISK)])
    arm64 = registry.push_image("containerdisks/multi", "arm64", [b"not a tar: pulling this fails"])
    index = registry.push_index("containerdisks/multi", "1.0", {"linux/arm64": arm64, "linux/amd64": amd64})
    api.post(BASE, json=booting("multi", "multi:1.0"))
    wait_phase(api, "multi", "Running", timeout=30)
    [row] = [r for r in cached(pg) if r.name == "multi:1.0"]
    assert row.reference == f"{registry.host}/containerdisks/multi:1.0@{amd64}" and amd64 != index


def test_a_missing_tag_is_err_image_pull_then_back_off_until_it_appears(
    api: httpx.Client, registry: Registry
) -> None:
    api.post(BASE, json=booting("later", "late:1"))
    first = wait_phase(api, "later", "Scheduled", "ErrImagePull")["status"]["message"]
    assert ("late:1" in first and "MANIFEST_UNKNOWN" in first) or "NAME_UNKNOWN" in first
    backoff = wait_phase(api, "later", "Scheduled", "ImagePullBackOff")["status"]["message"]
    assert "failures" in backoff and "retry at" in backoff
    registry.push_image("containerdisks/late", "1", [disk_layer(TEST_GUEST_DISK)])
    wait_phase(api, "later", "Running", timeout=30)


def test_an_unreachable_registry_backs_off_and_recovers(api: httpx.Client, registry: Registry) -> None:
    registry.stop()
    try:
        api.post(BASE, json=booting("outage", "test-guest:plain", imagePullPolicy="Always"))
        message = wait_phase(api, "outage", "Scheduled", "ImagePullBackOff")["status"]["message"]
        assert "ConnectError" in message, message
    finally:
        registry.start()
    wait_phase(api, "outage", "Running", timeout=30)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("backing", "names a backing file"),
        ("datafile", "external data file"),
        ("nodisk", "no disk file under /disk/"),
        ("huge", "over the limit"),
    ],
)
def test_unsafe_disks_are_refused_naming_the_cause(
    api: httpx.Client, registry: Registry, tmp_path: Path, case: str, expected: str
) -> None:
    disk = tmp_path / "disk.qcow2"
    if case == "nodisk":
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "data.raw").write_bytes(b"\0" * 512)
        layer = _tar_of(tmp_path / "etc")
    else:
        options = {
            "backing": ["-b", "/etc/shadow", "-F", "raw", str(disk), "1M"],
            "datafile": ["-o", f"data_file={tmp_path / 'data.raw'}", str(disk), "1M"],
            "huge": [str(disk), "3T"],  # over the 2 TiB default cap
        }[case]
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *options], check=True)
        layer = disk_layer(disk)
    registry.push_image(f"containerdisks/unsafe-{case}", "1", [layer])
    api.post(BASE, json=booting(case, f"unsafe-{case}:1"))
    message = wait_phase(api, case, "Scheduled", "ErrImagePull")["status"]["message"]
    assert expected in message, message


def _tar_of(directory: Path) -> bytes:
    """A gzip layer holding `directory` and nothing under disk/."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(directory, arcname=directory.name)
    return buffer.getvalue()


def test_never_uses_only_what_the_node_has(api: httpx.Client) -> None:
    api.post(BASE, json=booting("never", "test-guest:never-pulled", imagePullPolicy="Never"))
    message = wait_phase(api, "never", "Scheduled", "ErrImageNeverPull")["status"]["message"]
    assert "test-guest:never-pulled" in message


def test_unused_images_are_collected_beyond_the_budget(
    api: httpx.Client, pg: Database, hv: Hypervisor, registry: Registry
) -> None:
    registry.push_image("containerdisks/gc", "a", [disk_layer(TEST_GUEST_DISK, name="a.qcow2")])
    registry.push_image("containerdisks/gc", "b", [disk_layer(TEST_GUEST_DISK, name="b.qcow2")])
    api.post(BASE, json=booting("gc-a", "gc:a"))
    wait_phase(api, "gc-a", "Running", timeout=30)
    [first] = [r for r in cached(pg) if r.name == "gc:a"]
    api.delete(f"{BASE}/gc-a")
    wait_for(lambda: api.get(f"{BASE}/gc-a").status_code == 404, what="gc-a deleted")
    time.sleep(KEEP_UNUSED)  # an image wanted moments ago is kept (an instance may be about to use it)
    api.post(BASE, json=booting("gc-b", "gc:b"))
    wait_phase(api, "gc-b", "Running", timeout=30)
    # The budget is 0: gc:a (unused) went when gc:b arrived; gc:b stays while gc-b's disk is on it.
    assert "gc:a" not in {r.name for r in cached(pg)}
    assert hv.volume_path("corral-instances", str(first.volume)) is None
    [second] = [r for r in cached(pg) if r.name == "gc:b"]
    assert hv.volume_path("corral-instances", str(second.volume)) is not None
    assert get(api, "gc-b")["status"]["phase"] == "Running"


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry that wants a login, holding the test guest."""
    private = Registry(tmp_path / "private", login=("puller", "s3cret"))
    private.start()
    private.push_image("disks/guest", "latest", [disk_layer(TEST_GUEST_DISK)])
    yield private
    private.stop()


def login_secret(name: str, host: str, user: str, password: str) -> dict[str, Any]:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": auth}}})
    return {
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config},
    }


def test_an_image_pull_secret_logs_in_to_a_private_registry(
    private_registry: Registry, api: httpx.Client
) -> None:
    image = f"{private_registry.host}/disks/guest:latest"
    secrets = "/v1/namespaces/default/secrets"
    host = private_registry.host
    assert api.post(secrets, json=login_secret("wrong", host, "puller", "nope")).status_code == 201
    api.post(BASE, json=booting("denied", image, imagePullSecret="wrong"))
    refused = wait_phase(api, "denied", "Scheduled", "ErrImagePull")["status"]["message"]
    assert "401" in refused or "unauthorized" in refused.lower()
    assert api.post(secrets, json=login_secret("right", host, "puller", "s3cret")).status_code == 201
    api.post(BASE, json=booting("allowed", image, imagePullSecret="right"))
    wait_phase(api, "allowed", "Running", timeout=60)
    missing = api.post(BASE, json=booting("nosecret", image, imagePullSecret="absent"))
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "spec.volumes[0].containerDisk.imagePullSecret"


def test_a_datavolume_imports_from_a_private_registry_with_cdi_keys(
    private_registry: Registry, api: httpx.Client
) -> None:
    secrets, dvs = "/v1/namespaces/default/secrets", "/v1/namespaces/default/datavolumes"
    keys = {"accessKeyId": "puller", "secretKey": "s3cret"}
    assert api.post(secrets, json={"metadata": {"name": "cdi"}, "stringData": keys}).status_code == 201
    source = {"registry": {"url": f"docker://{private_registry.host}/disks/guest:latest", "secretRef": "cdi"}}
    body = {"metadata": {"name": "private"}, "spec": {"source": source, "storage": {}}}
    created = api.post(dvs, json=body)
    assert created.status_code == 201, created.text
    wait_for(lambda: api.get(f"{dvs}/private").json()["status"].get("phase") == "Succeeded", timeout=60)
    source["registry"]["secretRef"] = "absent"
    body["metadata"]["name"] = "nologin"
    answer = api.post(dvs, json=body)
    assert (
        answer.status_code == 422 and answer.json()["errors"][0]["field"] == "spec.source.registry.secretRef"
    )
