"""The libvirt implementation of the hypervisor port: the only module that imports libvirt.

Errors are translated right here (nova's host.py/guest.py pattern): VIR_ERR_NO_DOMAIN becomes DomainNotFound,
agent errors AgentUnavailable, a dead connection HypervisorUnavailable.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

import libvirt
import libvirt_qemu

from app.virt.domain_xml import GUEST_AGENT_CHANNEL, network_xml
from app.virt.driver import (
    AgentUnavailable,
    ByteStream,
    Capabilities,
    ConsoleBusy,
    DomainExists,
    DomainInfo,
    DomainNotFound,
    DomainState,
    EventCallback,
    EventKind,
    GuestCommandFailed,
    GuestFileTooLarge,
    HostInfo,
    HypervisorError,
    HypervisorEvent,
    HypervisorUnavailable,
    InvalidDomainConfig,
    InvalidOperation,
    JobProgress,
    MigrationOptions,
    NetworkConfig,
    NicAddress,
    NodeDevice,
    ShutdownMode,
)
from app.virt.guest import (
    decode_agent_base64,
    exec_result,
    parse_agent_info,
    parse_guest_info,
)
from app.virt.nodedev import foreign_pci_hostdevs, parse_node_device

log = logging.getLogger(__name__)
AGENT_TIMEOUT = 5  # seconds libvirt waits for a guest agent answer: a dead agent never hangs a pass
FILE_CHUNK = 48 * 1024  # qemu-ga reads and writes files in pieces; its messages stay small
KILL_WAIT = 2.0  # seconds for a timed-out guest program to be killed and reaped
UPLOAD_CHUNK = 1 << 20
POOL_BUSY_WAIT = 60.0  # seconds a pool refresh waits for another volume's build or upload to end
T = TypeVar("T")
# libvirt's test driver keeps domains in memory: no guest runs, so no agent, console or mediated device.
TEST_DRIVER = Capabilities(
    runs_guests=False,
    guest_agent=False,
    mediated_devices=False,
    console_log=False,
    volume_contents=False,
    domain_type="test",
)

_loop_lock = threading.Lock()
_loop_started = False

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: DomainState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: DomainState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: DomainState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: DomainState.SHUTDOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: DomainState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: DomainState.PMSUSPENDED,
}
# State reasons by state, from libvirt's virDomain*Reason enums (index = reason code).
_REASONS: dict[DomainState, tuple[str, ...]] = {
    DomainState.RUNNING: (
        "unknown",
        "booted",
        "migrated",
        "restored",
        "from snapshot",
        "unpaused",
        "migration canceled",
        "save canceled",
        "wakeup",
        "crashed",
        "postcopy",
        "postcopy failed",
    ),
    DomainState.PAUSED: (
        "unknown",
        "user",
        "migration",
        "save",
        "dump",
        "ioerror",
        "watchdog",
        "from snapshot",
        "shutting down",
        "snapshot",
        "crashed",
        "starting up",
        "postcopy",
        "postcopy failed",
        "api error",
    ),
    DomainState.SHUTOFF: (
        "unknown",
        "shutdown",
        "destroyed",
        "crashed",
        "migrated",
        "saved",
        "failed",
        "from snapshot",
        "daemon",
    ),
    DomainState.SHUTDOWN: ("unknown", "user"),
    DomainState.CRASHED: ("unknown", "panicked"),
}
_LIFECYCLE = (
    "Defined",
    "Undefined",
    "Started",
    "Suspended",
    "Resumed",
    "Stopped",
    "Shutdown",
    "PMSuspended",
    "Crashed",
)
# Details of the lifecycle events whose detail matters to Corral, by libvirt's numbering.
_DETAILS = {
    "Suspended": (
        "Paused",
        "Migrated",
        "IOError",
        "Watchdog",
        "Restored",
        "FromSnapshot",
        "APIError",
        "PostCopy",
        "PostCopyFailed",
    ),
    "Resumed": ("Unpaused", "Migrated", "FromSnapshot", "PostCopy", "PostCopyFailed"),
}
_AGENT_ERRORS = {
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    getattr(libvirt, "VIR_ERR_AGENT_UNSYNCED", -1),
    getattr(libvirt, "VIR_ERR_AGENT_COMMAND_TIMEOUT", -1),
}
_AGENT_COMMAND_FAILED = getattr(libvirt, "VIR_ERR_AGENT_COMMAND_FAILED", 113)
_CONFIG_ERRORS = {
    libvirt.VIR_ERR_XML_ERROR,
    libvirt.VIR_ERR_XML_DETAIL,
    libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_NO_SUPPORT,
}
_CONNECTION_ERRORS = {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INVALID_CONN}


def _defined_meanwhile(lookup: Callable[[], Any], define_failed: HypervisorError) -> Any:
    """The object another pass or process defined between this one's lookup and its define (libvirt
    refuses a second with the same name); the define's own error when there is none."""
    try:
        return lookup()
    except HypervisorError:
        raise define_failed from None


def _activate(is_active: Callable[[], Any], start: Callable[[], Any]) -> None:
    """Start a pool or network unless it runs; one that another pass started meanwhile is fine."""
    if is_active():
        return
    try:
        start()
    except HypervisorError:
        if not is_active():
            raise


def _ensure_event_loop() -> None:
    """libvirt delivers events and keepalives from one default event loop per process."""
    global _loop_started
    with _loop_lock:
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        # libvirt prints every error to stderr by default; they surface as exceptions instead.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_started = True


class _LibvirtStream:
    """A blocking libvirt stream as a ByteStream."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._closed = False

    def read(self, limit: int) -> bytes:
        try:
            data = self._stream.recv(limit)
        except libvirt.libvirtError:
            return b""  # the guest stopped, or another client forced the console away
        return data if isinstance(data, bytes) else b""

    def write(self, data: bytes) -> None:
        try:
            self._stream.send(data)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"console: {exc}") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with suppress(libvirt.libvirtError):
                self._stream.abort()


class _SocketStream:
    """A connected socket as a ByteStream."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read(self, limit: int) -> bytes:
        try:
            return self._sock.recv(limit)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise HypervisorError(f"display: {exc}") from None

    def close(self) -> None:
        with suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _translate(exc: libvirt.libvirtError, conn: Any | None) -> HypervisorError:
    code = exc.get_error_code()
    message = exc.get_error_message() or str(exc)
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(message, code)
    if code == _AGENT_COMMAND_FAILED:
        return GuestCommandFailed(message.removeprefix("guest agent command failed: "), code)
    if code in _AGENT_ERRORS or "guest agent" in message.lower():
        return AgentUnavailable(message, code)
    if code == libvirt.VIR_ERR_OPERATION_INVALID:
        if "already exists" in message:
            return DomainExists(message, code)
        return InvalidOperation(message, code)
    if "already running" in message or "not running" in message:
        return InvalidOperation(message, code)  # the test driver says this with VIR_ERR_INTERNAL_ERROR
    if code in _CONFIG_ERRORS:
        return InvalidDomainConfig(message, code)
    if code == libvirt.VIR_ERR_DOM_EXIST:
        return DomainExists(message, code)
    if code in _CONNECTION_ERRORS or (conn is not None and not _is_alive(conn)):
        return HypervisorUnavailable(message, code)
    if code == libvirt.VIR_ERR_SYSTEM_ERROR and "connect" in message.lower():
        return HypervisorUnavailable(message, code)
    return HypervisorError(message, code)


def _is_alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _version(number: int) -> str:
    return f"{number // 1_000_000}.{number // 1000 % 1000}.{number % 1000}"


def _dirty_bytes_per_second(stats: dict[str, Any]) -> int | None:
    """libvirt reports the dirty rate in pages per second, next to the page size in bytes."""
    pages = stats.get("memory_dirty_rate")
    if pages is None:
        return None
    return int(pages) * int(stats.get("memory_page_size", 4096))


class LibvirtHypervisor:
    def __init__(self, uri: str) -> None:
        _ensure_event_loop()
        self._uri = uri
        self._callbacks: list[EventCallback] = []
        self._subscribed = False
        # Domain, storage pool and network handles by name, looked up once: each lookup is a round trip to
        # libvirtd (15 per instance from create to delete before). A domain's name carries its uid, which
        # is its uuid, so its handle is right until the domain is undefined, when it goes. A "no such"
        # error from a handle drops the handles of its kind: a domain, pool or network someone replaced
        # by hand under the same name costs one failed call.
        self._domains: dict[str, Any] = {}
        self._pools: dict[str, Any] = {}
        self._networks: dict[str, Any] = {}
        self._kept_by_error = {
            libvirt.VIR_ERR_NO_DOMAIN: self._domains,
            libvirt.VIR_ERR_NO_STORAGE_POOL: self._pools,
            libvirt.VIR_ERR_NO_NETWORK: self._networks,
        }
        self._lock = threading.Lock()
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(
                f"cannot connect to {uri}: {exc.get_error_message()}", exc.get_error_code()
            ) from exc
        if urlsplit(uri).hostname:
            # Remote daemons: notice a dead peer within ~15 s instead of a TCP timeout.
            self._call(lambda: self._conn.setKeepAlive(5, 3))
        self._conn.registerCloseCallback(self._on_close, None)

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def capabilities(self) -> Capabilities:
        return TEST_DRIVER if self._uri.startswith(("test:", "test+")) else Capabilities()

    @property
    def alive(self) -> bool:
        return _is_alive(self._conn)

    @contextmanager
    def _errors(self, *, from_kept_handle: bool = True) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as exc:
            if from_kept_handle:
                # A handle outlived what it named (rare): every name of its kind is looked up again.
                self._kept_by_error.get(exc.get_error_code(), {}).clear()
            raise _translate(exc, self._conn) from exc

    def _call(self, fn: Callable[[], T]) -> T:
        with self._errors():
            return fn()

    def _kept(self, handles: dict[str, Any], name: str, look_up: Callable[[str], Any]) -> Any:
        """The handle kept for `name`, else looked up and kept. A failed lookup used no handle: the kept ones
        stand (every create's first look finds no domain)."""
        handle = handles.get(name)
        if handle is None:
            with self._errors(from_kept_handle=False):
                handle = handles[name] = look_up(name)
        return handle

    def _domain(self, name: str) -> Any:
        return self._kept(self._domains, name, self._conn.lookupByName)

    def _info(self, dom: Any) -> DomainInfo:
        state_code, reason_code = self._call(dom.state)
        state = _STATES.get(state_code, DomainState.NOSTATE)
        reasons = _REASONS.get(state, ())
        reason = reasons[reason_code] if 0 <= reason_code < len(reasons) else "unknown"
        return DomainInfo(
            name=dom.name(),
            uuid=dom.UUIDString(),
            state=state,
            reason=reason,
        )

    # -- host ----------------------------------------------------------------------------------------
    def host_info(self) -> HostInfo:
        caps = ET.fromstring(self._call(self._conn.getCapabilities))
        host = caps.find("host")
        arch = (host.findtext("cpu/arch") if host is not None else None) or "x86_64"
        features = frozenset(f.get("name", "") for f in caps.iterfind("host/cpu/feature"))
        domain_types = frozenset(
            d.get("type", "")
            for guest in caps.iterfind("guest")
            if guest.findtext("arch") is None
            or (guest.find("arch") is not None and guest.find("arch").get("name") == arch)  # type: ignore[union-attr]
            for d in guest.iterfind("arch/domain")
        )
        model, memory_mib, cpus, *_ = self._call(self._conn.getInfo)
        hv_type = self._call(self._conn.getType)
        try:
            hv_version = _version(self._call(self._conn.getVersion))
        except HypervisorError:
            hv_version = ""
        return HostInfo(
            hostname=self._call(self._conn.getHostname),
            arch=arch,
            cpu_model=(host.findtext("cpu/model") if host is not None else None) or model,
            cpus=int(cpus),
            memory_bytes=self._memory_bytes(int(memory_mib)),
            host_uuid=(host.findtext("uuid") if host is not None else None) or "",
            hypervisor_type=hv_type,
            hypervisor_version=hv_version,
            libvirt_version=_version(self._call(self._conn.getLibVersion)),
            domain_types=domain_types,
            cpu_features=features,
            paravirtual_kvm=self._local_pvm(),
        )

    def _memory_bytes(self, info_mib: int) -> int:
        # getInfo() reports NUMA cell memory, which some hosts (VMs among them) under-report; the node
        # memory stats carry MemTotal.
        try:
            stats = self._conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            return int(stats["total"]) * 1024
        except (libvirt.libvirtError, KeyError):
            return info_mib * 1024 * 1024

    def _local_pvm(self) -> bool | None:
        """On a local host, a loaded kvm_pvm module means KVM is paravirtual (it cannot boot stock guests)."""
        parts = urlsplit(self._uri)
        if parts.hostname or parts.scheme not in ("qemu", "qemu+unix"):
            return None
        return Path("/sys/module/kvm_pvm").exists() or not Path("/dev/kvm").exists()

    # -- domains -------------------------------------------------------------------------------------
    def define(self, xml: str) -> DomainInfo:
        dom = self._call(lambda: self._conn.defineXML(xml))
        self._domains[dom.name()] = dom
        return self._info(dom)

    def undefine(self, name: str) -> None:
        dom = self._domain(name)
        flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
        self._with_flag_fallback(lambda: dom.undefineFlags(flags), dom.undefine)
        self._domains.pop(name, None)

    def start(self, name: str) -> None:
        self._call(self._domain(name).create)

    def shutdown(self, name: str, mode: ShutdownMode) -> None:
        flag = (
            libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT
            if mode is ShutdownMode.AGENT
            else libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
        )
        dom = self._domain(name)
        if mode is ShutdownMode.AGENT:
            self._bound_agent_waits(dom)
        self._with_flag_fallback(lambda: dom.shutdownFlags(flag), dom.shutdown)

    def reboot(self, name: str, mode: ShutdownMode) -> None:
        flag = (
            libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT
            if mode is ShutdownMode.AGENT
            else libvirt.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN
        )
        dom = self._domain(name)
        if mode is ShutdownMode.AGENT:
            self._bound_agent_waits(dom)
        self._with_flag_fallback(lambda: dom.reboot(flag), lambda: dom.reboot(0))

    @staticmethod
    def _bound_agent_waits(dom: Any) -> None:
        """libvirt's own agent calls (guest info, agent shutdown) wait for an answer without end by default:
        a guest paused while one is in flight would hold the reconcile pass until someone resumes it."""
        with suppress(libvirt.libvirtError):  # drivers without agents (the test driver) need no bound
            dom.agentSetResponseTimeout(AGENT_TIMEOUT, 0)

    def _with_flag_fallback(self, flagged: Callable[[], Any], plain: Callable[[], Any]) -> None:
        """Drivers that take no mode flags (the test driver) get the plain call: libvirt's default mode."""
        with self._errors():
            try:
                flagged()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_INVALID_ARG):
                    raise
                plain()

    def destroy(self, name: str, *, graceful: bool = False) -> None:
        dom = self._domain(name)
        flag = libvirt.VIR_DOMAIN_DESTROY_GRACEFUL if graceful else libvirt.VIR_DOMAIN_DESTROY_DEFAULT
        self._call(lambda: dom.destroyFlags(flag))

    def suspend(self, name: str) -> None:
        self._call(self._domain(name).suspend)

    def resume(self, name: str) -> None:
        self._call(self._domain(name).resume)

    def lookup(self, name: str) -> DomainInfo:
        return self._info(self._domain(name))

    def list_domains(self) -> list[DomainInfo]:
        found = []
        for dom in self._call(lambda: self._conn.listAllDomains(0)):
            try:
                found.append(self._info(dom))
            except DomainNotFound:
                continue  # undefined between the listing and the look
        return found

    def domain_xml(self, name: str) -> str:
        dom = self._domain(name)
        return str(self._call(lambda: dom.XMLDesc(0)))

    def agent_command(self, name: str, command: dict[str, Any], timeout: int) -> Any:
        dom = self._domain(name)
        try:
            raw = self._call(lambda: libvirt_qemu.qemuAgentCommand(dom, json.dumps(command), timeout, 0))
        except (DomainNotFound, HypervisorUnavailable, GuestCommandFailed):
            raise
        except HypervisorError as exc:  # not running, no channel, no agent support: all "no agent"
            raise AgentUnavailable(str(exc), exc.code) from exc
        try:
            reply = json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise AgentUnavailable(f"the guest agent sent a malformed reply: {exc}") from exc
        if not isinstance(reply, dict) or "return" not in reply:
            raise AgentUnavailable("the guest agent reply has no 'return'")
        return reply["return"]

    def guest_report(self, name: str) -> dict[str, Any]:
        dom = self._domain(name)
        self._bound_agent_waits(dom)
        try:
            params = self._call(lambda: dom.guestInfo(0, 0))
        except (DomainNotFound, HypervisorUnavailable):
            raise
        except HypervisorError as exc:
            raise AgentUnavailable(str(exc), exc.code) from exc
        report = parse_guest_info(params if isinstance(params, dict) else {})
        report.update(parse_agent_info(self.agent_command(name, {"execute": "guest-info"}, AGENT_TIMEOUT)))
        return report

    def guest_exec(self, name: str, argv: list[str], stdin: bytes | None, timeout: float) -> dict[str, Any]:
        arguments: dict[str, Any] = {"path": argv[0], "arg": argv[1:], "capture-output": True}
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        started = self.agent_command(name, {"execute": "guest-exec", "arguments": arguments}, AGENT_TIMEOUT)
        pid = started.get("pid") if isinstance(started, dict) else None
        if not isinstance(pid, int):
            raise AgentUnavailable("guest-exec answered without a pid")
        status = self._exec_status(name, pid, timeout)
        if status.get("exited"):
            return exec_result(status, timed_out=False)
        return {**exec_result(status, timed_out=True), "killed": self._kill_guest_process(name, pid)}

    def _exec_status(self, name: str, pid: int, timeout: float) -> dict[str, Any]:
        """guest-exec-status of `pid` once it exited, or as it stands after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.agent_command(
                name, {"execute": "guest-exec-status", "arguments": {"pid": pid}}, AGENT_TIMEOUT
            )
            if not isinstance(status, dict):
                raise AgentUnavailable("guest-exec-status answered with no object")
            if status.get("exited") or time.monotonic() >= deadline:
                return status
            time.sleep(0.05)

    def _kill_guest_process(self, name: str, pid: int) -> bool:
        """qemu-ga cannot kill what it started: run the guest's own kill (Linux), else taskkill (Windows), and
        read the process's end so the agent forgets it. Whether it has ended."""
        for argv in (["kill", "-KILL", str(pid)], ["taskkill", "/F", "/T", "/PID", str(pid)]):
            try:
                started = self.agent_command(
                    name,
                    {
                        "execute": "guest-exec",
                        "arguments": {"path": argv[0], "arg": argv[1:], "capture-output": True},
                    },
                    AGENT_TIMEOUT,
                )
                killer = started.get("pid") if isinstance(started, dict) else None
                if isinstance(killer, int):
                    self._exec_status(name, killer, KILL_WAIT)
                if self._exec_status(name, pid, KILL_WAIT).get("exited"):
                    return True
            except GuestCommandFailed:
                continue  # no such program in this guest: try the other one
        return False

    def guest_file_read(self, name: str, path: str, max_bytes: int) -> bytes:
        handle = self._open(name, path, "r")
        data = b""
        try:
            while True:
                chunk = self.agent_command(
                    name,
                    {"execute": "guest-file-read", "arguments": {"handle": handle, "count": FILE_CHUNK}},
                    AGENT_TIMEOUT,
                )
                if not isinstance(chunk, dict):
                    raise AgentUnavailable("guest-file-read answered with no object")
                data += decode_agent_base64(chunk.get("buf-b64", ""))
                if len(data) > max_bytes:
                    raise GuestFileTooLarge(f"{path} is larger than {max_bytes} bytes")
                if chunk.get("eof") or not chunk.get("count"):
                    return data
        finally:
            self._close(name, handle)

    def guest_file_write(self, name: str, path: str, data: bytes) -> None:
        handle = self._open(name, path, "w")
        try:
            for offset in range(0, len(data), FILE_CHUNK):
                piece = base64.b64encode(data[offset : offset + FILE_CHUNK]).decode()
                self.agent_command(
                    name,
                    {"execute": "guest-file-write", "arguments": {"handle": handle, "buf-b64": piece}},
                    AGENT_TIMEOUT,
                )
        finally:
            self._close(name, handle)

    def update_authorized_keys(self, name: str, user: str, add: list[str], remove: list[str]) -> None:
        dom = self._domain(name)
        try:
            if remove:
                flag = libvirt.VIR_DOMAIN_AUTHORIZED_SSH_KEYS_SET_REMOVE
                self._call(lambda: dom.authorizedSSHKeysSet(user, remove, flag))
            if add:
                flag = libvirt.VIR_DOMAIN_AUTHORIZED_SSH_KEYS_SET_APPEND
                self._call(lambda: dom.authorizedSSHKeysSet(user, add, flag))
        except (DomainNotFound, HypervisorUnavailable, GuestCommandFailed):
            raise
        except HypervisorError as exc:
            raise AgentUnavailable(str(exc), exc.code) from exc

    def _open(self, name: str, path: str, mode: str) -> int:
        opening = {"execute": "guest-file-open", "arguments": {"path": path, "mode": mode}}
        handle = self.agent_command(name, opening, AGENT_TIMEOUT)
        if not isinstance(handle, int):
            raise AgentUnavailable("guest-file-open answered without a handle")
        return handle

    def _close(self, name: str, handle: int) -> None:
        with suppress(HypervisorError):
            self.agent_command(
                name, {"execute": "guest-file-close", "arguments": {"handle": handle}}, AGENT_TIMEOUT
            )

    def guest_fsfreeze(self, name: str, freeze: bool) -> dict[str, Any]:
        command = "guest-fsfreeze-freeze" if freeze else "guest-fsfreeze-thaw"
        count = self.agent_command(name, {"execute": command}, AGENT_TIMEOUT)
        status = self.agent_command(name, {"execute": "guest-fsfreeze-status"}, AGENT_TIMEOUT)
        return {
            "filesystems": count if isinstance(count, int) else None,
            "fsFreezeStatus": status if status in ("frozen", "thawed") else "unknown",
        }

    def agent_connected(self, name: str) -> bool:
        root = ET.fromstring(self.domain_xml(name))
        for target in root.iterfind("devices/channel/target"):
            if target.get("name") == GUEST_AGENT_CHANNEL:
                return target.get("state") == "connected"
        return False

    # -- storage -------------------------------------------------------------------------------------
    def _pool(self, name: str) -> Any:
        return self._kept(self._pools, name, self._conn.storagePoolLookupByName)

    def ensure_pool(self, name: str, path: str) -> None:
        try:
            pool = self._pool(name)
        except HypervisorError:
            xml = ET.Element("pool", {"type": "dir"})
            ET.SubElement(xml, "name").text = name
            ET.SubElement(ET.SubElement(xml, "target"), "path").text = path
            try:
                pool = self._call(
                    lambda: self._conn.storagePoolDefineXML(ET.tostring(xml, encoding="unicode"), 0)
                )
            except HypervisorError as exc:
                pool = _defined_meanwhile(lambda: self._pool(name), exc)
            else:
                with suppress(libvirt.libvirtError):
                    pool.build(0)  # creates the directory; fails harmlessly when it exists
                self._call(lambda: pool.setAutostart(1))
        _activate(lambda: self._call(pool.isActive), lambda: self._call(lambda: pool.create(0)))

    def refresh_pool(self, name: str) -> None:
        pool = self._pool(name)
        deadline = time.monotonic() + POOL_BUSY_WAIT
        while True:
            try:
                self._call(lambda: pool.refresh(0))
                return
            except HypervisorError as exc:
                # libvirt refuses a refresh while a volume is being built or uploaded in the pool
                if "asynchronous jobs" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def create_volume(self, pool: str, volume: str, capacity: int, backing: tuple[str, str] | None) -> str:
        existing = self.volume_path(pool, volume)
        if existing is not None:
            return existing
        xml = ET.Element("volume")
        ET.SubElement(xml, "name").text = volume
        ET.SubElement(xml, "capacity", {"unit": "bytes"}).text = str(capacity)
        # Thin, as a new qcow2 is: without it libvirt books the whole capacity as allocated, and a pool
        # that keeps books (the test driver's fixed 100 GiB) refuses volumes long before it is full.
        ET.SubElement(xml, "allocation", {"unit": "bytes"}).text = "0"
        ET.SubElement(ET.SubElement(xml, "target"), "format", {"type": "qcow2"})
        if backing is not None:
            store = ET.SubElement(xml, "backingStore")
            ET.SubElement(store, "path").text = backing[0]
            ET.SubElement(store, "format", {"type": backing[1]})
        created = self._call(lambda: self._pool(pool).createXML(ET.tostring(xml, encoding="unicode"), 0))
        return str(self._call(created.path))

    def _volume(self, pool: str, volume: str) -> Any | None:
        try:
            return self._call(lambda: self._pool(pool).storageVolLookupByName(volume))
        except HypervisorError as exc:
            if exc.code in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
                return None  # no pool yet means no volume either
            raise

    def delete_volume(self, pool: str, volume: str) -> None:
        found = self._volume(pool, volume)
        if found is not None:
            self._call(lambda: found.delete(0))

    def volume_path(self, pool: str, volume: str) -> str | None:
        found = self._volume(pool, volume)
        return None if found is None else str(self._call(found.path))

    def clone_volume(self, pool: str, source: str, volume: str) -> str:
        original = self._volume(pool, source)
        if original is None:
            raise HypervisorError(f"no volume {source!r} in pool {pool!r}", libvirt.VIR_ERR_NO_STORAGE_VOL)
        self.delete_volume(pool, volume)
        info = self._call(original.info)  # (type, capacity, allocation)
        xml = ET.Element("volume")
        ET.SubElement(xml, "name").text = volume
        ET.SubElement(xml, "capacity", {"unit": "bytes"}).text = str(info[1])
        ET.SubElement(ET.SubElement(xml, "target"), "format", {"type": "qcow2"})
        text = ET.tostring(xml, encoding="unicode")
        created = self._call(lambda: self._pool(pool).createXMLFrom(text, original, 0))
        return str(self._call(created.path))

    def resize_volume(self, pool: str, volume: str, capacity: int) -> None:
        found = self._volume(pool, volume)
        if found is None:
            raise HypervisorError(f"no volume {volume!r} in pool {pool!r}", libvirt.VIR_ERR_NO_STORAGE_VOL)
        if self._call(found.info)[1] < capacity:
            self._call(lambda: found.resize(capacity, 0))

    def volume_backings(self, pool: str) -> set[str]:
        try:
            volumes = self._call(lambda: self._pool(pool).listAllVolumes(0))
        except HypervisorError as exc:
            if exc.code == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return set()
            raise
        backings = set()
        for volume in volumes:
            try:
                xml = ET.fromstring(self._call(partial(volume.XMLDesc, 0)))
            except HypervisorError as exc:
                if exc.code == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    continue  # deleted since the listing
                raise
            path = xml.findtext("backingStore/path")
            if path:
                backings.add(path)
        return backings

    def upload_volume(self, pool: str, volume: str, source: Path, progress: Callable[[int], None]) -> str:
        self.delete_volume(pool, volume)
        size = source.stat().st_size
        xml = ET.Element("volume")
        ET.SubElement(xml, "name").text = volume
        ET.SubElement(xml, "capacity", {"unit": "bytes"}).text = str(size)
        ET.SubElement(xml, "allocation", {"unit": "bytes"}).text = "0"
        # raw: libvirt writes no header of its own; the bytes sent are the file, whatever their format.
        ET.SubElement(ET.SubElement(xml, "target"), "format", {"type": "raw"})
        created = self._call(lambda: self._pool(pool).createXML(ET.tostring(xml, encoding="unicode"), 0))
        sent = 0

        def send(_stream: Any, nbytes: int, handle: BinaryIO) -> bytes:
            nonlocal sent
            chunk = handle.read(min(nbytes, UPLOAD_CHUNK))
            sent += len(chunk)
            progress(sent)
            return chunk

        try:
            with source.open("rb") as handle:
                stream = self._call(lambda: self._conn.newStream(0))
                self._call(lambda: created.upload(stream, 0, size, 0))
                try:
                    self._call(lambda: stream.sendAll(send, handle))
                    self._call(stream.finish)
                except BaseException:
                    with suppress(libvirt.libvirtError):
                        stream.abort()
                    raise
        except BaseException:
            with suppress(HypervisorError, libvirt.libvirtError):
                created.delete(0)
            raise
        return str(self._call(created.path))

    # -- consoles ------------------------------------------------------------------------------------
    def open_console(self, name: str, *, force: bool = False) -> ByteStream:
        dom = self._domain(name)
        stream = self._call(lambda: self._conn.newStream(0))
        flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if force else libvirt.VIR_DOMAIN_CONSOLE_SAFE
        try:
            self._call(lambda: dom.openConsole(None, stream, flags))
        except HypervisorError as exc:
            if "active console session" in str(exc).lower():
                raise ConsoleBusy(f"{name}: another client has the console") from None
            raise
        return _LibvirtStream(stream)

    def open_graphics(self, name: str) -> ByteStream:
        dom = self._domain(name)
        # SKIPAUTH: the caller was authorized by Corral; the display has no password of its own.
        fd = self._call(lambda: dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH))
        return _SocketStream(socket.socket(fileno=fd))

    # -- networks ------------------------------------------------------------------------------------
    def _network(self, name: str) -> Any:
        return self._kept(self._networks, name, self._conn.networkLookupByName)

    def ensure_network(self, network: NetworkConfig) -> None:
        try:
            net = self._network(network.name)
        except HypervisorError as exc:
            if exc.code != libvirt.VIR_ERR_NO_NETWORK:
                raise
            try:
                net = self._call(lambda: self._conn.networkDefineXML(network_xml(network)))
            except HypervisorError as define_failed:
                net = _defined_meanwhile(lambda: self._network(network.name), define_failed)
            else:
                self._call(lambda: net.setAutostart(1))
        _activate(lambda: self._call(net.isActive), lambda: self._call(net.create))

    def nic_addresses(self, name: str) -> list[NicAddress]:
        dom = self._domain(name)
        root = ET.fromstring(self._call(lambda: dom.XMLDesc(0)))
        found = []
        for interface in root.iterfind("devices/interface"):
            mac_element, source = interface.find("mac"), interface.find("source")
            mac = str(mac_element.get("address", "")).lower() if mac_element is not None else ""
            network = source.get("network") if source is not None else None
            found.append(NicAddress(mac, self._leased(network, mac) if network else ()))
        return found

    def _leased(self, network: str, mac: str) -> tuple[str, ...]:
        """The MAC's addresses from the network's DHCP leases, the newest first (a guest that asked again
        may hold a second, older lease until it expires)."""
        try:
            net = self._network(network)
            leases = self._call(lambda: net.DHCPLeases(mac, 0))
        except HypervisorUnavailable:
            raise
        except HypervisorError:
            return ()  # no such network, or no leases kept (libvirt's test driver)
        ordered = sorted(leases or [], key=lambda lease: -int(lease.get("expirytime") or 0))
        return tuple(dict.fromkeys(str(lease["ipaddr"]) for lease in ordered if lease.get("ipaddr")))

    # -- host devices --------------------------------------------------------------------------------
    def node_devices(self) -> list[NodeDevice]:
        found: list[NodeDevice] = []
        for device in self._call(lambda: self._conn.listAllDevices(0)):
            with self._errors():
                parsed = parse_node_device(device.XMLDesc(0))
            if parsed is not None:
                found.append(parsed)
        return sorted(found, key=lambda d: d.name)

    def pci_devices_in_use(self) -> dict[str, str]:
        used: dict[str, str] = {}
        for dom in self._call(lambda: self._conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)):
            try:
                with self._errors():
                    used.update((address, dom.name()) for address in foreign_pci_hostdevs(dom.XMLDesc(0)))
            except DomainNotFound:
                continue  # gone between the listing and the look
        return used

    def create_mdev(self, parent: str, type_id: str, uuid: str) -> None:
        if any(d.mdev_uuid == uuid for d in self.node_devices()):
            return
        xml = ET.Element("device")
        ET.SubElement(xml, "parent").text = parent
        capability = ET.SubElement(xml, "capability", {"type": "mdev"})
        ET.SubElement(capability, "type", {"id": type_id})
        ET.SubElement(capability, "uuid").text = uuid
        self._call(lambda: self._conn.nodeDeviceCreateXML(ET.tostring(xml, encoding="unicode"), 0))

    def remove_mdev(self, uuid: str) -> None:
        for device in self._call(
            lambda: self._conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV)
        ):
            with self._errors():
                parsed = parse_node_device(device.XMLDesc(0))
                if parsed is not None and parsed.mdev_uuid == uuid:
                    device.destroy()

    # -- migration -----------------------------------------------------------------------------------
    def migrate(self, name: str, destination_uri: str, options: MigrationOptions) -> None:
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        )
        if options.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if options.post_copy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        if options.storage_verified_shared:
            flags |= libvirt.VIR_MIGRATE_UNSAFE
        params: dict[str, Any] = {}
        if options.bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = options.bandwidth_mib
        if options.copy_disks:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(options.copy_disks)
        dom = self._domain(name)
        self._call(lambda: dom.migrateToURI3(destination_uri, params, flags))

    def job_progress(self, name: str, *, completed: bool = False) -> JobProgress | None:
        dom = self._domain(name)
        stats = self._call(lambda: dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0))
        kind = stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE)
        if kind == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        return JobProgress(
            active=kind in (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED),
            elapsed_ms=stats.get("time_elapsed"),
            data_total=stats.get("data_total"),
            data_processed=stats.get("data_processed"),
            data_remaining=stats.get("data_remaining"),
            memory_dirty_rate=_dirty_bytes_per_second(stats),
            auto_converge_throttle=stats.get("auto_converge_throttle"),
            memory_bps=stats.get("memory_bps"),
            iteration=stats.get("memory_iteration"),
            downtime_ms=stats.get("downtime"),
        )

    def abort_job(self, name: str) -> None:
        dom = self._domain(name)
        self._call(dom.abortJob)

    def set_max_downtime(self, name: str, milliseconds: int) -> None:
        dom = self._domain(name)
        self._call(lambda: dom.migrateSetMaxDowntime(milliseconds, 0))

    def start_post_copy(self, name: str) -> None:
        dom = self._domain(name)
        self._call(lambda: dom.migrateStartPostCopy(0))

    # -- events --------------------------------------------------------------------------------------
    def subscribe(self, callback: EventCallback) -> None:
        with self._lock:
            self._callbacks.append(callback)
            if self._subscribed:
                return
            self._subscribed = True
        with self._errors():
            self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
            self._conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._on_agent, None
            )

    def _emit(self, event: HypervisorEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("event callback failed for %s", event)

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        name = _LIFECYCLE[event] if 0 <= event < len(_LIFECYCLE) else f"Event{event}"
        if name == "Undefined":
            self._domains.pop(dom.name(), None)
        details = _DETAILS.get(name, ())
        named = details[detail] if 0 <= detail < len(details) else str(detail)
        self._emit(HypervisorEvent(self._uri, EventKind.LIFECYCLE, name, named, dom.name(), dom.UUIDString()))

    def _on_agent(self, _conn: Any, dom: Any, state: int, reason: int, _opaque: Any) -> None:
        connected = state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
        self._emit(
            HypervisorEvent(
                self._uri,
                EventKind.AGENT,
                "Connected" if connected else "Disconnected",
                str(reason),
                dom.name(),
                dom.UUIDString(),
            )
        )

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._emit(HypervisorEvent(self._uri, EventKind.CONNECTION_CLOSED, "Closed", str(reason)))

    def close(self) -> None:
        with suppress(libvirt.libvirtError):
            self._conn.unregisterCloseCallback()
        with suppress(libvirt.libvirtError):
            self._conn.close()


def connect(uri: str) -> LibvirtHypervisor:
    return LibvirtHypervisor(uri)
