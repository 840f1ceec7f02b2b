"""The spec -> domain XML builder, against golden files and libvirt's own schema (virt-xml-validate)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from app.virt.domain_xml import DiskConfig, DomainConfig, InterfaceConfig, KernelBoot, build_domain_xml

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "tcg-kernel-boot": DomainConfig(
        name="web-1",
        uuid="0e4a1c9e-7d3b-4f0a-9d5c-2b1f7a6e8c01",
        virt_type="qemu",
        vcpus=2,
        memory_mib=1024,
        kernel_boot=KernelBoot("/images/k/vmlinuz", "/images/k/initrd.img", "console=ttyS0 quiet"),
        disks=(DiskConfig("/var/lib/corral/instances/web-1/root.qcow2", "vda"),),
        interfaces=(InterfaceConfig(network="corral-default", mac="52:54:00:12:34:56"),),
        console_log="/var/log/corral/web-1.log",
        graphics=True,
        metadata={"namespace": "default", "name": "web-1", "uid": "0e4a1c9e-7d3b-4f0a-9d5c-2b1f7a6e8c01"},
    ),
    "kvm-disk-boot": DomainConfig(
        name="db-0",
        uuid="5a0c2f3e-1111-4222-8333-944455556666",
        virt_type="kvm",
        vcpus=4,
        memory_mib=4096,
        machine="q35",
        disks=(
            DiskConfig("/v/db-0.qcow2", "vda", serial="root"),
            DiskConfig("/v/seed.raw", "vdb", format="raw", readonly=True),
            DiskConfig("/v/seed.iso", "sda", format="raw", bus="scsi", readonly=True, device="cdrom"),
        ),
        cpu_topology=(1, 4, 1),
        interfaces=(InterfaceConfig(bridge="br0"),),
        guest_agent=True,
    ),
    "kvm-passthrough": DomainConfig(
        name="train-0",
        uuid="7b1d3e5f-2222-4333-8444-a55566667777",
        virt_type="kvm",
        vcpus=8,
        memory_mib=16384,
        machine="q35",
        disks=(DiskConfig("/v/train-0.qcow2", "vda"),),
        pci_devices=("0000:3b:00.0", "0000:01:00.0"),
        mdev_devices=("4b20d080-1b54-4048-85b3-a6a62d165c01",),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    xml = build_domain_xml(CASES[case])
    path = GOLDEN / f"{case}.xml"
    if os.environ.get("CORRAL_UPDATE_GOLDEN"):
        path.write_text(xml + "\n")
    assert xml + "\n" == path.read_text(), f"{path} differs (CORRAL_UPDATE_GOLDEN=1 to rewrite after review)"


@pytest.mark.parametrize("case", sorted(CASES))
def test_valid_against_libvirt_schema(case: str, tmp_path: Path) -> None:
    validator = shutil.which("virt-xml-validate")
    assert validator, "virt-xml-validate (libvirt-clients) is required"
    path = tmp_path / "domain.xml"
    path.write_text(build_domain_xml(CASES[case]))
    result = subprocess.run([validator, str(path), "domain"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_are_escaped_not_interpreted() -> None:
    config = CASES["tcg-kernel-boot"]
    hostile = DomainConfig(
        name="x",
        uuid=config.uuid,
        virt_type="qemu",
        vcpus=1,
        memory_mib=64,
        kernel_boot=KernelBoot("/k", None, "a='1' </cmdline><devices/>"),
    )
    xml = build_domain_xml(hostile)
    assert "&lt;/cmdline&gt;&lt;devices/&gt;" in xml and xml.count("<devices>") == 1
