"""Live migration between nodes that do not share storage (scripts/migration-nodes.sh --local-storage: node 2
has its own instance volume directory), with a real TCG guest: the overlay disk is created empty on the
target and copied during the migration, data written before the move reads back after it, and the source's
original goes away."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from app.virt.driver import STORAGE_POOL
from app.virt.libvirt_driver import connect
from tests.conftest import wait_for
from tests.integration.test_migration_qemu import (
    INSTANCES,
    NODE_NUMBERS,
    Cluster,
    node_uri,
    rig_running,
    seeded_cluster,
    where,
)
from tests.registry import Registry

DVS = "/v1/namespaces/default/datavolumes"
SECTOR = 4096  # a block of the guest's first disk, far from anything the guest uses (it boots from RAM)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[Cluster]:
    pulls = {"image_registries": f"{registry.host}/containerdisks", "insecure_registries": registry.host}
    data = tmp_path_factory.mktemp("copy") / "data"
    with rig_running("--local-storage"), seeded_cluster(data, **pulls) as made:
        yield made


def pooled(volume: str) -> dict[int, bool]:
    """Whether each rig node's volume pool has the volume (asked of libvirt on the node)."""
    found = {}
    for n in (1, 2):
        hv = connect(node_uri(n))
        try:
            hv.refresh_pool(STORAGE_POOL)
            found[n] = hv.volume_path(STORAGE_POOL, volume) is not None
        finally:
            hv.close()
    return found


def test_a_migration_copies_the_disk_the_target_lacks(cluster: Cluster) -> None:
    before = cluster.serve.get("test-vmi")
    uid, source = before["metadata"]["uid"], before["status"]["nodeName"]
    marker = base64.b16encode(uid.encode()[:16]).decode()  # this run's own bytes
    cluster.shell(f"printf {marker} | dd of=/dev/vda bs=512 seek={SECTOR} conv=notrunc,fsync 2>/dev/null")
    uptime_before = cluster.uptime()

    done = cluster.wait_migration(cluster.migrate(), ("Succeeded", "Failed"))
    state = done["status"]["migrationState"]
    assert done["status"]["phase"] == "Succeeded", done["status"]
    copied = state["copiedVolumes"]
    assert copied and all(v.startswith(uid) for v in copied), state
    target = state["targetNode"]

    after = cluster.serve.wait("test-vmi", "Running", agent=True, timeout=30)
    assert after["status"]["nodeName"] == target != source
    assert where(after["status"]["domainName"], uid) == {target: "Running"}
    assert cluster.uptime() >= uptime_before  # not restarted
    read = cluster.shell(f"dd if=/dev/vda bs=512 skip={SECTOR} count=1 2>/dev/null | head -c {len(marker)}")
    assert read == marker  # the copy carries what the guest wrote before the move
    for volume in copied:  # the original left the source; the copy is the target's
        assert pooled(volume) == {NODE_NUMBERS[source]: False, NODE_NUMBERS[target]: True}


def test_the_target_pulls_the_registry_image_the_source_runs_on(cluster: Cluster, registry: Registry) -> None:
    """The base image is cached on the source only: the target pulls the very digest, then the overlay is
    copied onto it."""
    client = cluster.serve.client
    digest = httpx.head(
        f"http://{registry.host}/v2/containerdisks/test-guest/manifests/latest",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).headers["docker-content-digest"]
    base = f"image-{digest.removeprefix('sha256:')}.qcow2"
    for n in (1, 2):  # an earlier run (another Corral database) may have left the image on a node
        hv = connect(node_uri(n))
        try:
            hv.delete_volume(STORAGE_POOL, base)
        finally:
            hv.close()
    spec = {
        "domain": {"resources": {"requests": {"memory": "256Mi"}}},
        "volumes": [{"name": "boot", "containerDisk": {"image": "test-guest"}}],
    }
    assert client.post(INSTANCES, json={"metadata": {"name": "pulled"}, "spec": spec}).status_code == 201
    before = cluster.serve.wait("pulled", "Running", agent=True, timeout=90)
    source = before["status"]["nodeName"]
    other = next(n for n in NODE_NUMBERS if n != source)
    assert pooled(base) == {NODE_NUMBERS[source]: True, NODE_NUMBERS[other]: False}

    done = cluster.wait_migration(cluster.migrate("pulled"), ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    after = cluster.serve.wait("pulled", "Running", agent=True, timeout=30)
    assert after["status"]["nodeName"] == other
    assert pooled(base) == {1: True, 2: True}  # the same digest on both; the source keeps its cached copy
    ran = client.post(f"{INSTANCES}/pulled/guest/exec", json={"command": ["/bin/true"]})
    assert ran.status_code == 200 and ran.json()["exitCode"] == 0
    client.delete(f"{INSTANCES}/pulled")
    wait_for(lambda: client.get(f"{INSTANCES}/pulled").status_code == 404, timeout=60, what="pulled deleted")


def test_a_data_volume_moves_with_its_instance(cluster: Cluster) -> None:
    """The DataVolume's disk is copied to the target during the migration; the original goes, the
    DataVolume names the new node, and what the guest wrote is there."""
    client = cluster.serve.client
    blank = {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "32Mi"}}}}
    assert client.post(DVS, json={"metadata": {"name": "moving"}, "spec": blank}).status_code == 201
    wait_for(
        lambda: client.get(f"{DVS}/moving").json()["status"].get("phase") == "Succeeded",
        timeout=30,
        what="DataVolume Succeeded",
    )
    dv = client.get(f"{DVS}/moving").json()
    disk = f"dv-{dv['metadata']['uid']}.qcow2"
    spec = {
        "domain": {"resources": {"requests": {"memory": "256Mi"}}},
        "volumes": [
            {"name": "boot", "containerDisk": {"image": "test-guest"}},
            {"name": "data", "dataVolume": {"name": "moving"}},
            {"name": "seed", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
        ],
    }
    assert client.post(INSTANCES, json={"metadata": {"name": "carrier"}, "spec": spec}).status_code == 201
    before = cluster.serve.wait("carrier", "Running", agent=True, timeout=90)
    source = before["status"]["nodeName"]
    assert source == dv["status"]["nodeName"]  # placed where its disk is
    write = {"command": ["/bin/sh", "-c", "printf carried-along > /dev/vdb && sync"]}
    assert client.post(f"{INSTANCES}/carrier/guest/exec", json=write).json()["exitCode"] == 0
    address = {"command": ["/bin/sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}'"]}
    wait_for(
        lambda: (
            client.post(f"{INSTANCES}/carrier/guest/exec", json=address).json()["stdout"].startswith("10.88.")
        ),
        timeout=30,
        what="the guest's DHCP address",
    )
    before_address = client.post(f"{INSTANCES}/carrier/guest/exec", json=address).json()["stdout"]

    done = cluster.wait_migration(cluster.migrate("carrier"), ("Succeeded", "Failed"))
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert disk in done["status"]["migrationState"]["copiedVolumes"]
    target = done["status"]["migrationState"]["targetNode"]
    cluster.serve.wait("carrier", "Running", agent=True, timeout=30)
    assert client.get(f"{DVS}/moving").json()["status"]["nodeName"] == target != source
    assert pooled(disk) == {NODE_NUMBERS[source]: False, NODE_NUMBERS[target]: True}
    read = {"command": ["/bin/sh", "-c", "head -c 13 /dev/vdb"]}
    assert client.post(f"{INSTANCES}/carrier/guest/exec", json=read).json()["stdout"] == "carried-along"
    # Addresses across a migration: the guest keeps its address, and the target node's NAT network (the
    # same subnet on every node) is its gateway at the same address.
    assert client.post(f"{INSTANCES}/carrier/guest/exec", json=address).json()["stdout"] == before_address
    gateway = {"command": ["/bin/sh", "-c", "ping -c 1 -W 3 10.88.0.1"], "timeoutSeconds": 10}
    assert client.post(f"{INSTANCES}/carrier/guest/exec", json=gateway).json()["exitCode"] == 0
    # The cloud-init seed was made on the target (read-only, so made rather than copied) and still reads.
    seed = {
        "command": ["/bin/sh", "-c", "mkdir -p /s && mount -t iso9660 -o ro /dev/sr0 /s && cat /s/meta-data"]
    }
    meta = client.post(f"{INSTANCES}/carrier/guest/exec", json=seed).json()["stdout"]
    assert meta.startswith(f"instance-id: {before['metadata']['uid']}\n")
    assert pooled(f"{before['metadata']['uid']}-seed.iso") == {
        NODE_NUMBERS[source]: False,
        NODE_NUMBERS[target]: True,
    }
    client.delete(f"{INSTANCES}/carrier")
    wait_for(
        lambda: client.get(f"{INSTANCES}/carrier").status_code == 404, timeout=60, what="carrier deleted"
    )
    client.delete(f"{DVS}/moving")
    wait_for(lambda: client.get(f"{DVS}/moving").status_code == 404, timeout=30, what="DataVolume deleted")
    assert pooled(disk) == {1: False, 2: False}
