"""The same contract runs over libvirt's test driver and a real libvirtd with QEMU (TCG guests)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.controllers.naming import default_network
from app.virt.domain_xml import DomainConfig, InterfaceConfig, KernelBoot
from app.virt.driver import Hypervisor, HypervisorError
from app.virt.libvirt_driver import connect

IMAGE_DIR = Path(os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images"))
TEST_GUEST = IMAGE_DIR / "corral" / "test-guest" / "latest"
URIS = ["test:///default", "qemu:///system"]


def test_guest() -> Path:
    if not (TEST_GUEST / "vmlinuz").is_file() or not (TEST_GUEST / "initrd.img").is_file():
        pytest.fail(
            f"the test guest image is missing at {TEST_GUEST}: run scripts/build-test-guest.sh", pytrace=False
        )
    return TEST_GUEST


@pytest.fixture(params=URIS, ids=["test-driver", "qemu"])
def hypervisor(request: pytest.FixtureRequest) -> Iterator[Hypervisor]:
    try:
        hv = connect(request.param)
    except HypervisorError as exc:
        pytest.fail(
            f"libvirt at {request.param} is required: {exc}. Run scripts/setup-host.sh.", pytrace=False
        )
    hv.ensure_network(default_network())  # the contract's guests have a NIC on it
    yield hv
    hv.close()


def guest_config(hv: Hypervisor, tmp_path: Path) -> DomainConfig:
    name = f"corral-contract-{uuid.uuid4().hex[:8]}"
    if not hv.capabilities.runs_guests:
        return DomainConfig(
            name=name,
            uuid=str(uuid.uuid4()),
            virt_type="test",
            vcpus=1,
            memory_mib=128,
            metadata={"namespace": "contract", "name": name},
        )
    image = test_guest()
    return DomainConfig(
        name=name,
        uuid=str(uuid.uuid4()),
        virt_type="qemu",
        vcpus=1,
        memory_mib=192,
        kernel_boot=KernelBoot(
            str(image / "vmlinuz"),
            str(image / "initrd.img"),
            f"console=ttyS0 quiet panic=-1 corral.hostname={name}",
        ),
        interfaces=(InterfaceConfig(network=default_network().name),),
        console_log=str(tmp_path / "console.log"),
        metadata={"namespace": "contract", "name": name},
    )


@pytest.fixture
def cleanup(hypervisor: Hypervisor) -> Iterator[list[str]]:
    """Names of domains to destroy and undefine whatever the test did."""
    names: list[str] = []
    yield names
    for name in names:
        discard(hypervisor, name)


def discard(hv: Hypervisor, name: str) -> None:
    for step in (hv.destroy, hv.undefine):
        with contextlib.suppress(HypervisorError):
            step(name)
