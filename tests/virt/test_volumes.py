"""The storage half of the hypervisor port on both backends: overlays and their backings, clones, resizing,
and the two ways a file reaches a node's pool (moved in when this process sees the pool's directory,
streamed through libvirt otherwise)."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from app.controllers.naming import default_network
from app.virt.disk_import import store_file, visible_pool_directory
from app.virt.driver import STORAGE_POOL, Hypervisor, NetworkConfig
from app.virt.libvirt_driver import connect

POOL_DIR = "/var/lib/corral/instances"


@pytest.fixture
def names() -> list[str]:
    """Volumes the test made, removed after it."""
    return []


@pytest.fixture
def pooled(hypervisor: Hypervisor, names: list[str]) -> Iterator[Hypervisor]:
    hypervisor.ensure_pool(STORAGE_POOL, POOL_DIR)
    yield hypervisor
    for name in names:
        hypervisor.delete_volume(STORAGE_POOL, name)


def volume(names: list[str], what: str) -> str:
    name = f"contract-{what}-{uuid.uuid4().hex[:8]}.qcow2"
    names.append(name)
    return name


def disk_file(tmp_path: Path, mib: int = 4) -> Path:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(mib << 20))
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(disk)], check=True)
    return disk


def test_backings_clones_and_resizes(pooled: Hypervisor, names: list[str]) -> None:
    hypervisor = pooled
    base = volume(names, "base")
    base_path = hypervisor.create_volume(STORAGE_POOL, base, 8 << 20, None)
    overlay = volume(names, "overlay")
    hypervisor.create_volume(STORAGE_POOL, overlay, 8 << 20, (base_path, "qcow2"))
    assert base_path in hypervisor.volume_backings(STORAGE_POOL)
    copy = volume(names, "copy")
    assert hypervisor.clone_volume(STORAGE_POOL, base, copy).endswith(copy)
    if not hypervisor.capabilities.volume_contents:
        assert visible_pool_directory(hypervisor) is None  # its volumes are in memory, never files
    else:
        hypervisor.resize_volume(STORAGE_POOL, copy, 16 << 20)
        info = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(hypervisor.volume_path(STORAGE_POOL, copy))],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert '"virtual-size": 16777216' in info


def test_volumes_are_thin_so_sizes_may_add_up_past_the_pool(pooled: Hypervisor, names: list[str]) -> None:
    """A new qcow2 volume holds its header, not its size: three 60-GiB disks fit on a pool of 100 GiB
    (libvirt's test driver books a volume's stated allocation against its fixed 100-GiB pool)."""
    for _ in range(3):
        pooled.create_volume(STORAGE_POOL, volume(names, "thin"), 60 << 30, None)


@pytest.fixture
def qemu(names: list[str]) -> Iterator[Hypervisor]:
    hv = connect("qemu:///system")
    hv.ensure_pool(STORAGE_POOL, POOL_DIR)
    yield hv
    for name in names:
        hv.delete_volume(STORAGE_POOL, name)
    hv.close()


@pytest.mark.qemu
@pytest.mark.parametrize("way", ["moved", "streamed"])
def test_a_file_reaches_the_pool_byte_for_byte(
    qemu: Hypervisor, names: list[str], tmp_path: Path, way: str
) -> None:
    hypervisor = qemu
    disk = disk_file(tmp_path)
    expected = disk.read_bytes()
    name = volume(names, way)
    if way == "moved":
        assert visible_pool_directory(hypervisor) == Path(POOL_DIR)
        path = store_file(hypervisor, disk, name, POOL_DIR, len(expected))
    else:
        sent: list[int] = []
        path = hypervisor.upload_volume(STORAGE_POOL, name, disk, sent.append)
        assert sent[-1] == len(expected)
    assert Path(path).read_bytes() == expected


def test_passes_that_set_up_a_node_together_all_succeed(tmp_path: Path) -> None:
    """The first passes of a burst each make sure the node's storage pool and network exist and run, on
    connections of their own: whichever defines or starts one second finds it there and goes on (it used to
    fail its instance with NodeNotReady "pool ... already exists")."""
    connections = [connect("test:///default") for _ in range(8)]
    for round_ in range(5):
        pool = f"race-{round_}-{uuid.uuid4().hex[:6]}"
        network = replace(default_network(), name=f"race-{round_}-{uuid.uuid4().hex[:6]}")

        def set_up(hv: Hypervisor, pool: str = pool, network: NetworkConfig = network) -> None:
            hv.ensure_pool(pool, str(tmp_path / pool))
            hv.ensure_network(network)

        with ThreadPoolExecutor(len(connections)) as threads:
            for done in [threads.submit(set_up, hv) for hv in connections]:
                done.result()
