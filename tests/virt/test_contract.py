"""The hypervisor port's contract, run against every driver (nova's test_virt_drivers pattern)."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

import pytest

from app.virt.domain_xml import DomainConfig, build_domain_xml
from app.virt.driver import (
    AgentUnavailable,
    DomainNotFound,
    DomainState,
    EventKind,
    Hypervisor,
    HypervisorEvent,
    InvalidDomainConfig,
    InvalidOperation,
    ShutdownMode,
)
from app.virt.libvirt_driver import connect
from tests.virt.conftest import discard, guest_config


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def events_of(hv: Hypervisor) -> queue.Queue[HypervisorEvent]:
    received: queue.Queue[HypervisorEvent] = queue.Queue()
    hv.subscribe(received.put)
    return received


def next_event(
    received: queue.Queue[HypervisorEvent], uuid: str, kind: EventKind, event: str, timeout: float = 30.0
) -> HypervisorEvent:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = received.get(timeout=left)
        except queue.Empty:
            break
        if item.domain_uuid == uuid and item.kind is kind and item.event == event:
            return item
    raise AssertionError(f"no {kind} {event} event for {uuid} within {timeout}s")


def test_host_info(hypervisor: Hypervisor) -> None:
    host = hypervisor.host_info()
    assert host.cpus > 0 and host.memory_bytes > 2**20 and host.libvirt_version.count(".") == 2
    assert host.domain_types
    assert hypervisor.alive


def test_lifecycle_with_events(hypervisor: Hypervisor, cleanup: list[str], tmp_path: Path) -> None:
    config = guest_config(hypervisor, tmp_path)
    received = events_of(hypervisor)
    cleanup.append(config.name)

    defined = hypervisor.define(build_domain_xml(config))
    assert (defined.name, defined.uuid, defined.state) == (config.name, config.uuid, DomainState.SHUTOFF)
    assert config.name in {d.name for d in hypervisor.list_domains()}
    assert "corral.dev/xmlns" in hypervisor.domain_xml(config.name)
    next_event(received, config.uuid, EventKind.LIFECYCLE, "Defined")

    hypervisor.start(config.name)
    next_event(received, config.uuid, EventKind.LIFECYCLE, "Started")
    assert hypervisor.lookup(config.name).state is DomainState.RUNNING
    with pytest.raises(InvalidOperation):
        hypervisor.start(config.name)

    hypervisor.suspend(config.name)
    next_event(received, config.uuid, EventKind.LIFECYCLE, "Suspended")
    paused = hypervisor.lookup(config.name)
    assert (paused.state, paused.reason) == (DomainState.PAUSED, "user")

    hypervisor.resume(config.name)
    next_event(received, config.uuid, EventKind.LIFECYCLE, "Resumed")
    assert hypervisor.lookup(config.name).state is DomainState.RUNNING

    hypervisor.destroy(config.name)
    next_event(received, config.uuid, EventKind.LIFECYCLE, "Stopped")
    stopped = hypervisor.lookup(config.name)
    assert (stopped.state, stopped.reason) == (DomainState.SHUTOFF, "destroyed")
    with pytest.raises(InvalidOperation):
        hypervisor.suspend(config.name)

    hypervisor.undefine(config.name)
    next_event(received, config.uuid, EventKind.LIFECYCLE, "Undefined")
    with pytest.raises(DomainNotFound):
        hypervisor.lookup(config.name)


def test_errors_are_translated(hypervisor: Hypervisor, cleanup: list[str], tmp_path: Path) -> None:
    with pytest.raises(DomainNotFound):
        hypervisor.lookup("corral-no-such-domain")
    with pytest.raises(DomainNotFound):
        hypervisor.destroy("corral-no-such-domain")
    with pytest.raises(InvalidDomainConfig):
        hypervisor.define("<domain type='qemu'><name>broken</name></domain")
    config = guest_config(hypervisor, tmp_path)
    cleanup.append(config.name)
    hypervisor.define(build_domain_xml(config))
    with pytest.raises(AgentUnavailable):
        hypervisor.agent_command(config.name, {"execute": "guest-ping"}, 2)


def test_a_domain_replaced_by_another_client_is_found_again(
    hypervisor: Hypervisor, cleanup: list[str], tmp_path: Path
) -> None:
    """The driver keeps domain handles by name. A domain another client undefined and defined anew under
    the same name (another uuid) costs at most one failed call, never a lasting wrong answer; one replaced
    through the driver itself is right at once."""
    config = guest_config(hypervisor, tmp_path)
    cleanup.append(config.name)
    hypervisor.define(build_domain_xml(config))
    assert hypervisor.lookup(config.name).uuid == config.uuid
    other = connect(hypervisor.uri)
    try:
        other.undefine(config.name)
        by_other = replace(config, uuid=str(uuid.uuid4()))
        other.define(build_domain_xml(by_other))
    finally:
        other.close()
    with suppress(DomainNotFound):
        hypervisor.lookup(config.name)  # the old handle's one failed call
    assert hypervisor.lookup(config.name).uuid == by_other.uuid
    hypervisor.undefine(config.name)
    by_driver = replace(config, uuid=str(uuid.uuid4()))
    hypervisor.define(build_domain_xml(by_driver))
    assert hypervisor.lookup(config.name).uuid == by_driver.uuid


@pytest.mark.qemu
def test_real_guest_agent_and_acpi_shutdown(tmp_path: Path) -> None:
    """A real TCG guest from the test image: qemu-ga connects (libvirt's agent event) and answers; ACPI
    shutdown powers it off."""
    hv = connect("qemu:///system")
    config = guest_config(hv, tmp_path)
    try:
        guest_agent_round_trip(hv, config, tmp_path)
    finally:
        discard(hv, config.name)
        hv.close()


def guest_agent_round_trip(hv: Hypervisor, config: DomainConfig, tmp_path: Path) -> None:
    received = events_of(hv)
    hv.define(build_domain_xml(config))
    started = time.monotonic()
    hv.start(config.name)
    next_event(received, config.uuid, EventKind.AGENT, "Connected", timeout=60)
    agent_after = time.monotonic() - started
    assert hv.agent_command(config.name, {"execute": "guest-ping"}, 5) == {}
    hostname = hv.agent_command(config.name, {"execute": "guest-get-host-name"}, 5)
    assert hostname == {"host-name": config.name}
    assert agent_after < 60
    assert_a_pause_does_not_hold_a_report(hv, config.name)
    hv.shutdown(config.name, ShutdownMode.ACPI)
    next_event(received, config.uuid, EventKind.LIFECYCLE, "Stopped", timeout=30)
    assert hv.lookup(config.name).reason == "shutdown"
    assert "corral-init" in (tmp_path / "console.log").read_text(errors="replace")


def assert_a_pause_does_not_hold_a_report(hv: Hypervisor, name: str) -> None:
    """A guest paused while libvirt gathers a report cannot answer: the call must end (answered or
    AgentUnavailable) instead of waiting until someone resumes the guest."""
    finished = threading.Event()

    def report() -> None:
        with suppress(AgentUnavailable):
            hv.guest_report(name)
        finished.set()

    threading.Thread(target=report, daemon=True).start()
    time.sleep(0.002)  # the report's first agent commands are in flight
    hv.suspend(name)
    try:
        assert finished.wait(20), "a guest paused during a report held the call until it was resumed"
    finally:
        hv.resume(name)
    wait_until_agent_answers(hv, name)


def wait_until_agent_answers(hv: Hypervisor, name: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            hv.agent_command(name, {"execute": "guest-ping"}, 2)
            return
        except AgentUnavailable:
            if time.monotonic() > deadline:
                raise


def test_node_devices_and_passthrough_on_a_host_without_an_iommu(
    hypervisor: Hypervisor, cleanup: list[str], tmp_path: Path
) -> None:
    """Both drivers report the host's PCI devices; a hostdev domain defines on both, and the real QEMU
    driver refuses to start it on a host without an IOMMU (these machines): the error a user sees there."""
    pci = [d for d in hypervisor.node_devices() if d.capability == "pci"]
    if hypervisor.capabilities.runs_guests:
        assert pci and all(d.address and d.vendor_id and d.product_id for d in pci)
        assert all(d.iommu_group is None for d in pci)  # no /sys/kernel/iommu_groups here
    config = replace(guest_config(hypervisor, tmp_path), pci_devices=(pci[0].address or "",) if pci else ())
    cleanup.append(config.name)
    hypervisor.define(build_domain_xml(config))
    if hypervisor.capabilities.runs_guests:
        with pytest.raises(InvalidDomainConfig, match="passthrough"):
            hypervisor.start(config.name)
        assert hypervisor.lookup(config.name).state is DomainState.SHUTOFF
