"""Host devices: the admin's permittedHostDevices rules, the HostDevice view, what an instance asks for."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field, StrictBool, model_validator

from app.schemas.common import ApiModel, ListMeta, parse_quantity
from app.schemas.instance import InstanceSpec

RESOURCE_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
ResourceName = Annotated[
    str, Field(min_length=3, max_length=253, pattern=RESOURCE_NAME, examples=["nvidia.com/gpu"])
]
PERMITTED_SETTING = "permittedHostDevices"


class PciHostDevice(ApiModel):
    pci_vendor_selector: str = Field(
        pattern=r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$", description="vendor:product ids, e.g. 10de:1eb8."
    )
    resource_name: ResourceName
    external_resource_provider: StrictBool = Field(
        default=False, description="Accepted for KubeVirt compatibility; Corral always allocates devices."
    )


class MediatedHostDevice(ApiModel):
    mdev_name_selector: str = Field(
        min_length=1, max_length=128, description="A mediated device type's name (e.g. GRID T4-1Q) or id."
    )
    resource_name: ResourceName


class PermittedHostDevices(ApiModel):
    """Which node devices instances may take, under which resource names (KubeVirt's shape)."""

    pci_host_devices: list[PciHostDevice] = Field(default_factory=list, max_length=128)
    mediated_devices: list[MediatedHostDevice] = Field(default_factory=list, max_length=128)

    @model_validator(mode="after")
    def _names_apart(self) -> PermittedHostDevices:
        shared = {r.resource_name for r in self.pci_host_devices} & {
            r.resource_name for r in self.mediated_devices
        }
        if shared:
            raise ValueError(
                f"a resourceName is either PCI or mediated, not both: {', '.join(sorted(shared))}"
            )
        return self

    def pci_resource(self, vendor_id: str | None, product_id: str | None) -> str | None:
        """The resourceName a PCI device with these ids is permitted under, if any."""
        if vendor_id is None or product_id is None:
            return None
        wanted = f"{vendor_id}:{product_id}".lower()
        rules = self.pci_host_devices
        return next((r.resource_name for r in rules if r.pci_vendor_selector.lower() == wanted), None)

    def mdev_resource(self, type_id: str, type_name: str) -> str | None:
        return next(
            (r.resource_name for r in self.mediated_devices if r.mdev_name_selector in (type_id, type_name)),
            None,
        )

    def resource_names(self) -> set[str]:
        return {r.resource_name for r in self.pci_host_devices} | {
            r.resource_name for r in self.mediated_devices
        }


class MdevTypeView(ApiModel):
    id: str
    name: str
    available_instances: int
    resource_name: str | None = None


class HostDeviceSpec(ApiModel):
    node_name: str
    device_name: str = Field(description="libvirt's node-device name, e.g. pci_0000_3b_00_0.")


class HostDeviceStatus(ApiModel):
    capability: str = Field(description="libvirt's capability type: pci, usb_device, net, ...")
    present: StrictBool = Field(description="False once the node stopped reporting it (kept while held).")
    address: str | None = None
    vendor_id: str | None = None
    product_id: str | None = None
    vendor_name: str | None = None
    product_name: str | None = None
    device_class: str | None = Field(default=None, alias="class")
    iommu_group: int | None = None
    iommu_group_members: list[str] = Field(default_factory=list)
    driver: str | None = None
    numa_node: int | None = None
    parent: str | None = None
    mdev_types: list[MdevTypeView] = Field(default_factory=list)
    resource_name: str | None = Field(
        default=None, description="Set when a permittedHostDevices rule matches."
    )
    holder: str | None = Field(default=None, description="namespace/name of the instance holding it.")
    used_by: str | None = Field(
        default=None, description="A running domain Corral did not make that passes it through."
    )
    holder_uid: str | None = None
    mediated_devices: list[dict[str, Any]] = Field(
        default_factory=list, description="mdevs held by instances."
    )
    observed_at: datetime | None = None


class HostDeviceMeta(ApiModel):
    name: str = Field(description="<node>.<libvirt name>")
    uid: str = Field(description="Stable for the device on its node.")
    labels: dict[str, str] = Field(default_factory=dict)
    resource_version: str = Field(description="Opaque: changes whenever the device's spec or status does.")
    creation_timestamp: datetime = Field(description="When the node first reported the device.")


class HostDevice(ApiModel):
    api_version: str = "corral.dev/v1"
    kind: str = "HostDevice"
    metadata: HostDeviceMeta
    spec: HostDeviceSpec
    status: HostDeviceStatus


class HostDeviceList(ApiModel):
    api_version: str = "corral.dev/v1"
    kind: str = "HostDeviceList"
    metadata: ListMeta
    items: list[HostDevice]


@dataclass(frozen=True)
class DeviceNeeds:
    """What an instance asks for: devices by libvirt name, and counts per resourceName."""

    named: tuple[str, ...] = ()
    counts: tuple[tuple[str, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.named or self.counts)

    def describe(self) -> str:
        return ", ".join([*self.named, *(f"{n} x{c}" for n, c in self.counts)])


def is_resource_name(device_name: str) -> bool:
    """resourceNames carry a vendor domain (nvidia.com/gpu); libvirt device names never have a slash."""
    return bool(re.match(RESOURCE_NAME, device_name))


def device_needs(spec: InstanceSpec) -> DeviceNeeds:
    """gpus[]/hostDevices[] entries, with resources.requests of extended resources as a lower bound per
    resourceName (KubeVirt writes both for one GPU: the request counts the entries, not beside them)."""
    entries = [d.device_name for d in (*spec.domain.devices.gpus, *spec.domain.devices.host_devices)]
    counts = Counter(e for e in entries if is_resource_name(e))
    for key, value in spec.domain.resources.requests.items():
        if key not in ("cpu", "memory") and is_resource_name(key):
            counts[key] = max(counts[key], int(parse_quantity(str(value))))
    named = tuple(dict.fromkeys(e for e in entries if not is_resource_name(e)))
    return DeviceNeeds(named, tuple(sorted((k, v) for k, v in counts.items() if v > 0)))
