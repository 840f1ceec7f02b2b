"""Live migration between nodes that do not share storage (scripts/migration-nodes.sh --local-storage: node 2
has its own instance volume directory), with a real TCG guest: the overlay disk is created empty on the
target and copied during the migration, data written before the move reads back after it, and the source's
original goes away."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from app.virt.driver import STORAGE_POOL
from app.virt.libvirt_driver import connect
from tests.integration.test_migration_qemu import (
    NODE_NUMBERS,
    Cluster,
    node_uri,
    rig_running,
    seeded_cluster,
    where,
)

SECTOR = 4096  # a block of the guest's first disk, far from anything the guest uses (it boots from RAM)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with rig_running("--local-storage"), seeded_cluster(tmp_path_factory.mktemp("copy") / "data") as made:
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
