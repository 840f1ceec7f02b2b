"""Placement: which Ready node has room for an instance. The rules are pure functions over plain views of
the nodes; `cluster_views` builds those views from the database, under the node locks that serialize
placements."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.kinds import INSTANCES, NODES
from app.models import HostDeviceRow, NodeRow
from app.repositories import workqueue
from app.repositories.devices import DeviceRepository, permitted
from app.repositories.instances import InstanceRepository
from app.repositories.resources import ResourceRepository
from app.schemas.common import parse_quantity
from app.schemas.conditions import condition_true
from app.schemas.devices import DeviceNeeds, PermittedHostDevices

PCI_BRIDGE_CLASS = "0x0604"  # bridges share IOMMU groups with endpoints but are never passed through


@dataclass(frozen=True)
class DeviceSlot:
    """A node device as placement sees it."""

    name: str
    capability: str
    resource_name: str | None  # the permittedHostDevices rule it falls under
    holder: str | None  # namespace/name of the instance holding it
    iommu_group: int | None = None
    device_class: str | None = None
    present: bool = True
    carved: bool = False  # mediated devices of instances live on it: it cannot pass through whole


@dataclass(frozen=True)
class MdevSlot:
    """Room for mediated devices of one type on one parent device."""

    parent: str
    type_id: str
    resource_name: str
    free: int
    held: int = 0
    parent_held: bool = False  # the parent itself passes through whole to an instance


@dataclass(frozen=True)
class Picked:
    pci: list[str]
    mdevs: list[tuple[str, str]]  # (parent, type id)


MIB = 1024 * 1024


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: dict[str, str]
    ready: bool
    unschedulable: bool
    cpu: int  # allocatable vCPUs (capacity x allocation ratio)
    memory: int  # allocatable bytes
    used_cpu: int = 0
    used_memory: int = 0
    devices: tuple[DeviceSlot, ...] = ()
    mdevs: tuple[MdevSlot, ...] = ()


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory: int
    node_selector: dict[str, str] = field(default_factory=dict)
    devices: DeviceNeeds = field(default_factory=DeviceNeeds)


def node_view(
    name: str,
    labels: dict[str, str],
    spec: dict[str, object],
    status: dict[str, object],
    used_cpu: int,
    used_memory: int,
    devices: tuple[DeviceSlot, ...] = (),
    mdevs: tuple[MdevSlot, ...] = (),
) -> NodeView:
    allocatable = status.get("allocatable") or {}
    assert isinstance(allocatable, dict)
    return NodeView(
        name=name,
        labels={**labels, "corral.dev/node": name},
        ready=condition_true(status, "Ready"),
        unschedulable=bool(spec.get("unschedulable")),
        cpu=int(parse_quantity(str(allocatable.get("cpu", "0")))),
        memory=int(parse_quantity(str(allocatable.get("memory", "0")))),
        used_cpu=used_cpu,
        used_memory=used_memory,
        devices=devices,
        mdevs=mdevs,
    )


def why_not(node: NodeView, request: Request) -> str | None:
    """None when the instance fits on the node, else the reason in a few words."""
    if not node.ready:
        return "not Ready"
    if node.unschedulable:
        return "unschedulable"
    mismatched = [k for k, v in request.node_selector.items() if node.labels.get(k) != v]
    if mismatched:
        return f"nodeSelector {', '.join(sorted(mismatched))} does not match"
    picked = pick_devices(node.devices, request.devices, node.mdevs)
    if isinstance(picked, str):
        return picked
    if node.cpu - node.used_cpu < request.vcpus:
        return f"insufficient cpu (requested {request.vcpus}, free {node.cpu - node.used_cpu})"
    free = node.memory - node.used_memory
    if free < request.memory:
        return f"insufficient memory (requested {request.memory // MIB}Mi, free {max(free, 0) // MIB}Mi)"
    return None


def choose(nodes: list[NodeView], request: Request) -> tuple[NodeView | None, dict[str, str]]:
    """The fitting node with the most free memory (spreads load), and why each other node was passed over."""
    reasons = {n.name: r for n in nodes if (r := why_not(n, request)) is not None}
    fitting = [n for n in nodes if n.name not in reasons]
    if not fitting:
        return None, reasons
    return max(fitting, key=lambda n: (n.memory - n.used_memory, n.cpu - n.used_cpu, n.name)), reasons


def unschedulable_message(total: int, reasons: dict[str, str]) -> str:
    if not total:
        return "0/0 nodes: no node is registered"
    detail = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items()))
    return f"0/{total} nodes can run it: {detail}"


def pick_devices(
    slots: tuple[DeviceSlot, ...], needs: DeviceNeeds, mdevs: tuple[MdevSlot, ...] = ()
) -> Picked | str:
    """The node devices to assign for `needs` (named ones, any free ones per resourceName, the rest of each
    chosen device's IOMMU group, which VFIO hands over as a whole, and mediated devices to create), or why
    the node cannot."""
    by_name = {s.name: s for s in slots}
    chosen: list[DeviceSlot] = []
    for name in needs.named:
        slot = by_name.get(name)
        if slot is None or not slot.present:
            return f"has no device {name}"
        if slot.capability != "pci":
            return f"{name} is a {slot.capability} device, not PCI"
        if slot.resource_name is None:
            return f"{name} is not permitted by permittedHostDevices"
        if slot.holder is not None or slot.carved:
            return f"{name} is held by {slot.holder or 'mediated devices of instances'}"
        chosen.append(slot)
    carve: list[tuple[str, str]] = []
    for resource, count in needs.counts:
        if any(m.resource_name == resource for m in mdevs):
            room = [
                m
                for m in mdevs
                if m.resource_name == resource
                and not m.parent_held
                and m.parent not in {c.name for c in chosen}
            ]
            free = sum(m.free for m in room)
            if free < count:
                return f"{resource}: {free} mediated devices free, {count} needed"
            needed = count
            for m in room:
                take = min(m.free, needed)
                carve += [(m.parent, m.type_id)] * take
                needed -= take
            continue
        named_here = sum(1 for s in chosen if s.resource_name == resource)
        matching = [s for s in slots if s.resource_name == resource and s.present and s.capability == "pci"]
        free_slots = [s for s in matching if s.holder is None and not s.carved and s not in chosen]
        wanted = count - named_here
        if len(free_slots) < wanted:
            return f"{resource}: {len(free_slots)} free of {len(matching)}, {wanted} more needed"
        chosen += free_slots[: max(wanted, 0)]
    groups = {s.iommu_group for s in chosen if s.iommu_group is not None}
    for slot in slots:
        if slot.iommu_group in groups and slot not in chosen and slot.capability == "pci":
            if (slot.device_class or "").startswith(PCI_BRIDGE_CLASS):
                continue
            if slot.holder is not None or slot.carved:
                return f"IOMMU group {slot.iommu_group}: {slot.name} is held by {slot.holder or 'mdevs'}"
            chosen.append(slot)
    return Picked([s.name for s in chosen], carve)


def cluster_views(
    session: Session, exclude_uid: str, *, devices: bool = True
) -> tuple[list[NodeRow], list[NodeView]]:
    """The nodes, locked, and what each has free (host devices only if `devices`: a request for none
    need not read them). Locking the node rows serializes placements (instances and migration targets),
    so two passes cannot both take the last room. A migrating instance holds room on its source and its
    target."""
    node_rows = ResourceRepository[NodeRow](session, NODES).lock_all()
    rules, ledger = (permitted(session), DeviceRepository(session)) if devices else (None, None)
    devices_by_node = {n.name: ledger.on_node(n.name) for n in node_rows} if ledger is not None else {}
    used = InstanceRepository(session).used_by_node(exclude_uid)
    views = [
        node_view(
            n.name,
            n.labels or {},
            n.spec,
            n.status or {},
            *used.get(n.name, (0, 0)),
            devices=tuple(device_slot(d, rules) for d in devices_by_node.get(n.name, [])) if rules else (),
            mdevs=tuple(mdev_slots(devices_by_node.get(n.name, []), rules)) if rules else (),
        )
        for n in node_rows
        if n.deleted_at is None
    ]
    return node_rows, views


def mdev_slots(rows: list[HostDeviceRow], rules: PermittedHostDevices) -> list[MdevSlot]:
    """Room per permitted mediated-device type and parent. libvirt's availableInstances already counts the
    mdevs created on the host; ones allocated here but not yet created (the instance never started since)
    are subtracted."""
    created = {(r.facts or {}).get("mdevUuid") for r in rows if r.capability == "mdev"}
    slots = []
    for row in rows:
        if row.capability != "pci" or not row.present:
            continue
        for mdev_type in (row.facts or {}).get("mdevTypes", []):
            resource = rules.mdev_resource(mdev_type["id"], mdev_type["name"])
            if resource is None:
                continue
            ours = [m for m in row.mdevs or [] if m["type"] == mdev_type["id"]]
            pending = sum(1 for m in ours if m["uuid"] not in created)
            free = max(0, int(mdev_type["availableInstances"]) - pending)
            slots.append(
                MdevSlot(row.name, mdev_type["id"], resource, free, len(ours), row.holder is not None)
            )
    return slots


def device_slot(row: HostDeviceRow, rules: PermittedHostDevices) -> DeviceSlot:
    facts = row.facts or {}
    resource = (
        rules.pci_resource(facts.get("vendorId"), facts.get("productId")) if row.capability == "pci" else None
    )
    holder = row.holder or (f"domain {facts['usedBy']}" if facts.get("usedBy") else None)
    return DeviceSlot(
        row.name,
        row.capability,
        resource,
        holder,
        facts.get("iommuGroup"),
        facts.get("class"),
        row.present,
        bool(row.mdevs),
    )


def wake_unschedulable(session: Session) -> None:
    """Queue every unplaced instance that waits for room: something was freed."""
    for other in InstanceRepository(session).page(None)[0]:
        if (other.status or {}).get("reason") == "Unschedulable" and other.node_name is None:
            workqueue.enqueue(session, INSTANCES.work_key(other.namespace, other.name))
