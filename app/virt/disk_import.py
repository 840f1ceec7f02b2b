"""Turning a disk file that came from outside (an import, an upload) into a DataVolume's volume on its node.

Shared by the DataVolume reconciler (http and registry imports) and the API's upload endpoint: the file is
checked as untrusted input, converted to qcow2, grown to the requested size (never shrunk: a request smaller
than the image is refused), and streamed into the node's storage pool.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from app.disks import untrusted
from app.virt.driver import STORAGE_POOL, Hypervisor


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
    hv.ensure_pool(STORAGE_POOL, volume_dir)
    if hv.capabilities.volume_contents:
        hv.upload_volume(STORAGE_POOL, volume, converted, lambda _sent: None)
    else:  # libvirt's test driver keeps no bytes: a volume of the size will do
        hv.delete_volume(STORAGE_POOL, volume)
        hv.create_volume(STORAGE_POOL, volume, capacity, None)
    converted.unlink(missing_ok=True)
    return capacity
