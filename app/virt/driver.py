"""The hypervisor port: what controllers may ask of a libvirt host, in Corral's own types.

libvirt objects, error codes and UUID handling stay in libvirt_driver.py; everything here is plain data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

STORAGE_POOL = "corral-instances"  # the libvirt storage pool Corral keeps on every node for its volumes


class HypervisorError(Exception):
    """A libvirt call failed; `code` is libvirt's error code where one was given."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class HypervisorUnavailable(HypervisorError):
    """The node's libvirtd cannot be reached (connection refused, closed, or timed out)."""


class DomainNotFound(HypervisorError):
    pass


class DomainExists(HypervisorError):
    pass


class InvalidDomainConfig(HypervisorError):
    """libvirt rejected the domain XML or cannot run it on this host."""


class InvalidOperation(HypervisorError):
    """The domain is not in a state that allows the operation (e.g. suspend of a shut-off domain)."""


class AgentUnavailable(HypervisorError):
    """The guest agent is not connected or did not answer in time."""


class GuestCommandFailed(HypervisorError):
    """The guest agent ran the command and it failed inside the guest (no such file, no such program, ...)."""


class GuestFileTooLarge(HypervisorError):
    """A file read through the guest agent is larger than asked for."""


class DomainState(StrEnum):
    NOSTATE = "NoState"
    RUNNING = "Running"
    BLOCKED = "Blocked"
    PAUSED = "Paused"
    SHUTDOWN = "ShuttingDown"
    SHUTOFF = "Shutoff"
    CRASHED = "Crashed"
    PMSUSPENDED = "PMSuspended"


class ShutdownMode(StrEnum):
    ACPI = "acpi"
    AGENT = "agent"


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: DomainState
    reason: str  # libvirt's state reason, lower-case words (e.g. "booted", "user", "crashed")


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    arch: str
    cpu_model: str
    cpus: int
    memory_bytes: int
    host_uuid: str
    hypervisor_type: str
    hypervisor_version: str
    libvirt_version: str
    domain_types: frozenset[str]  # what libvirt offers for the host arch: {"kvm", "qemu"} or {"test"}
    cpu_features: frozenset[str]
    paravirtual_kvm: bool | None = None  # None: unknown (a remote host)


@dataclass(frozen=True)
class MdevType:
    id: str  # e.g. nvidia-222
    name: str  # e.g. GRID T4-1B
    available: int  # instances that can still be created


@dataclass(frozen=True)
class NodeDevice:
    """A device from libvirt's node-device API; the PCI fields are set for capability "pci" only."""

    name: str  # libvirt's, e.g. pci_0000_3b_00_0
    capability: str  # pci, usb_device, net, system, ...
    parent: str | None = None
    driver: str | None = None
    address: str | None = None  # PCI address, e.g. 0000:3b:00.0
    vendor_id: str | None = None  # four hex digits, e.g. 10de
    product_id: str | None = None
    vendor_name: str | None = None
    product_name: str | None = None
    device_class: str | None = None  # e.g. 0x030200
    iommu_group: int | None = None
    iommu_members: tuple[str, ...] = ()  # PCI addresses in the same IOMMU group, this one included
    numa_node: int | None = None
    mdev_types: tuple[MdevType, ...] = ()
    mdev_uuid: str | None = None  # capability "mdev": the mediated device's UUID (its type is mdev_types[0])


@dataclass(frozen=True)
class MigrationOptions:
    bandwidth_mib: int = 0  # 0: unlimited
    auto_converge: bool = False
    post_copy: bool = False  # allow a later switch to post-copy (start_post_copy)
    # The caller checked that the target sees the very volumes the domain uses: skip libvirt's own guess,
    # which knows only NFS-like and cluster filesystems and qemu.conf's shared_filesystems.
    storage_verified_shared: bool = False
    # Disks (vda, ...) whose top image the target lacks: libvirt copies them during the migration, onto the
    # empty overlays the caller created there on the same backing image (VIR_MIGRATE_NON_SHARED_INC).
    copy_disks: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkConfig:
    """A NAT network with DHCP that libvirt runs on a node (bridge, dnsmasq, masquerading)."""

    name: str
    bridge: str
    address: str  # the node's address on it, the guests' gateway, e.g. 10.88.0.1
    prefix: int  # e.g. 16
    dhcp_start: str
    dhcp_end: str


@dataclass(frozen=True)
class NicAddress:
    """A guest NIC as libvirt knows it: its MAC, and its addresses from the network's DHCP leases."""

    mac: str
    addresses: tuple[str, ...]  # e.g. ("10.88.0.23",)


@dataclass(frozen=True)
class JobProgress:
    """A domain's job as libvirt reports it (a running migration, or the last completed one)."""

    active: bool
    elapsed_ms: int | None = None
    data_total: int | None = None
    data_processed: int | None = None
    data_remaining: int | None = None
    memory_dirty_rate: int | None = None  # bytes per second
    auto_converge_throttle: int | None = None  # percent of vCPU time taken from the guest
    memory_bps: int | None = None
    iteration: int | None = None
    downtime_ms: int | None = None


class ConsoleBusy(HypervisorError):
    """Someone else holds the guest's console (open it with force to take it over)."""


class ByteStream(Protocol):
    """A byte stream to a guest device (its serial console): blocking reads, b"" once it ended."""

    def read(self, limit: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class EventKind(StrEnum):
    LIFECYCLE = "Lifecycle"
    AGENT = "Agent"
    CONNECTION_CLOSED = "ConnectionClosed"


@dataclass(frozen=True)
class HypervisorEvent:
    uri: str
    kind: EventKind
    event: str  # e.g. "Started", "Stopped", "Connected"
    detail: str = ""  # e.g. "Migrated" for Suspended and Resumed; libvirt's number for the others
    domain_name: str | None = None
    domain_uuid: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived, on this process's clock


EventCallback = Callable[[HypervisorEvent], None]


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so no caller has to guess from its URI."""

    runs_guests: bool = True  # domains run real guests (libvirt's test driver only pretends)
    guest_agent: bool = True  # a running guest can have a connected qemu-guest-agent
    mediated_devices: bool = True  # mediated devices can be created and removed on the host
    console_log: bool = True  # the guest's serial console can be logged to a file on the host
    volume_contents: bool = True  # volumes hold real bytes: they can be uploaded to and resized
    domain_type: str | None = None  # the one domain type the backend accepts, when it decides (test: "test")


class Hypervisor(Protocol):
    """One connection to one libvirt host. Methods raise the errors above, never libvirt's."""

    @property
    def uri(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def alive(self) -> bool: ...

    def host_info(self) -> HostInfo: ...

    def define(self, xml: str) -> DomainInfo: ...

    def undefine(self, name: str) -> None: ...

    def start(self, name: str) -> None: ...

    def shutdown(self, name: str, mode: ShutdownMode) -> None: ...

    def reboot(self, name: str, mode: ShutdownMode) -> None: ...

    def destroy(self, name: str, *, graceful: bool = False) -> None: ...

    def suspend(self, name: str) -> None: ...

    def resume(self, name: str) -> None: ...

    def lookup(self, name: str) -> DomainInfo: ...

    def list_domains(self) -> list[DomainInfo]: ...

    def domain_xml(self, name: str) -> str: ...

    def agent_command(self, name: str, command: dict[str, Any], timeout: int) -> Any: ...

    def guest_report(self, name: str) -> dict[str, Any]:
        """What the guest agent reports (app.virt.guest sections), parsed and bounded."""
        ...

    def guest_exec(self, name: str, argv: list[str], stdin: bytes | None, timeout: float) -> dict[str, Any]:
        """Run a program in the guest; {exitCode, stdout, stderr (bytes), timedOut, ...}."""
        ...

    def guest_file_read(self, name: str, path: str, max_bytes: int) -> bytes: ...

    def guest_file_write(self, name: str, path: str, data: bytes) -> None: ...

    def update_authorized_keys(self, name: str, user: str, add: list[str], remove: list[str]) -> None:
        """Add keys to and remove keys from a guest user's ~/.ssh/authorized_keys, through the guest agent
        (other keys in the file stay; adding a key already there changes nothing)."""
        ...

    def guest_fsfreeze(self, name: str, freeze: bool) -> dict[str, Any]:
        """Freeze (True) or thaw the guest's filesystems; {filesystems, fsFreezeStatus}."""
        ...

    def agent_connected(self, name: str) -> bool:
        """libvirt's own view of the guest-agent channel (kept by its agent lifecycle events)."""
        ...

    def ensure_pool(self, name: str, path: str) -> None:
        """A started directory storage pool at `path` (defined on first use)."""
        ...

    def refresh_pool(self, name: str) -> None:
        """Rescan the pool's directory (volumes another node created on shared storage)."""
        ...

    def create_volume(self, pool: str, volume: str, capacity: int, backing: tuple[str, str] | None) -> str:
        """A qcow2 volume, copy-on-write over `backing` (path, format) when given; returns its path.
        An existing volume of that name is returned as it is."""
        ...

    def delete_volume(self, pool: str, volume: str) -> None:
        """Delete if present."""
        ...

    def upload_volume(self, pool: str, volume: str, source: Path, progress: Callable[[int], None]) -> str:
        """A volume holding exactly the bytes of the local file `source`, sent through libvirt's storage
        stream (the node needs no shared filesystem); any volume of that name is replaced. Calls
        `progress(bytes sent)`; returns the volume's path."""
        ...

    def volume_path(self, pool: str, volume: str) -> str | None: ...

    def clone_volume(self, pool: str, source: str, volume: str) -> str:
        """A full copy of `source` named `volume` in the same pool (replacing any of that name); its path."""
        ...

    def resize_volume(self, pool: str, volume: str, capacity: int) -> None:
        """Grow the volume's virtual size to `capacity` bytes (never shrinks)."""
        ...

    def volume_backings(self, pool: str) -> set[str]:
        """Paths of the backing files the pool's volumes are overlays on (what must not be removed)."""
        ...

    def open_console(self, name: str, *, force: bool = False) -> ByteStream:
        """The running domain's serial console. One client at a time: ConsoleBusy while another has it,
        unless `force` (then libvirt ends the other's stream)."""
        ...

    def open_graphics(self, name: str) -> ByteStream:
        """A connection to the running domain's VNC display (plain RFB; libvirt hands over the socket, so
        the node must be reached over a local UNIX socket)."""
        ...

    def ensure_network(self, network: NetworkConfig) -> None:
        """The network defined (autostarted) and active; an existing one of that name is kept as it is."""
        ...

    def nic_addresses(self, name: str) -> list[NicAddress]:
        """The domain's NICs in their order, each with its addresses from its network's DHCP leases."""
        ...

    def node_devices(self) -> list[NodeDevice]:
        """Every device libvirt's node-device API reports on this host."""
        ...

    def pci_devices_in_use(self) -> dict[str, str]:
        """PCI address -> name of a running domain Corral did not make that passes the device through."""
        ...

    def create_mdev(self, parent: str, type_id: str, uuid: str) -> None:
        """Create the mediated device (a vGPU slice) `uuid` of `type_id` on `parent`, unless it exists."""
        ...

    def remove_mdev(self, uuid: str) -> None:
        """Remove the mediated device `uuid` if it exists."""
        ...

    def migrate(self, name: str, destination_uri: str, options: MigrationOptions) -> None:
        """Live-migrate peer to peer (this node's libvirtd dials `destination_uri`), persistent on the
        destination and undefined here; blocks until the migration ends. Raises on failure or abort."""
        ...

    def job_progress(self, name: str, *, completed: bool = False) -> JobProgress | None:
        """The running job (or with `completed`, the last finished one); None when there is none."""
        ...

    def abort_job(self, name: str) -> None: ...

    def set_max_downtime(self, name: str, milliseconds: int) -> None: ...

    def start_post_copy(self, name: str) -> None: ...

    def subscribe(self, callback: EventCallback) -> None: ...

    def close(self) -> None: ...


class Connector(Protocol):
    def __call__(self, uri: str) -> Hypervisor: ...


class NodeHypervisors(Protocol):
    """Open connections by node, reconnecting when a node's URI changes or its connection died."""

    def get(self, node: str, uri: str) -> Hypervisor: ...

    def forget(self, node: str) -> None: ...
