"""Disk files from outside (a registry, a URL, an upload) are input: look at them before a guest does.

`qemu-img info` parses the file under CPU and memory limits (a crafted image cannot hang or exhaust the
worker); a qcow2 naming a backing file or an external data file is refused, because QEMU would open that
host path on the guest's behalf.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

FORMATS = ("qcow2", "raw")
_CPU_SECONDS = 30
_MEMORY_BYTES = 1 << 30
_DISK_DIRECTORY = "disk/"


class UnsafeDisk(ValueError):
    """The file is not a disk Corral will give a guest; the message says why."""


@dataclass(frozen=True)
class DiskFacts:
    format: str  # qcow2 or raw
    virtual_size: int
    file_size: int


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (_CPU_SECONDS, _CPU_SECONDS))
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_BYTES, _MEMORY_BYTES))


def _qemu_img(*args: str, timeout: float, limited: bool) -> str:
    try:
        done = subprocess.run(
            ["qemu-img", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limits if limited else None,
        )
    except subprocess.TimeoutExpired:
        raise UnsafeDisk(f"qemu-img {args[0]} took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        raise UnsafeDisk(f"qemu-img {args[0]}: {done.stderr.strip()[:300] or f'exit {done.returncode}'}")
    return done.stdout


def inspect(path: Path, max_virtual_size: int) -> DiskFacts:
    """The disk's format and size, or UnsafeDisk saying why it is refused."""
    info = json.loads(_qemu_img("info", "--output=json", str(path), timeout=60, limited=True))
    disk_format = str(info.get("format"))
    if disk_format not in FORMATS:
        raise UnsafeDisk(f"disk format {disk_format!r} is not one of {', '.join(FORMATS)}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UnsafeDisk(f"the qcow2 names a backing file ({info.get('backing-filename')!r})")
    data_file = ((info.get("format-specific") or {}).get("data") or {}).get("data-file")
    if data_file:
        raise UnsafeDisk(f"the qcow2 names an external data file ({data_file!r})")
    virtual_size = int(info.get("virtual-size", 0))
    if virtual_size > max_virtual_size:
        raise UnsafeDisk(f"virtual size {virtual_size} bytes is over the limit of {max_virtual_size}")
    return DiskFacts(disk_format, virtual_size, path.stat().st_size)


def to_qcow2(path: Path, facts: DiskFacts, target: Path) -> DiskFacts:
    """The disk as qcow2 at `target` (a raw file is converted, sparse; a qcow2 is moved). Raw has no
    metadata to parse, so the conversion runs without the parser's CPU limit."""
    if facts.format == "qcow2":
        shutil.move(path, target)
        return DiskFacts("qcow2", facts.virtual_size, target.stat().st_size)
    arguments = ("convert", "-q", "-f", "raw", "-O", "qcow2", str(path), str(target))
    _qemu_img(*arguments, timeout=3600, limited=False)
    path.unlink()
    return DiskFacts("qcow2", facts.virtual_size, target.stat().st_size)


def disk_from_layers(layers: list[Path], target: Path) -> None:
    """Write the containerDisk's disk file (the one regular file under `disk/`, KubeVirt's format) to
    `target`; a later layer's disk replaces an earlier one's. Layers are tar files, gzip or plain."""
    found = False
    for layer in layers:
        try:
            with tarfile.open(layer, mode="r:*") as archive:
                for member in archive:
                    name = member.name.removeprefix("./").removeprefix("/")
                    if not name.startswith(_DISK_DIRECTORY) or not member.isfile():
                        continue
                    if "/" in name.removeprefix(_DISK_DIRECTORY):
                        continue
                    source = archive.extractfile(member)
                    assert source is not None
                    with source, target.open("wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                    found = True
        except tarfile.TarError as exc:
            raise UnsafeDisk(f"a layer is not a tar archive: {exc}") from None
    if not found:
        raise UnsafeDisk("no disk file under /disk/ (a containerDisk holds one qcow2 or raw file there)")
