"""containerDisks pulled from a real registry onto real QEMU guests, through `corral serve`: by digest; while
the registry is away ErrImagePull then ImagePullBackOff, back without the tag the registry's answer, and once
the tag is pushed the guest boots, its pull's progress on the watch."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_GUEST_DISK, wait_for
from tests.integration.test_serve import INSTANCES, launch, stop
from tests.registry import Registry, disk_layer


def boot(client: httpx.Client, name: str, image: str) -> None:
    spec = {
        "terminationGracePeriodSeconds": 0,
        "domain": {"resources": {"requests": {"memory": "256Mi"}}},
        "volumes": [{"name": "boot", "containerDisk": {"image": image}}],
    }
    created = client.post(INSTANCES, json={"metadata": {"name": name}, "spec": spec})
    assert created.status_code == 201, created.text


@pytest.mark.qemu
def test_pulled_images_boot_real_guests(registry: Registry, tmp_path: Path) -> None:
    proc, serve = launch(
        tmp_path / "data",
        "qemu:///system",
        image_registries=f"{registry.host}/containerdisks",
        insecure_registries=registry.host,
        image_pull_backoff_seconds="1",
    )
    try:
        serve.watch()
        digest = httpx.head(
            f"http://{registry.host}/v2/containerdisks/test-guest/manifests/latest",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        ).headers["docker-content-digest"]
        boot(serve.client, "pinned", f"{registry.host}/containerdisks/test-guest@{digest}")
        serve.wait("pinned", "Running", agent=True, timeout=90)

        boot(serve.client, "late", "late-real:1")
        for reason in ("ErrImagePull", "ImagePullBackOff"):
            wait_for(
                lambda r=reason: serve.get("late")["status"].get("reason") == r,
                timeout=30,
                what=f"late {reason}",
            )
        assert "MANIFEST_UNKNOWN" in serve.get("late")["status"]["message"]
        # 96 MiB more than the disk: a pull long enough for its progress to show.
        registry.push_image("containerdisks/late-real", "1", [disk_layer(TEST_GUEST_DISK, padding=96 << 20)])
        serve.wait("late", "Running", agent=True, timeout=120)
        pulling = [
            str(e["object"]["status"].get("message"))
            for e in serve.events
            if e["object"]["metadata"]["name"] == "late"
            and e["object"]["status"].get("reason") == "ImagePulling"
        ]
        assert any(" of " in m and m.endswith(" bytes") for m in pulling), pulling
    finally:
        for name in ("pinned", "late"):
            serve.client.delete(f"{INSTANCES}/{name}")
        wait_for(lambda: not serve.client.get(INSTANCES).json()["items"], timeout=60, what="instances gone")
        stop(proc, serve)
