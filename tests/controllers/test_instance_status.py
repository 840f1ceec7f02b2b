"""What an instance's status says, from libvirt's state and the guest agent's report."""

from __future__ import annotations

import typing
from datetime import UTC, datetime

import pytest

from app.controllers.instance_status import add_guest_report, interfaces_status, phase_of
from app.virt.driver import DomainInfo, DomainState, NicAddress
from tests.virt.test_guest_parsing import real_report


def info(state: DomainState, reason: str) -> DomainInfo:
    return DomainInfo("d", "u", state, reason)


@pytest.mark.parametrize(
    ("state", "reason", "stopping", "started", "expected"),
    [
        (DomainState.RUNNING, "booted", False, True, ("Running", "Running")),
        (DomainState.RUNNING, "unpaused", True, True, ("Stopping", "StopRequested")),
        (DomainState.PAUSED, "user", False, True, ("Paused", "PausedByUser")),
        (DomainState.PAUSED, "ioerror", False, True, ("Paused", "PausedIOError")),
        (DomainState.PAUSED, "starting up", False, True, ("Starting", "StartingUp")),
        (DomainState.PAUSED, "migration", False, True, ("Migrating", "PausedMigration")),
        (DomainState.SHUTDOWN, "user", False, True, ("Stopping", "ShuttingDown")),
        (DomainState.SHUTOFF, "shutdown", False, True, ("Stopped", "GuestShutdown")),
        (DomainState.SHUTOFF, "crashed", False, True, ("Stopped", "Crashed")),
        (DomainState.SHUTOFF, "unknown", False, False, ("Scheduled", "Defined")),
        (DomainState.CRASHED, "panicked", False, True, ("Failed", "Crashed")),
    ],
)
def test_libvirt_state_to_phase(
    state: DomainState, reason: str, stopping: bool, started: bool, expected: tuple[str, str]
) -> None:
    assert phase_of(info(state, reason), stopping=stopping, ever_started=started) == expected


def test_interfaces_join_the_dhcp_leases_and_the_guest_agent_by_mac() -> None:
    nics = [NicAddress("52:54:00:12:34:56", ("10.88.0.23",)), NicAddress("52:54:00:aa:bb:cc", ())]
    assert interfaces_status(["default", "backup"], nics, real_report()) == [
        {
            "name": "default",
            "interfaceName": "eth0",
            "mac": "52:54:00:12:34:56",
            # The guest reports 10.0.2.15, not the lease: what the guest says it has wins.
            "ipAddress": "10.0.2.15",
            "ipAddresses": ["10.88.0.23", "10.0.2.15", "fe80::5054:ff:fe12:3456"],
            "infoSource": "domain, guest-agent",
        },
        {"name": "backup", "mac": "52:54:00:aa:bb:cc", "ipAddresses": [], "infoSource": "domain"},
    ]
    assert interfaces_status(["default"], [], real_report()) == []  # not running: no NICs
    # Before DHCP answers a NIC has only its link-local address: nothing to reach it at yet.
    early = interfaces_status(["default"], [NicAddress("52:54:00:aa:bb:cc", ("fe80::1",))], {})
    assert "ipAddress" not in early[0] and early[0]["ipAddresses"] == ["fe80::1"]
    ipv6 = interfaces_status(["default"], [NicAddress("52:54:00:aa:bb:cc", ("fe80::1", "2001:db8::5"))], {})
    assert ipv6[0]["ipAddress"] == "2001:db8::5"


def test_a_guest_report_in_the_status() -> None:
    status: dict[str, typing.Any] = {}
    add_guest_report(status, real_report(), datetime.now(UTC))
    assert status["guestOSInfo"]["kernelRelease"] == "6.1.0-41-cloud-amd64"
    agent = {c["type"]: (c["status"], c["message"]) for c in status["conditions"]}["AgentVersionNotSupported"]
    assert agent[0] == "True" and agent[1].startswith("qemu-ga 7.2.22 lacks ")
