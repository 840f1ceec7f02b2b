"""Placement rules: room, node selectors, devices and their IOMMU groups, mediated devices."""

from __future__ import annotations

import typing

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
from app.schemas.devices import DeviceNeeds

GIB = 1 << 30


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
