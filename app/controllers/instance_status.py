"""What an instance's status says, computed from the observed libvirt state (pure)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from app.clock import rfc3339
from app.schemas.common import JsonObject
from app.schemas.conditions import set_condition
from app.virt.driver import DomainInfo, DomainState, NicAddress
from app.virt.guest import REQUIRED_COMMANDS

PAUSE_REASONS = {
    "user": "PausedByUser",
    "ioerror": "PausedIOError",
    "watchdog": "PausedWatchdog",
    "migration": "PausedMigration",
    "shutting down": "PausedShuttingDown",
    "crashed": "PausedCrashed",
    "postcopy failed": "PausedPostcopyFailed",
}
STOP_REASONS = {
    "shutdown": "GuestShutdown",
    "destroyed": "Destroyed",
    "crashed": "Crashed",
    "failed": "Failed",
    "migrated": "Migrated",
    "saved": "Saved",
    "daemon": "Daemon",
    "unknown": "Unknown",
}


@dataclass(frozen=True)
class Observed:
    """One pass's view: the phase to report and why, plus the agent and migratability facts."""

    phase: str
    reason: str = ""
    message: str = ""
    agent: str = "False"  # the AgentConnected condition: True, False, or Unknown (driver cannot tell)
    agent_reason: str = "DomainNotRunning"
    live_migratable: bool = True
    migratable_reason: str = "Migratable"


def phase_of(info: DomainInfo, *, stopping: bool, ever_started: bool) -> tuple[str, str]:
    """(phase, reason) for a defined domain's libvirt state."""
    if info.state in (DomainState.RUNNING, DomainState.BLOCKED):
        return ("Stopping", "StopRequested") if stopping else ("Running", "Running")
    if info.state is DomainState.PAUSED:
        if info.reason == "starting up":
            return "Starting", "StartingUp"
        if info.reason == "migration":
            return "Migrating", "PausedMigration"
        return "Paused", PAUSE_REASONS.get(info.reason, "Paused")
    if info.state is DomainState.SHUTDOWN:
        return "Stopping", "ShuttingDown"
    if info.state is DomainState.PMSUSPENDED:
        return "Paused", "PMSuspended"
    if info.state is DomainState.CRASHED:
        return "Failed", "Crashed"
    if not ever_started:
        return "Scheduled", "Defined"
    return "Stopped", STOP_REASONS.get(info.reason, "Stopped")


def render(
    previous: JsonObject,
    observed: Observed,
    *,
    generation: int,
    node: str | None,
    domain: str | None,
    at: datetime,
    extra: JsonObject | None = None,
) -> JsonObject:
    """The new status: phase, conditions (lastTransitionTime moves only on a flip), transition stamps."""
    status: JsonObject = {k: v for k, v in previous.items() if k not in ("reason", "message", "retryAfter")}
    status["conditions"] = [dict(c) for c in previous.get("conditions", [])]
    stamps = [dict(s) for s in previous.get("phaseTransitionTimestamps", [])]
    if previous.get("phase") != observed.phase:
        stamps.append({"phase": observed.phase, "phaseTransitionTimestamp": rfc3339(at)})
    status.update(observedGeneration=generation, phase=observed.phase, phaseTransitionTimestamps=stamps[-20:])
    if observed.reason:
        status["reason"] = observed.reason
    if observed.message:
        status["message"] = observed.message
    if node:
        status["nodeName"] = node
    if domain:
        status["domainName"] = domain
    status.update(extra or {})

    for kind, value, reason, message in conditions_of(observed):
        set_condition(status, kind, value, reason, message, at)
    return status


def conditions_of(observed: Observed) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) of each condition an observation sets."""
    phase, why = observed.phase, observed.reason or observed.phase
    ready = phase in ("Running", "Migrating")  # a guest being live-migrated keeps running
    paused, stopped = phase == "Paused", phase in ("Stopped", "Scheduled")
    connected = observed.agent == "True"
    return [
        ("Ready", str(ready), "Running" if ready else why, "" if ready else observed.message),
        ("Paused", str(paused), why if paused else "NotPaused", ""),
        ("Stopped", str(stopped), why if stopped else "NotStopped", ""),
        ("AgentConnected", observed.agent, "AgentConnected" if connected else observed.agent_reason, ""),
        ("LiveMigratable", str(observed.live_migratable), observed.migratable_reason, ""),
    ]


def add_guest_report(status: JsonObject, report: JsonObject, at: datetime) -> None:
    """KubeVirt's status.guestOSInfo from a guest agent report, and whether the agent offers every command
    Corral uses (AgentVersionNotSupported). Its interfaces go into status.interfaces (interfaces_status)."""
    os_info = {k: v for k, v in report.get("osInfo", {}).items() if k not in ("variant", "variantId")}
    status.update(guestOSInfo=os_info)
    missing = [c for c in REQUIRED_COMMANDS if c not in report.get("supportedCommands", [])]
    lacks = f"qemu-ga {report.get('agentVersion')} lacks {', '.join(missing)}" if missing else ""
    reason = "MissingCommands" if missing else "Supported"
    set_condition(status, "AgentVersionNotSupported", "True" if missing else "False", reason, lacks, at)


def _primary_address(addresses: list[str]) -> str | None:
    """The address to reach the NIC at: IPv4 first, then IPv6, never a link-local one (fe80::, 169.254/16),
    which every NIC has before DHCP answers and which no other host can use."""
    usable = []
    for text in addresses:
        try:
            address = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if not address.is_link_local:
            usable.append(address)
    usable.sort(key=lambda a: a.version)
    return str(usable[0]) if usable else None


def interfaces_status(names: list[str], nics: list[NicAddress], report: JsonObject) -> list[JsonObject]:
    """KubeVirt's status.interfaces: each NIC of the domain, named as the spec's interfaces in order, with
    its addresses from the network's DHCP leases (infoSource `domain`) and as the guest agent reports them
    (`guest-agent`), matched by MAC."""
    agent = {
        str(nic.get("mac", "")).lower(): nic
        for nic in report.get("interfaces", [])
        if nic.get("name") != "lo" and nic.get("mac")
    }
    found: list[JsonObject] = []
    for index, nic in enumerate(nics):
        entry: JsonObject = {"name": names[index] if index < len(names) else f"nic{index}", "mac": nic.mac}
        addresses, sources = list(nic.addresses), ["domain"]
        seen, reported = agent.get(nic.mac), list[str]()
        if seen is not None:
            entry["interfaceName"] = seen.get("name")
            reported = [a["address"] for a in seen.get("ipAddresses", [])]
            addresses += [a for a in reported if a not in addresses]
            sources.append("guest-agent")
        # What the guest itself reports wins: a lease the guest let go of can outlive it for a while.
        confirmed = [a for a in addresses if a in reported]
        primary = _primary_address(confirmed) or _primary_address(addresses)
        if primary is not None:
            entry["ipAddress"] = primary
        entry.update(ipAddresses=addresses, infoSource=", ".join(sources))
        found.append(entry)
    return found
