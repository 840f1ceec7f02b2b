"""The image catalog: `containerDisk.image` names resolved to local base images.

Layout under CORRAL_IMAGE_DIR (the same path on every node):

    <repo>/<tag>/disk.qcow2                 a bootable disk (or disk.img, raw), and/or
    <repo>/<tag>/vmlinuz, initrd.img        a kernel bundle booted directly, with `cmdline` holding its
                                            kernel command line; a disk beside it is attached as vda
    default -> <repo>/<tag>                 what an instance that names no boot volume boots

`ubuntu:22.04` is `ubuntu/22.04`; a name without a tag means `latest`. Each instance gets its own qcow2
overlay on the image's disk, so the base image is never written.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

DEFAULT_IMAGE = "default"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")
_QCOW2_MAGIC = b"QFI\xfb"


class ImageNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Image:
    name: str
    path: Path
    disk: Path | None
    disk_format: str | None
    disk_size: int | None
    kernel: Path | None
    initrd: Path | None
    cmdline: str


# What an instance that boots from its own disk (a DataVolume first in its volumes) takes from the catalog.
NO_IMAGE = Image("", Path("/"), None, None, None, None, None, "")


def disk_virtual_size(path: Path) -> tuple[str, int]:
    """(format, virtual size in bytes) from the qcow2 header, or the file size of a raw image."""
    with path.open("rb") as handle:
        header = handle.read(32)
    if header[:4] == _QCOW2_MAGIC:
        return "qcow2", int(struct.unpack(">Q", header[24:32])[0])
    return "raw", path.stat().st_size


def resolve(catalog: Path, name: str | None) -> Image:
    """The image called `name` (None: the catalog's default). Raises ImageNotFound."""
    name = name or DEFAULT_IMAGE
    # Names cannot climb out of the catalog (no "..", no leading "/"); symlinks inside it are the admin's.
    if not _NAME.match(name) or ".." in name:
        raise ImageNotFound(f"{name!r} is not an image name")
    repo, _, tag = name.partition(":")
    directory = catalog / repo if name == DEFAULT_IMAGE else catalog / repo / (tag or "latest")
    try:
        directory = directory.resolve(strict=True)
    except (FileNotFoundError, RuntimeError):
        raise ImageNotFound(f"image {name!r} is not in the catalog ({catalog})") from None
    disk = next((directory / f for f in ("disk.qcow2", "disk.img") if (directory / f).is_file()), None)
    kernel = directory / "vmlinuz" if (directory / "vmlinuz").is_file() else None
    initrd = directory / "initrd.img" if (directory / "initrd.img").is_file() else None
    if disk is None and kernel is None:
        raise ImageNotFound(f"image {name!r} has neither disk.qcow2/disk.img nor vmlinuz ({directory})")
    disk_format, disk_size = disk_virtual_size(disk) if disk else (None, None)
    cmdline_file = directory / "cmdline"
    cmdline = cmdline_file.read_text().strip() if cmdline_file.is_file() else "console=ttyS0"
    return Image(name, directory, disk, disk_format, disk_size, kernel, initrd, cmdline)
