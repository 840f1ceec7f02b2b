"""The instance state machine end to end on libvirt's test driver: fast, so every branch is covered.

The API, the worker and the driver are the real ones; only the hypervisor is libvirt's test:///default, whose
domains can be stopped out of band (a guest shutdown, a crash) from this process.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from app.controllers.instances import InstanceReconciler
from app.db import Database
from app.kinds import INSTANCES
from app.models import EventRow, InstanceRow
from app.schemas.common import parse_quantity
from app.virt.driver import DomainNotFound, DomainState, EventKind, Hypervisor, HypervisorEvent, ShutdownMode
from app.virt.libvirt_driver import connect
from app.worker.connections import NodeConnections
from tests.conftest import add_node, conditions, wait_for

BASE = "/v1/namespaces/default/instances"
MIB = 1 << 20


def instance(name: str, run_strategy: str = "Always", memory: str = "256Mi", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "runStrategy": run_strategy,
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"driver": "test"},
            "domain": {"resources": {"requests": {"cpu": "1", "memory": memory}}},
            **spec,
        },
    }


def get(api: httpx.Client, name: str) -> dict[str, Any]:
    return api.get(f"{BASE}/{name}").json()


def phase_is(api: httpx.Client, name: str, phase: str, reason: str | None = None) -> dict[str, Any] | None:
    obj = get(api, name)
    status = obj.get("status", {})
    ok = status.get("phase") == phase and (reason is None or status.get("reason") == reason)
    return obj if ok else None


def wait_phase(
    api: httpx.Client, name: str, phase: str, reason: str | None = None, timeout: float = 15
) -> dict:
    return wait_for(
        lambda: phase_is(api, name, phase, reason),
        timeout=timeout,
        what=f"{name} {phase}/{reason} (now {get(api, name).get('status', {}).get('phase')})",
    )


def act(api: httpx.Client, name: str, action: str, **kw: Any) -> httpx.Response:
    return api.post(f"{BASE}/{name}/{action}", **kw)


def test_lifecycle_and_actions(api: httpx.Client, hv: Hypervisor) -> None:
    assert api.post(BASE, json=instance("life")).status_code == 201
    running = wait_phase(api, "life", "Running")
    domain = running["status"]["domainName"]
    assert running["status"]["nodeName"] == "td" and domain.startswith("default.life.")
    assert conditions(running) | {} == {
        "Ready": "True",
        "Paused": "False",
        "Stopped": "False",
        "AgentConnected": "Unknown",
        "LiveMigratable": "True",
    }
    phases = [s["phase"] for s in running["status"]["phaseTransitionTimestamps"]]
    assert phases == ["Scheduling", "Scheduled", "Starting", "Running"]

    assert act(api, "life", "pause").status_code == 202
    paused = wait_phase(api, "life", "Paused", "PausedByUser")
    assert conditions(paused)["Paused"] == "True" and hv.lookup(domain).state is DomainState.PAUSED
    conflict = act(api, "life", "restart")
    assert conflict.status_code == 409 and "Paused" in conflict.json()["detail"]
    assert "unpause" in conflict.json()["detail"]
    act(api, "life", "unpause")
    wait_phase(api, "life", "Running")

    act(api, "life", "stop")
    stopped = wait_phase(api, "life", "Stopped", "StoppedByUser")
    assert conditions(stopped)["Stopped"] == "True" and hv.lookup(domain).state is DomainState.SHUTOFF
    assert act(api, "life", "pause").status_code == 409
    act(api, "life", "start")
    wait_phase(api, "life", "Running")

    assert act(api, "life", "softreboot").status_code == 202
    wait_phase(api, "life", "Running")

    before = len(get(api, "life")["status"]["phaseTransitionTimestamps"])
    act(api, "life", "restart")
    wait_for(
        lambda: (
            len(get(api, "life")["status"]["phaseTransitionTimestamps"]) > before
            and phase_is(api, "life", "Running")
        ),
        what="restart",
    )

    assert api.delete(f"{BASE}/life").status_code == 202
    wait_for(lambda: api.get(f"{BASE}/life").status_code == 404, what="deletion")
    with pytest.raises(DomainNotFound):
        hv.lookup(domain)


def test_idempotency_key_acts_once(api: httpx.Client) -> None:
    api.post(BASE, json=instance("idem"))
    wait_phase(api, "idem", "Running")
    key = {"Idempotency-Key": "restart-42"}
    first, second = act(api, "idem", "restart", headers=key), act(api, "idem", "restart", headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()  # the first answer, same resourceVersion: it acted once
    other = act(api, "idem", "stop", headers=key)
    assert other.status_code == 409 and other.json()["errors"][0]["field"] == "Idempotency-Key"


@pytest.mark.parametrize(
    ("strategy", "how", "phase", "reason"),
    [
        ("Always", "shutdown", "Running", None),
        ("Always", "crash", "Running", None),
        ("RerunOnFailure", "shutdown", "Stopped", "GuestShutdown"),
        ("RerunOnFailure", "crash", "Running", None),
        ("Manual", "crash", "Stopped", "Destroyed"),
        ("Once", "shutdown", "Stopped", "GuestShutdown"),
        ("Once", "crash", "Failed", "Destroyed"),
    ],
)
def test_run_strategy_after_the_guest_stops_by_itself(
    api: httpx.Client, hv: Hypervisor, strategy: str, how: str, phase: str, reason: str | None
) -> None:
    name = f"rs-{strategy.lower()}-{how}"
    api.post(BASE, json=instance(name, strategy))
    if strategy == "Manual":
        wait_phase(api, name, "Scheduled")  # Manual: defined, not started
        act(api, name, "start")
    first = wait_phase(api, name, "Running")
    starts = sum(s["phase"] == "Running" for s in first["status"]["phaseTransitionTimestamps"])
    domain = first["status"]["domainName"]
    if how == "shutdown":
        hv.shutdown(domain, ShutdownMode.ACPI)  # the test driver powers off at once, like a guest poweroff
    else:
        hv.destroy(domain)  # out of band: Corral did not ask for it
    if phase == "Running":
        wait_for(
            lambda: (
                sum(s["phase"] == "Running" for s in get(api, name)["status"]["phaseTransitionTimestamps"])
                > starts
                and phase_is(api, name, "Running")
            ),
            what="restart by the runStrategy",
        )
    else:
        settled = wait_phase(api, name, phase, reason)
        assert hv.lookup(domain).state is DomainState.SHUTOFF
        assert act(api, name, "start").status_code == 202  # Stopped and Failed both allow a (re)start
        assert settled["status"]["phase"] == phase
        wait_phase(api, name, "Running")


def test_halted_and_manual_do_not_start(api: httpx.Client) -> None:
    api.post(BASE, json=instance("halted", "Halted"))
    api.post(BASE, json=instance("manual", "Manual"))
    for name in ("halted", "manual"):
        obj = wait_phase(api, name, "Scheduled")
        assert conditions(obj)["Stopped"] == "True"
    patched = api.patch(
        f"{BASE}/halted",
        json={"spec": {"runStrategy": "Always"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200
    wait_phase(api, "halted", "Running")


def test_crash_loop_backs_off(api: httpx.Client, hv: Hypervisor) -> None:
    api.post(BASE, json=instance("loop"))
    domain = wait_phase(api, "loop", "Running")["status"]["domainName"]
    hv.destroy(domain)  # first crash: restarted at once
    wait_for(lambda: hv.lookup(domain).state is DomainState.RUNNING, what="first restart")
    wait_phase(api, "loop", "Running")
    hv.destroy(domain)  # second in a row: backoff
    backing_off = wait_phase(api, "loop", "Stopped", "CrashLoopBackOff")
    assert backing_off["status"]["retryAfter"] and "next start in" in backing_off["status"]["message"]
    assert conditions(backing_off)["Ready"] == "False"
    act(api, "loop", "start")  # a start skips the wait
    wait_phase(api, "loop", "Running")


def test_unschedulable_until_capacity_appears(api: httpx.Client) -> None:
    api.post(BASE, json=instance("big", memory="512Gi"))
    api.post(BASE, json=instance("picky", nodeSelector={"zone": "b"}))
    big = wait_phase(api, "big", "Failed", "Unschedulable")
    assert "td: insufficient memory" in big["status"]["message"]
    picky = wait_phase(api, "picky", "Failed", "Unschedulable")
    assert "td: nodeSelector zone does not match" in picky["status"]["message"]
    add_node(api, "zone-b", "test:///default", {"zone": "b"})
    assert wait_phase(api, "picky", "Running", timeout=20)["status"]["nodeName"] == "zone-b"
    api.delete(f"{BASE}/big")
    wait_for(lambda: api.get(f"{BASE}/big").status_code == 404, what="deleting an unscheduled instance")


def test_placed_instances_hold_their_room_until_deleted(api: httpx.Client, db: Database) -> None:
    """What a node has free is the sum of what its instances hold, kept beside each spec; an instance
    stored before those columns existed (NULL) is counted from its spec all the same."""
    allocatable = api.get("/v1/nodes/td").json()["status"]["allocatable"]["memory"]
    half = f"{int(parse_quantity(allocatable)) * 6 // 10 // MIB}Mi"  # two do not fit
    api.post(BASE, json=instance("first", memory=half))
    wait_phase(api, "first", "Running")
    with db.transaction() as session:
        session.execute(
            update(InstanceRow).where(InstanceRow.name == "first").values(vcpus=None, memory_bytes=None)
        )
    api.post(BASE, json=instance("second", memory=half))
    refused = wait_phase(api, "second", "Failed", "Unschedulable")
    assert "td: insufficient memory" in refused["status"]["message"]
    api.delete(f"{BASE}/first")
    wait_phase(api, "second", "Running", timeout=30)


def test_missing_image_waits_cleanly(api: httpx.Client) -> None:
    """Neither in the catalog nor in the search registry: ErrImagePull with the registry's answer, retried."""
    body = instance("noimage", volumes=[{"name": "root", "containerDisk": {"image": "nosuch/image:1"}}])
    api.post(BASE, json=body)
    waiting = wait_phase(api, "noimage", "Scheduled", "ErrImagePull")
    assert "nosuch/image:1" in waiting["status"]["message"]
    assert (
        "MANIFEST_UNKNOWN" in waiting["status"]["message"] or "NAME_UNKNOWN" in waiting["status"]["message"]
    )
    assert api.post(f"{BASE}/noimage/start").status_code == 202
    api.delete(f"{BASE}/noimage")
    wait_for(lambda: api.get(f"{BASE}/noimage").status_code == 404, what="deletion")


def test_a_pause_from_outside_corral_is_reported_not_fought(api: httpx.Client, hv: Hypervisor) -> None:
    api.post(BASE, json=instance("outside"))
    domain = wait_phase(api, "outside", "Running")["status"]["domainName"]
    hv.suspend(domain)  # e.g. an operator's `virsh suspend`
    wait_phase(api, "outside", "Paused", "PausedByUser")
    assert hv.lookup(domain).state is DomainState.PAUSED
    assert act(api, "outside", "unpause").status_code == 202
    wait_phase(api, "outside", "Running")
    assert hv.lookup(domain).state is DomainState.RUNNING


def test_a_lost_connection_rechecks_every_instance_on_its_node(api: httpx.Client, pg: Database) -> None:
    """Events are lost while a node's connection is down: its instances must not wait for the resync."""
    for name in ("lost-a", "lost-b"):
        assert api.post(BASE, json=instance(name)).status_code == 201
        wait_phase(api, name, "Running")
    reconciler = InstanceReconciler(pg, NodeConnections(connect), Path("/nonexistent"))
    closed = HypervisorEvent("test:///default", EventKind.CONNECTION_CLOSED, "Closed", "0")
    with pg.read() as session:
        keys = reconciler.keys_for_events(session, [("td", closed)])
        assert {INSTANCES.work_key("default", n) for n in ("lost-a", "lost-b")} <= set(keys)
        assert reconciler.keys_for_events(session, [("elsewhere", closed)]) == []


def instance_passes() -> float:
    return (
        REGISTRY.get_sample_value(
            "corral_reconcile_duration_seconds_count", {"kind": INSTANCES.kind, "outcome": "ok"}
        )
        or 0.0
    )


def test_the_events_of_its_own_actions_do_not_wake_another_pass(api: httpx.Client, hv: Hypervisor) -> None:
    """Defining and starting a domain is one pass: the pass looked at the domain after acting, so the
    Defined and Started events it caused wake nothing. An event nobody here caused still does."""
    assert api.post(BASE, json=instance("quiet")).status_code == 201
    before = instance_passes()
    domain = wait_phase(api, "quiet", "Running")["status"]["domainName"]
    time.sleep(1)  # long enough for the events to arrive and be delivered
    assert instance_passes() - before <= 1
    hv.suspend(domain)  # not this worker's doing: a pass reports it
    wait_phase(api, "quiet", "Paused")


def test_a_guest_off_right_after_its_shutdown_is_torn_down_in_the_same_pass(
    api: httpx.Client, pg: Database
) -> None:
    """A graceful delete asks the guest to shut down, then looks again: a guest already off (the test
    driver's shut off at once) is undefined and its row removed in that pass, never shown Terminating; the
    Stopped event of that shutdown, which the pass saw through, wakes no second pass."""
    body = instance("brief", terminationGracePeriodSeconds=30)
    assert api.post(BASE, json=body).status_code == 201
    wait_phase(api, "brief", "Running")
    time.sleep(1)  # the start's own events delivered
    before = instance_passes()
    assert api.delete(f"{BASE}/brief").status_code in (200, 202)
    wait_for(lambda: api.get(f"{BASE}/brief").status_code == 404, timeout=15, what="brief deleted")
    time.sleep(1)  # long enough for the shutdown's event to arrive and be delivered
    assert instance_passes() - before == 1
    with pg.read() as session:
        shown = session.scalars(
            select(EventRow.object).where(EventRow.kind == INSTANCES.kind, EventRow.name == "brief")
        ).all()
    phases = [obj["status"].get("phase") for obj in shown]
    assert "Running" in phases and "Terminating" not in phases, phases
