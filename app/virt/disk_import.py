"""Turning a disk file that came from outside (an import, an upload) into a DataVolume's volume on its node.

Shared by the DataVolume reconciler (http and registry imports) and the API's upload endpoint: the file is
checked as untrusted input, converted to qcow2, grown to the requested size (never shrunk: a request smaller
than the image is refused), and streamed into the node's storage pool.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from app.disks import untrusted
from app.virt.driver import STORAGE_POOL, Hypervisor, HypervisorError


def data_volume_file(uid: str) -> str:
    """A DataVolume's disk in the node's storage pool."""
    return f"dv-{uid}.qcow2"


def finish_import(
    hv: Hypervisor,
    source: Path,
    volume: str,
    *,
    requested: int | None,
    max_bytes: int,
    volume_dir: str,
) -> int:
    """Check, convert and grow `source`, then store it as `volume` on the node; its virtual size.
    Raises untrusted.UnsafeDisk (with the cause) or HypervisorError."""
    facts = untrusted.inspect(source, max_bytes)
    if requested is not None and requested < facts.virtual_size:
        raise untrusted.UnsafeDisk(
            f"spec.storage.resources.requests.storage ({requested} bytes) is smaller than the image's "
            f"virtual size ({facts.virtual_size} bytes)"
        )
    converted = source.with_name(source.name + ".qcow2")
    facts = untrusted.to_qcow2(source, facts, converted)
    capacity = max(requested or 0, facts.virtual_size)
    if capacity > facts.virtual_size:
        grown = subprocess.run(
            ["qemu-img", "resize", "-q", "-f", "qcow2", str(converted), str(capacity)],
            check=False,
            capture_output=True,
            text=True,
        )
        if grown.returncode != 0:
            raise untrusted.UnsafeDisk(f"qemu-img resize: {grown.stderr.strip()[:300]}")
    store_file(hv, converted, volume, volume_dir, capacity)
    converted.unlink(missing_ok=True)
    return capacity


def store_file(hv: Hypervisor, source: Path, volume: str, volume_dir: str, capacity: int) -> str:
    """`source`'s bytes as `volume` in the node's pool (replacing one of that name); its path. Moved into
    place when this process sees the pool's directory (the same host, or shared storage), else streamed
    through libvirt, so a remote node needs no shared filesystem."""
    hv.ensure_pool(STORAGE_POOL, volume_dir)
    if not hv.capabilities.volume_contents:  # libvirt's test driver keeps no bytes: a volume will do
        hv.delete_volume(STORAGE_POOL, volume)
        return hv.create_volume(STORAGE_POOL, volume, capacity, None)
    directory = visible_pool_directory(hv)
    if directory is None:
        return hv.upload_volume(STORAGE_POOL, volume, source, lambda _sent: None)
    hv.delete_volume(STORAGE_POOL, volume)
    part = directory / f".{volume}.part"  # a name libvirt ignores until the rename
    shutil.move(source, part)
    part.rename(directory / volume)
    hv.refresh_pool(STORAGE_POOL)
    path = hv.volume_path(STORAGE_POOL, volume)
    if path is None:
        raise HypervisorError(f"volume {volume} was moved into {directory} but libvirt does not list it")
    return path


def visible_pool_directory(hv: Hypervisor) -> Path | None:
    """The pool's directory if a volume libvirt makes there shows up in this process's filesystem."""
    probe = f".probe-{uuid.uuid4().hex}.qcow2"
    path = Path(hv.create_volume(STORAGE_POOL, probe, 1 << 16, None))
    try:
        return path.parent if path.is_file() else None
    finally:
        hv.delete_volume(STORAGE_POOL, probe)
