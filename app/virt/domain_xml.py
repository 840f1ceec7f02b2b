"""Pure spec -> libvirt domain XML, built with ElementTree (never string formatting)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from app.virt.driver import NetworkConfig

METADATA_NS = "https://corral.dev/xmlns/libvirt/instance/v1"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


@dataclass(frozen=True)
class DiskConfig:
    path: str
    target: str  # vda, vdb, ...
    format: str = "qcow2"
    bus: str = "virtio"
    readonly: bool = False
    serial: str | None = None
    device: str = "disk"  # or cdrom (a cloud-init seed)


@dataclass(frozen=True)
class InterfaceConfig:
    """A NIC on a libvirt network (`network`) or on an existing host bridge (`bridge`)."""

    network: str | None = None
    bridge: str | None = None
    model: str = "virtio"
    mac: str | None = None


@dataclass(frozen=True)
class KernelBoot:
    kernel: str
    initrd: str | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class DomainConfig:
    name: str
    uuid: str
    virt_type: str  # kvm, qemu (TCG) or test
    vcpus: int
    memory_mib: int
    machine: str = "pc"
    kernel_boot: KernelBoot | None = None
    disks: tuple[DiskConfig, ...] = ()
    interfaces: tuple[InterfaceConfig, ...] = ()
    guest_agent: bool = True
    graphics: bool = False  # a VNC display, reached through libvirt only
    console_log: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # owner facts: namespace, name, uid
    cpu_topology: tuple[int, int, int] | None = None  # sockets, cores, threads
    pci_devices: tuple[str, ...] = ()  # host PCI addresses (0000:3b:00.0) passed through with VFIO
    mdev_devices: tuple[str, ...] = ()  # UUIDs of mediated devices (vGPU slices) passed through


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


def build_domain_xml(config: DomainConfig) -> str:
    domain = ET.Element("domain", {"type": config.virt_type})
    _sub(domain, "name", config.name)
    _sub(domain, "uuid", config.uuid)
    if config.metadata:
        metadata = _sub(domain, "metadata")
        ET.register_namespace("corral", METADATA_NS)
        ET.SubElement(metadata, f"{{{METADATA_NS}}}instance", dict(sorted(config.metadata.items())))
    _sub(domain, "memory", str(config.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(config.vcpus), placement="static")

    os_el = _sub(domain, "os")
    if config.virt_type == "test":
        _sub(os_el, "type", "hvm")
    else:
        _sub(os_el, "type", "hvm", arch="x86_64", machine=config.machine)
    if config.kernel_boot is not None:
        _sub(os_el, "kernel", config.kernel_boot.kernel)
        if config.kernel_boot.initrd:
            _sub(os_el, "initrd", config.kernel_boot.initrd)
        _sub(os_el, "cmdline", config.kernel_boot.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")

    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if config.virt_type == "kvm":
        # Same-host-family migration needs a migratable CPU; host-passthrough gives guests the real one.
        _sub(domain, "cpu", mode="host-passthrough", check="none", migratable="on")
    if config.cpu_topology is not None:
        cpu = domain.find("cpu")
        if cpu is None:
            cpu = _sub(domain, "cpu")
        sockets, cores, threads = config.cpu_topology
        _sub(cpu, "topology", sockets=str(sockets), dies="1", cores=str(cores), threads=str(threads))
    _sub(domain, "clock", offset="utc")
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")

    devices = _sub(domain, "devices")
    for disk in config.disks:
        disk_el = _sub(devices, "disk", type="file", device=disk.device)
        _sub(disk_el, "driver", name="qemu", type=disk.format, cache="none")
        _sub(disk_el, "source", file=disk.path)
        _sub(disk_el, "target", dev=disk.target, bus=disk.bus)
        if disk.readonly:
            _sub(disk_el, "readonly")
        if disk.serial:
            _sub(disk_el, "serial", disk.serial)
    if any(disk.bus == "scsi" for disk in config.disks):
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    for nic in config.interfaces:
        if nic.bridge is not None:
            nic_el = _sub(devices, "interface", type="bridge")
            _sub(nic_el, "source", bridge=nic.bridge)
        elif nic.network is not None:
            nic_el = _sub(devices, "interface", type="network")
            _sub(nic_el, "source", network=nic.network)
        else:
            raise ValueError("an interface is on a network or a bridge")
        if nic.mac:
            _sub(nic_el, "mac", address=nic.mac)
        _sub(nic_el, "model", type=nic.model)
    # A pty, so libvirt can stream the console to a client; its output is also logged to a file.
    serial = _sub(devices, "serial", type="pty")
    if config.console_log:
        _sub(serial, "log", file=config.console_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    if config.graphics:
        # No listening socket: clients reach it only through libvirt (virDomainOpenGraphicsFD).
        graphics = _sub(devices, "graphics", type="vnc")
        _sub(graphics, "listen", type="none")
    if config.guest_agent:
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)
    for address in config.pci_devices:
        # managed: libvirt binds the device to vfio-pci at start and gives it back to its driver at stop.
        hostdev = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        pci_domain, bus, slot_function = address.split(":")
        slot, function = slot_function.split(".")
        _sub(
            _sub(hostdev, "source"),
            "address",
            domain=f"0x{pci_domain}",
            bus=f"0x{bus}",
            slot=f"0x{slot}",
            function=f"0x{function}",
        )
    for mdev_uuid in config.mdev_devices:
        hostdev = _sub(devices, "hostdev", mode="subsystem", type="mdev", model="vfio-pci")
        _sub(_sub(hostdev, "source"), "address", uuid=mdev_uuid)
    if config.virt_type != "test":
        _sub(devices, "memballoon", model="virtio")
        video = _sub(devices, "video")
        _sub(video, "model", type="none")
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode")


def network_xml(network: NetworkConfig) -> str:
    """A routed-out NAT network: a bridge with the node's address, DHCP over the range, masquerading."""
    root = ET.Element("network")
    _sub(root, "name", network.name)
    _sub(root, "forward", mode="nat")
    _sub(root, "bridge", name=network.bridge, stp="on", delay="0")
    ip = _sub(root, "ip", address=network.address, prefix=str(network.prefix))
    dhcp = _sub(ip, "dhcp")
    _sub(dhcp, "range", start=network.dhcp_start, end=network.dhcp_end)
    return ET.tostring(root, encoding="unicode")
