"""The node reconciler: connect to the node's libvirt, report capacity, versions and a Ready heartbeat."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.clock import Clock, utc_now
from app.controllers.base import NodeEvent, Result
from app.controllers.placement import device_slot, mdev_slots, wake_unschedulable
from app.db import Database
from app.kinds import NODES
from app.repositories.devices import DeviceRepository, permitted
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject
from app.schemas.conditions import set_condition
from app.schemas.devices import PermittedHostDevices
from app.schemas.node import NodeSpec, NodeStatus
from app.virt.driver import EventKind, HostInfo, HypervisorError, NodeDevice, NodeHypervisors

log = logging.getLogger(__name__)


def decide_virt_type(host: HostInfo, requested: str | None) -> tuple[str, str]:
    """kvm or qemu (TCG) for guests on this host, and why. domcapabilities alone misleads: a paravirtual
    KVM (PVM) or a nested host without VT-x/AMD-V advertises kvm yet cannot boot a stock guest."""
    if requested:
        return requested, f"set in spec.virtType ({requested})"
    if host.domain_types == frozenset({"test"}):
        return "qemu", "libvirt test driver: no real guests"
    if "kvm" not in host.domain_types:
        return "qemu", "libvirt offers no kvm domain type on this host: TCG software emulation"
    if host.paravirtual_kvm:
        return "qemu", "KVM here is paravirtual (kvm_pvm loaded or no /dev/kvm): TCG software emulation"
    if not host.cpu_features & {"vmx", "svm"}:
        return (
            "qemu",
            "the host CPU shows no vmx/svm flag, so KVM cannot run stock guests: TCG software emulation",
        )
    return "kvm", "kvm domain type offered and the host CPU has hardware virtualization"


def host_status(
    host: HostInfo,
    virt_type: str,
    reason: str,
    generation: int,
    previous: JsonObject,
    at: datetime,
    cpu_ratio: int = 1,
    devices: dict[str, tuple[int, int]] | None = None,
) -> JsonObject:
    """Ready with capacity; allocatable cpu is capacity times the allocation ratio (vCPU overcommit).
    Permitted host devices count per resourceName ({name: (capacity, allocated)})."""
    status: JsonObject = {"conditions": [dict(c) for c in previous.get("conditions", [])]}
    set_condition(status, "Ready", "True", "HeartbeatOK", f"libvirt {host.libvirt_version} answers", at)
    memory = f"{host.memory_bytes // (1024 * 1024)}Mi"
    extended = {name: str(capacity) for name, (capacity, _) in sorted((devices or {}).items())}
    resources = {"cpu": str(host.cpus), "memory": memory, **extended}
    return NodeStatus.model_validate(
        {
            **status,
            "observedGeneration": generation,
            "phase": "Ready",
            "capacity": resources,
            "allocatable": {**resources, "cpu": str(host.cpus * cpu_ratio)},
            "allocated": {name: str(held) for name, (_, held) in sorted((devices or {}).items())},
            "nodeInfo": {
                "hostname": host.hostname,
                "arch": host.arch,
                "cpuModel": host.cpu_model,
                "hostUuid": host.host_uuid,
                "hypervisorType": host.hypervisor_type,
                "hypervisorVersion": host.hypervisor_version,
                "libvirtVersion": host.libvirt_version,
            },
            "virtType": virt_type,
            "virtTypeReason": reason,
            "lastHeartbeatTime": at,
        }
    ).model_dump(by_alias=True, mode="json", exclude_none=True)


def device_facts(device: NodeDevice, in_use: dict[str, str] | None = None) -> JsonObject:
    """What the ledger keeps of a device (HostDevice status field names); `usedBy` names a running domain
    Corral did not make that holds it (placement never offers such a device)."""
    facts: JsonObject = {
        "parent": device.parent,
        "driver": device.driver,
        "address": device.address,
        "vendorId": device.vendor_id,
        "productId": device.product_id,
        "vendorName": device.vendor_name,
        "productName": device.product_name,
        "class": device.device_class,
        "iommuGroup": device.iommu_group,
        "iommuGroupMembers": list(device.iommu_members),
        "numaNode": device.numa_node,
        "mdevTypes": [
            {"id": t.id, "name": t.name, "availableInstances": t.available} for t in device.mdev_types
        ],
        "usedBy": (in_use or {}).get(device.address or ""),
    }
    if device.capability == "mdev":  # a created mediated device: its type and UUID
        facts.update(
            mdevTypes=None,
            mdevType=device.mdev_types[0].id if device.mdev_types else None,
            mdevUuid=device.mdev_uuid,
        )
    return {k: v for k, v in facts.items() if v not in (None, [])}


def device_resources(rows: list[Any], rules: PermittedHostDevices) -> dict[str, tuple[int, int]]:
    """Per permitted resourceName: how many devices the node has (PCI devices, and mediated-device instances
    its GPUs can still create) and how many instances hold."""
    counts: dict[str, tuple[int, int]] = {}
    for device in (device_slot(row, rules) for row in rows):
        if device.resource_name is not None and device.present:  # placement's view: permitted, taken or not
            capacity, held = counts.get(device.resource_name, (0, 0))
            counts[device.resource_name] = (capacity + 1, held + (device.holder is not None))
    for slot in mdev_slots(rows, rules):
        capacity, held = counts.get(slot.resource_name, (0, 0))
        counts[slot.resource_name] = (capacity + slot.free + slot.held, held + slot.held)
    return counts


def _same_but_heartbeat(old: JsonObject, new: JsonObject, min_age: float, now: datetime) -> bool:
    """Nothing changed but a heartbeat younger than `min_age`: skip the write (and its watch event)."""
    if {k: v for k, v in old.items() if k != "lastHeartbeatTime"} != {
        k: v for k, v in new.items() if k != "lastHeartbeatTime"
    }:
        return False
    last = old.get("lastHeartbeatTime")
    if last is None:
        return "lastHeartbeatTime" not in new
    age = now - datetime.fromisoformat(str(last).replace("Z", "+00:00"))
    return age.total_seconds() < min_age


class NodeReconciler:
    kind = NODES.kind

    def __init__(
        self,
        db: Database,
        hypervisors: NodeHypervisors,
        heartbeat_seconds: float,
        cpu_allocation_ratio: int = 10,
        inventory_seconds: float = 60.0,
        clock: Clock = utc_now,
    ) -> None:
        self.db = db
        self.clock = clock
        self.hypervisors = hypervisors
        self.heartbeat = heartbeat_seconds
        self.cpu_ratio = cpu_allocation_ratio
        self.inventory_seconds = inventory_seconds
        self._inventoried: dict[str, float] = {}  # node -> monotonic time of its last device inventory

    def reconcile(self, namespace: str, name: str) -> Result:
        with self.db.transaction() as session:
            row = ResourceRepository[Any](session, NODES).get(namespace, name)
            if row is None:
                self.hypervisors.forget(name)
                return Result()
            if row.deleted_at is not None:
                self.hypervisors.forget(name)
                ResourceRepository[Any](session, NODES).remove(row)
                return Result()
            spec = NodeSpec.model_validate(row.spec)
            generation, previous = row.generation, dict(row.status)

        try:
            hypervisor = self.hypervisors.get(name, spec.uri)
            host = hypervisor.host_info()
            # Devices change rarely and a host has hundreds: inventory every minute or so, not every beat.
            last = self._inventoried.get(name)
            due = last is None or time.monotonic() - last >= self.inventory_seconds
            inventory = (hypervisor.node_devices(), hypervisor.pci_devices_in_use()) if due else None
        except HypervisorError as exc:
            self.hypervisors.forget(name)
            self._inventoried.pop(name, None)
            self._write(namespace, name, self._unreachable(previous, generation, str(exc), self.clock()))
            return Result(requeue_after=self.heartbeat)
        virt_type, reason = decide_virt_type(host, spec.virt_type)
        devices = self._record_devices(name, inventory)
        status = host_status(
            host, virt_type, reason, generation, previous, self.clock(), self.cpu_ratio, devices
        )
        self._write(namespace, name, status)
        return Result(requeue_after=self.heartbeat)

    def _record_devices(
        self, node: str, inventory: tuple[list[NodeDevice], dict[str, str]] | None
    ) -> dict[str, tuple[int, int]]:
        """Refresh the node's rows in the device ledger (given an inventory: the devices, and which PCI
        addresses domains Corral did not make use); (capacity, allocated) per permitted resourceName."""
        with self.db.transaction() as session:
            ledger = DeviceRepository(session)
            if inventory is not None:
                devices, in_use = inventory
                reported = {d.name: (d.capability, device_facts(d, in_use)) for d in devices}
                if ledger.replace_inventory(node, reported, self.clock()):
                    wake_unschedulable(session)  # a new device may be what an instance waits for
            resources = device_resources(ledger.on_node(node), permitted(session))
        if inventory is not None:
            self._inventoried[node] = time.monotonic()
        return resources

    @staticmethod
    def _unreachable(previous: JsonObject, generation: int, message: str, at: datetime) -> JsonObject:
        status = dict(previous)
        status["conditions"] = [dict(c) for c in previous.get("conditions", [])]
        set_condition(status, "Ready", "False", "Unreachable", message[:500], at)
        status.update(phase="NotReady", observedGeneration=generation)
        return status

    def _write(self, namespace: str, name: str, status: JsonObject) -> None:
        with self.db.transaction() as session:
            repo = ResourceRepository[Any](session, NODES)
            row = repo.get(namespace, name, for_update=True)
            if row is None or _same_but_heartbeat(row.status, status, self.heartbeat / 2, self.clock()):
                return
            row.status = status
            repo.touch(row)

    def keys_for_events(self, session: Session, events: Sequence[NodeEvent]) -> list[str]:
        closed = {node for node, event in events if event.kind is EventKind.CONNECTION_CLOSED}
        return [NODES.work_key("", node) for node in sorted(closed)]
