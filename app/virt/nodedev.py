"""libvirt node-device XML into NodeDevice (pure; what a host reports is bounded and checked, not trusted)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from app.virt.domain_xml import METADATA_NS
from app.virt.driver import MdevType, NodeDevice

_HEX_ID = re.compile(r"^0x([0-9a-fA-F]{4})$")
_TEXT_LIMIT = 256


def _text(element: ET.Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    value = " ".join(element.text.split())
    return value[:_TEXT_LIMIT] if value else None


def _int(value: str | None, base: int = 10) -> int | None:
    if value is None:
        return None
    try:
        number = int(value.strip(), base)
    except ValueError:
        return None
    return number if number >= 0 else None


def _hex_id(element: ET.Element | None) -> str | None:
    found = _HEX_ID.match(element.get("id", "")) if element is not None else None
    return found.group(1).lower() if found else None


def pci_address(domain: int, bus: int, slot: int, function: int) -> str:
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def _address_of(element: ET.Element) -> str | None:
    parts = [_int(element.get(k, ""), 16) for k in ("domain", "bus", "slot", "function")]
    if any(p is None for p in parts):
        return None
    domain, bus, slot, function = (int(p or 0) for p in parts)
    return pci_address(domain, bus, slot, function)


def parse_node_device(xml: str) -> NodeDevice | None:
    """None for XML that does not describe a named device."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    name = _text(root.find("name"))
    capability = root.find("capability")
    if name is None or capability is None:
        return None
    kind = capability.get("type", "unknown")[:32]
    common = {
        "name": name,
        "capability": kind,
        "parent": _text(root.find("parent")),
        "driver": _text(root.find("driver/name")),
    }
    if kind == "mdev":
        type_element = capability.find("type")
        type_id = (type_element.get("id", "") if type_element is not None else "")[:_TEXT_LIMIT]
        uuid = _text(capability.find("uuid"))
        mdev_type = (MdevType(id=type_id, name=type_id, available=0),) if type_id else ()
        return NodeDevice(**common, mdev_types=mdev_type, mdev_uuid=uuid)  # type: ignore[arg-type]
    if kind != "pci":
        return NodeDevice(**common)  # type: ignore[arg-type]
    fields = [_int(_text(capability.find(k))) for k in ("domain", "bus", "slot", "function")]
    address = None if any(f is None for f in fields) else pci_address(*(int(f or 0) for f in fields))
    group = capability.find("iommuGroup")
    members = tuple(
        a for e in (group.iterfind("address") if group is not None else ()) if (a := _address_of(e))
    )
    numa = capability.find("numa")
    mdev_types = tuple(
        MdevType(
            id=t.get("id", "")[:_TEXT_LIMIT],
            name=_text(t.find("name")) or t.get("id", "")[:_TEXT_LIMIT],
            available=_int(_text(t.find("availableInstances"))) or 0,
        )
        for t in capability.iterfind("capability[@type='mdev_types']/type")
        if t.get("id")
    )
    device_class = _text(capability.find("class"))
    return NodeDevice(
        **common,  # type: ignore[arg-type]
        address=address,
        vendor_id=_hex_id(capability.find("vendor")),
        product_id=_hex_id(capability.find("product")),
        vendor_name=_text(capability.find("vendor")),
        product_name=_text(capability.find("product")),
        device_class=device_class
        if device_class and re.fullmatch(r"0x[0-9a-fA-F]{6}", device_class)
        else None,
        iommu_group=_int(group.get("number")) if group is not None else None,
        iommu_members=members,
        numa_node=_int(numa.get("node")) if numa is not None else None,
        mdev_types=mdev_types,
    )


def foreign_pci_hostdevs(domain_xml: str) -> list[str]:
    """PCI addresses a domain passes through, unless Corral made the domain (its ledger knows those)."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return []
    if root.find(f"metadata/{{{METADATA_NS}}}instance") is not None:
        return []
    return [a for e in root.iterfind("devices/hostdev[@type='pci']/source/address") if (a := _address_of(e))]
