"""Pure parts of the instance controller: phase table, libvirt state -> phase, placement, backoff, images."""

from __future__ import annotations

import struct
import typing
from pathlib import Path

import pytest

from app.controllers.instance_decisions import crash_backoff
from app.controllers.instance_status import phase_of
from app.controllers.placement import (
    DeviceSlot,
    MdevSlot,
    NodeView,
    Picked,
    Request,
    choose,
    pick_devices,
    unschedulable_message,
    why_not,
)
from app.schemas.devices import DeviceNeeds, device_needs
from app.schemas.instance import InstancePhase, InstanceSpec
from app.schemas.phases import PHASES, Action, legal_actions, phase_table_markdown
from app.virt import images
from app.virt.driver import DomainInfo, DomainState

GIB = 1 << 30


def test_the_phase_table_covers_every_phase_with_the_contracts_actions() -> None:
    assert set(PHASES) == set(typing.get_args(InstancePhase))
    contract = {
        "Pending": {"stop", "delete"},
        "Scheduling": {"stop", "delete"},
        "Scheduled": {"start", "stop", "delete"},
        "Starting": {"stop", "delete"},
        "Running": {"pause", "stop", "restart", "softreboot", "migrate", "delete"},
        "Paused": {"unpause", "stop", "delete"},
        "Migrating": {"cancel-migration", "delete"},
        "Stopping": {"stop", "delete"},
        "Stopped": {"start", "delete"},
        "Failed": {"start", "delete"},
        "Unknown": {"delete"},
        "Terminating": set(),
    }
    assert {name: {a.value for a in legal_actions(name)} for name in PHASES} == contract
    assert legal_actions("NoSuchPhase") == (Action.DELETE,)
    table = phase_table_markdown()
    assert all(f"| {name} |" in table for name in PHASES)


def info(state: DomainState, reason: str) -> DomainInfo:
    return DomainInfo("d", "u", state, reason)


@pytest.mark.parametrize(
    ("state", "reason", "stopping", "started", "expected"),
    [
        (DomainState.RUNNING, "booted", False, True, ("Running", "Running")),
        (DomainState.RUNNING, "unpaused", True, True, ("Stopping", "StopRequested")),
        (DomainState.PAUSED, "user", False, True, ("Paused", "PausedByUser")),
        (DomainState.PAUSED, "ioerror", False, True, ("Paused", "PausedIOError")),
        (DomainState.PAUSED, "starting up", False, True, ("Starting", "StartingUp")),
        (DomainState.PAUSED, "migration", False, True, ("Migrating", "PausedMigration")),
        (DomainState.SHUTDOWN, "user", False, True, ("Stopping", "ShuttingDown")),
        (DomainState.SHUTOFF, "shutdown", False, True, ("Stopped", "GuestShutdown")),
        (DomainState.SHUTOFF, "crashed", False, True, ("Stopped", "Crashed")),
        (DomainState.SHUTOFF, "unknown", False, False, ("Scheduled", "Defined")),
        (DomainState.CRASHED, "panicked", False, True, ("Failed", "Crashed")),
    ],
)
def test_libvirt_state_to_phase(
    state: DomainState, reason: str, stopping: bool, started: bool, expected: tuple[str, str]
) -> None:
    assert phase_of(info(state, reason), stopping=stopping, ever_started=started) == expected


def node(name: str, **kw: typing.Any) -> NodeView:
    base: dict[str, typing.Any] = {
        "labels": {},
        "ready": True,
        "unschedulable": False,
        "cpu": 20,
        "memory": 16 * GIB,
    }
    return NodeView(name=name, **(base | kw))


def test_placement_prefers_room_and_explains_refusals() -> None:
    request = Request(vcpus=2, memory=2 * GIB, node_selector={"zone": "a"})
    nodes = [
        node("full", labels={"zone": "a"}, used_memory=15 * GIB),
        node("busy-cpu", labels={"zone": "a"}, used_cpu=19),
        node("other-zone", labels={"zone": "b"}),
        node("down", labels={"zone": "a"}, ready=False),
        node("cordoned", labels={"zone": "a"}, unschedulable=True),
        node("roomy", labels={"zone": "a"}, used_memory=1 * GIB),
        node("roomier", labels={"zone": "a"}),
    ]
    chosen, reasons = choose(nodes, request)
    assert chosen is not None and chosen.name == "roomier"
    assert reasons == {
        "full": "insufficient memory (requested 2048Mi, free 1024Mi)",
        "busy-cpu": "insufficient cpu (requested 2, free 1)",
        "other-zone": "nodeSelector zone does not match",
        "down": "not Ready",
        "cordoned": "unschedulable",
    }
    assert why_not(node("x"), Request(1, GIB)) is None
    gpu = DeviceNeeds(counts=(("nvidia.com/gpu", 1),))
    assert why_not(node("x"), Request(1, GIB, devices=gpu)) == "nvidia.com/gpu: 0 free of 0, 1 more needed"
    none, why = choose(nodes[:2], request)
    assert none is None and unschedulable_message(2, why).startswith("0/2 nodes can run it: busy-cpu: insuff")
    assert unschedulable_message(0, {}) == "0/0 nodes: no node is registered"


def test_crash_backoff_grows_and_caps() -> None:
    assert [crash_backoff(n) for n in range(1, 7)] == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0]
    assert crash_backoff(50) == 300.0


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


SLOTS = (
    DeviceSlot("gpu-a", "pci", "nvidia.com/gpu", None, iommu_group=1, device_class="0x030200"),
    DeviceSlot("gpu-b", "pci", "nvidia.com/gpu", None, iommu_group=2, device_class="0x030200"),
    DeviceSlot("gpu-b-audio", "pci", None, None, iommu_group=2, device_class="0x040300"),
    DeviceSlot("bridge", "pci", None, None, iommu_group=3, device_class="0x060400"),
    DeviceSlot("fpga", "pci", "xilinx.com/fpga", None, iommu_group=3, device_class="0x120000"),
    DeviceSlot("nic", "pci", None, None, iommu_group=4),
    DeviceSlot("usb", "usb_device", None, None),
    DeviceSlot("t4", "pci", None, None, iommu_group=5),
)
T4 = (MdevSlot("t4", "nvidia-222", "nvidia.com/T4-1B", free=2),)


def test_device_picks() -> None:
    def pick(
        named: tuple[str, ...] = (), slots: tuple[DeviceSlot, ...] = SLOTS, **counts: int
    ) -> Picked | str:
        wanted = tuple((k.replace("_", "/", 1).replace("_", "."), v) for k, v in counts.items())
        return pick_devices(slots, DeviceNeeds(named, wanted), T4)

    assert pick(("fpga",)) == Picked(["fpga"], [])  # the bridge in its group stays behind
    assert pick(**{"nvidia.com/gpu": 2}) == Picked(["gpu-a", "gpu-b", "gpu-b-audio"], [])  # the whole group
    assert pick(("nope",)) == "has no device nope"
    assert pick(("usb",)) == "usb is a usb_device device, not PCI"
    assert pick(("nic",)) == "nic is not permitted by permittedHostDevices"
    held = tuple(
        s if s.name != "gpu-b-audio" else DeviceSlot("gpu-b-audio", "pci", None, "ns/x", 2) for s in SLOTS
    )
    assert pick(slots=held, **{"nvidia.com/gpu": 2}) == "IOMMU group 2: gpu-b-audio is held by ns/x"
    assert pick(**{"nvidia.com/gpu": 3}) == "nvidia.com/gpu: 2 free of 2, 3 more needed"
    assert pick(**{"nvidia.com/T4-1B": 2}) == Picked([], [("t4", "nvidia-222"), ("t4", "nvidia-222")])
    assert pick(**{"nvidia.com/T4-1B": 3}) == "nvidia.com/T4-1B: 2 mediated devices free, 3 needed"


def test_device_needs_counts_entries_and_requests_once() -> None:
    spec = InstanceSpec.model_validate(
        {
            "domain": {
                "devices": {
                    "gpus": [{"name": "g", "deviceName": "nvidia.com/gpu"}],
                    "hostDevices": [{"name": "f", "deviceName": "pci_0000_01_00_0"}],
                },
                "resources": {"requests": {"memory": "1Gi", "nvidia.com/gpu": "1", "example.com/nic": "2"}},
            }
        }
    )
    assert device_needs(spec) == DeviceNeeds(
        ("pci_0000_01_00_0",), (("example.com/nic", 2), ("nvidia.com/gpu", 1))
    )
    assert not device_needs(InstanceSpec())


def test_foreign_hostdevs_skip_corral_domains() -> None:
    from app.virt.domain_xml import DomainConfig, build_domain_xml
    from app.virt.nodedev import foreign_pci_hostdevs

    config = DomainConfig(
        name="a",
        uuid="0e4a1c9e-7d3b-4f0a-9d5c-2b1f7a6e8c01",
        virt_type="test",
        vcpus=1,
        memory_mib=64,
        metadata={"uid": "x"},
        pci_devices=("0000:3b:00.0",),
    )
    ours = build_domain_xml(config)
    theirs = ours.replace("https://corral.dev", "https://example.org")  # another tool's metadata
    assert foreign_pci_hostdevs(ours) == []
    assert foreign_pci_hostdevs(theirs) == ["0000:3b:00.0"]
    assert foreign_pci_hostdevs("<domain") == []
