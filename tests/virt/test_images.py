"""The image catalog."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from app.virt import images

GIB = 1 << 30


def qcow2(path: Path, size: int) -> None:
    path.write_bytes(b"QFI\xfb" + b"\0" * 20 + struct.pack(">Q", size) + b"\0" * 64)


def test_image_catalog(tmp_path: Path) -> None:
    (tmp_path / "ubuntu" / "22.04").mkdir(parents=True)
    qcow2(tmp_path / "ubuntu" / "22.04" / "disk.qcow2", 10 * GIB)
    kernel = tmp_path / "corral" / "tiny" / "latest"
    kernel.mkdir(parents=True)
    (kernel / "vmlinuz").write_bytes(b"k")
    (kernel / "initrd.img").write_bytes(b"i")
    (kernel / "cmdline").write_text("console=ttyS0 corral.hostname={hostname}\n")
    (tmp_path / "default").symlink_to("corral/tiny/latest")
    (tmp_path / "escape").symlink_to("/etc")

    ubuntu = images.resolve(tmp_path, "ubuntu:22.04")
    assert (ubuntu.disk_format, ubuntu.disk_size, ubuntu.kernel) == ("qcow2", 10 * GIB, None)
    tiny = images.resolve(tmp_path, None)
    assert tiny.kernel == kernel.resolve() / "vmlinuz" and tiny.disk is None
    assert tiny.cmdline == "console=ttyS0 corral.hostname={hostname}"
    assert images.resolve(tmp_path, "corral/tiny").path == kernel.resolve()
    for missing in ("ubuntu:24.04", "nosuch", "../etc", "escape", "UPPER"):
        with pytest.raises(images.ImageNotFound):
            images.resolve(tmp_path, missing)
