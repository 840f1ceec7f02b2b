"""A strict in-memory hypervisor for executor and steady-state tests: it keeps domains, volumes and mediated
devices, refuses what libvirt refuses (defining a name another domain holds, starting a running domain,
suspending one that does not run, ...) and records every call that changes something. The test driver and
real QEMU stay the proof for everything libvirt itself does."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from typing import Any

from app.virt.driver import (
    AgentUnavailable,
    Capabilities,
    DomainExists,
    DomainInfo,
    DomainNotFound,
    DomainState,
    EventCallback,
    HostInfo,
    InvalidOperation,
    JobProgress,
    MigrationOptions,
    NetworkConfig,
    NicAddress,
    NodeDevice,
    ShutdownMode,
)

ON = (DomainState.RUNNING, DomainState.PAUSED, DomainState.BLOCKED, DomainState.SHUTDOWN)
READS = frozenset({"lookup", "agent_connected", "guest_report", "volume_path", "job_progress"})


@dataclass
class FakeDomain:
    info: DomainInfo
    xml: str
    agent: bool = False  # the guest agent answers while it runs


@dataclass
class FakeHypervisor:
    uri: str = "fake:///node"
    capabilities: Capabilities = field(default_factory=Capabilities)
    domains: dict[str, FakeDomain] = field(default_factory=dict)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)  # pool -> volume -> path
    mdevs: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, subject) of every change
    agent_on_start: bool = True

    @property
    def alive(self) -> bool:
        return True

    @property
    def changes(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[0] not in READS]

    def _domain(self, name: str) -> FakeDomain:
        if name not in self.domains:
            raise DomainNotFound(f"Domain not found: no domain with matching name '{name}'")
        return self.domains[name]

    def _set(self, name: str, state: DomainState, reason: str) -> None:
        domain = self._domain(name)
        domain.info = replace(domain.info, state=state, reason=reason)

    def host_info(self) -> HostInfo:
        host_uuid = "00000000-0000-0000-0000-000000000001"
        return HostInfo(
            "fake",
            "x86_64",
            "fake",
            4,
            8 << 30,
            host_uuid,
            "QEMU",
            "10.0.2",
            "11.3.0",
            frozenset({"qemu"}),
            frozenset(),
        )

    # -- domains -------------------------------------------------------------------------------------
    def define(self, xml: str) -> DomainInfo:
        root = ET.fromstring(xml)
        name, uuid = root.findtext("name") or "", root.findtext("uuid") or ""
        self.calls.append(("define", name))
        existing = self.domains.get(name)
        if existing is not None and existing.info.uuid != uuid:
            raise DomainExists(f"domain '{name}' already exists with uuid {existing.info.uuid}")
        if existing is not None:
            existing.xml = xml  # a new persistent definition; a running domain keeps running
            return existing.info
        info = DomainInfo(name, uuid, DomainState.SHUTOFF, "unknown")
        self.domains[name] = FakeDomain(info, xml)
        return info

    def undefine(self, name: str) -> None:
        self.calls.append(("undefine", name))
        if self._domain(name).info.state in ON:
            raise InvalidOperation("this fake keeps no transient domains: destroy it first")
        del self.domains[name]

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        domain = self._domain(name)
        if domain.info.state in ON:
            raise InvalidOperation("Requested operation is not valid: domain is already running")
        self._set(name, DomainState.RUNNING, "booted")
        domain.agent = self.agent_on_start

    def shutdown(self, name: str, mode: ShutdownMode) -> None:
        self.calls.append(("shutdown", name))
        if self._domain(name).info.state is not DomainState.RUNNING:
            raise InvalidOperation("Requested operation is not valid: domain is not running")
        if mode is ShutdownMode.AGENT and not self._domain(name).agent:
            raise AgentUnavailable("Guest agent is not responding")

    def reboot(self, name: str, mode: ShutdownMode) -> None:
        self.calls.append(("reboot", name))
        if self._domain(name).info.state is not DomainState.RUNNING:
            raise InvalidOperation("Requested operation is not valid: domain is not running")

    def destroy(self, name: str, *, graceful: bool = False) -> None:
        self.calls.append(("destroy", name))
        domain = self._domain(name)
        if domain.info.state not in ON:
            raise InvalidOperation("Requested operation is not valid: domain is not running")
        self._set(name, DomainState.SHUTOFF, "destroyed")
        domain.agent = False

    def suspend(self, name: str) -> None:
        self.calls.append(("suspend", name))
        if self._domain(name).info.state is not DomainState.RUNNING:
            raise InvalidOperation("Requested operation is not valid: domain is not running")
        self._set(name, DomainState.PAUSED, "user")

    def resume(self, name: str) -> None:
        self.calls.append(("resume", name))
        if self._domain(name).info.state is not DomainState.PAUSED:
            raise InvalidOperation("Requested operation is not valid: domain is not paused")
        self._set(name, DomainState.RUNNING, "unpaused")

    def lookup(self, name: str) -> DomainInfo:
        self.calls.append(("lookup", name))
        return self._domain(name).info

    def list_domains(self) -> list[DomainInfo]:
        return [d.info for d in self.domains.values()]

    def domain_xml(self, name: str) -> str:
        return self._domain(name).xml

    def agent_connected(self, name: str) -> bool:
        self.calls.append(("agent_connected", name))
        domain = self.domains.get(name)
        return domain is not None and domain.agent and domain.info.state is DomainState.RUNNING

    def guest_report(self, name: str) -> dict[str, Any]:
        self.calls.append(("guest_report", name))
        if not self.agent_connected(name):
            raise AgentUnavailable("Guest agent is not responding")
        return {"hostname": name, "agentVersion": "7.2.22", "supportedCommands": []}

    # -- storage -------------------------------------------------------------------------------------
    def ensure_pool(self, name: str, path: str) -> None:
        self.calls.append(("ensure_pool", name))
        self.volumes.setdefault(name, {})

    def refresh_pool(self, name: str) -> None:
        self.calls.append(("refresh_pool", name))

    def create_volume(self, pool: str, volume: str, capacity: int, backing: tuple[str, str] | None) -> str:
        if pool not in self.volumes:
            raise InvalidOperation(f"Storage pool not found: no storage pool with matching name '{pool}'")
        if volume not in self.volumes[pool]:
            self.calls.append(("create_volume", volume))
            self.volumes[pool][volume] = f"/fake/{pool}/{volume}"
        return self.volumes[pool][volume]

    def delete_volume(self, pool: str, volume: str) -> None:
        if volume in self.volumes.get(pool, {}):
            self.calls.append(("delete_volume", volume))
            del self.volumes[pool][volume]

    def volume_path(self, pool: str, volume: str) -> str | None:
        self.calls.append(("volume_path", volume))
        return self.volumes.get(pool, {}).get(volume)

    def volume_backings(self, pool: str) -> set[str]:
        return set()

    # -- networks ------------------------------------------------------------------------------------
    def ensure_network(self, network: NetworkConfig) -> None:
        self.calls.append(("ensure_network", network.name))

    def nic_addresses(self, name: str) -> list[NicAddress]:
        return [NicAddress("52:54:00:00:00:01", ())] if name in self.domains else []

    # -- devices -------------------------------------------------------------------------------------
    def node_devices(self) -> list[NodeDevice]:
        return []

    def pci_devices_in_use(self) -> dict[str, str]:
        return {}

    def create_mdev(self, parent: str, type_id: str, uuid: str) -> None:
        if uuid not in self.mdevs:
            self.calls.append(("create_mdev", uuid))
            self.mdevs.add(uuid)

    def remove_mdev(self, uuid: str) -> None:
        if uuid in self.mdevs:
            self.calls.append(("remove_mdev", uuid))
            self.mdevs.discard(uuid)

    # -- what these tests do not exercise ---------------------------------------------------------
    def agent_command(self, name: str, command: dict[str, Any], timeout: int) -> Any:
        raise AgentUnavailable("not in this fake")

    def guest_exec(self, name: str, argv: list[str], stdin: bytes | None, timeout: float) -> dict[str, Any]:
        raise AgentUnavailable("not in this fake")

    def guest_file_read(self, name: str, path: str, max_bytes: int) -> bytes:
        raise AgentUnavailable("not in this fake")

    def guest_file_write(self, name: str, path: str, data: bytes) -> None:
        raise AgentUnavailable("not in this fake")

    def guest_fsfreeze(self, name: str, freeze: bool) -> dict[str, Any]:
        raise AgentUnavailable("not in this fake")

    def update_authorized_keys(self, name: str, user: str, add: list[str], remove: list[str]) -> None:
        raise AgentUnavailable("not in this fake")

    def migrate(self, name: str, destination_uri: str, options: MigrationOptions) -> None:
        raise InvalidOperation("not in this fake")

    def job_progress(self, name: str, *, completed: bool = False) -> JobProgress | None:
        self.calls.append(("job_progress", name))
        return None

    def abort_job(self, name: str) -> None:
        raise InvalidOperation("no job")

    def set_max_downtime(self, name: str, milliseconds: int) -> None:
        raise InvalidOperation("no job")

    def start_post_copy(self, name: str) -> None:
        raise InvalidOperation("no job")

    def subscribe(self, callback: EventCallback) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class FakeNodes:
    """A NodeHypervisors handing out fakes by node name."""

    nodes: dict[str, FakeHypervisor] = field(default_factory=dict)

    def get(self, node: str, uri: str) -> FakeHypervisor:
        return self.nodes.setdefault(node, FakeHypervisor(uri=uri))

    def forget(self, node: str) -> None:
        pass
