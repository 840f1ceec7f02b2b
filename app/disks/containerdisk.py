"""A containerDisk's disk, fetched from a registry: layers downloaded and verified, the disk file taken from
`/disk/`, checked as untrusted input and converted to qcow2."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from app.disks import untrusted
from app.disks.registry import Manifest, RegistryClient


def _shifted(progress: Callable[[int], None], offset: int, done: int) -> None:
    progress(offset + done)


def pull_disk(
    client: RegistryClient, manifest: Manifest, scratch: Path, progress: Callable[[int], None], max_bytes: int
) -> tuple[Path, untrusted.DiskFacts]:
    """(qcow2 file in `scratch`, its facts); `progress(bytes fetched)` over all layers."""
    layers, before = [], 0
    for index, blob in enumerate(manifest.layers):
        layer = scratch / f"layer-{index}"
        with layer.open("wb") as sink:
            client.fetch_blob(manifest.reference, blob, sink, partial(_shifted, progress, before))
        before += blob.size
        layers.append(layer)
    extracted = scratch / "disk"
    untrusted.disk_from_layers(layers, extracted)
    for layer in layers:
        layer.unlink()
    facts = untrusted.inspect(extracted, max_bytes)
    converted = scratch / "disk.qcow2"
    return converted, untrusted.to_qcow2(extracted, facts, converted)
