"""Migration control plane on libvirt's test driver: refusals, scheduling, cancel, failure handling, drains.

The test driver cannot migrate a domain, so a migration that reaches libvirt fails there: that is the
failure path (the instance stays on its source, the row says why). Real migrations run in
tests/integration/test_migration_qemu.py on two real nodes.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from app.controllers.migration_decisions import waiting_for_room
from app.controllers.migration_policy import GIB, Policy, completion_timeout, downtime_ramp
from app.controllers.switchover import SwitchoverClock
from app.schemas.migration import MigrationSpec, phase_refusal
from app.virt.driver import EventKind, HypervisorEvent
from tests.conftest import add_node, bearer, make_token, wait_for
from tests.controllers.test_instances import BASE, instance, wait_phase

MIGRATIONS = "/v1/namespaces/default/migrations"
PLAIN_NODE = Path(__file__).resolve().parents[1] / "data" / "plain-node.xml"
MANIFEST = Path(__file__).resolve().parents[2] / "examples" / "migration.yaml"


def running(api: httpx.Client, name: str, **spec: Any) -> dict[str, Any]:
    assert api.post(BASE, json=instance(name, **spec)).status_code == 201
    return wait_phase(api, name, "Running")


def migration(name: str, vmi: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"vmiName": vmi, **spec}}


def finished(api: httpx.Client, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (m := api.get(f"{MIGRATIONS}/{name}").json())["status"].get("phase") in ("Succeeded", "Failed")
            and m
        ),
        timeout=20,
        what=f"{name} finished",
    )


def test_refused_at_once_with_the_reason(api: httpx.Client) -> None:
    missing = api.post(MIGRATIONS, json=migration("m0", "nope"))
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "spec.vmiName"
    assert api.post(f"{BASE}/nope/migrate").status_code == 404  # the path names it
    assert api.post(BASE, json=instance("halted", run_strategy="Halted")).status_code == 201
    wait_phase(api, "halted", "Scheduled")
    stopped = api.post(f"{BASE}/halted/migrate")
    assert stopped.status_code == 409, stopped.text
    assert stopped.headers["content-type"].startswith("application/problem+json")
    assert "Scheduled; only a Running instance, or one paused by its user, live-migrates" in stopped.text
    running(api, "vm")
    unknown = api.post(MIGRATIONS, json=migration("m1", "vm", targetNode="elsewhere"))
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "spec.targetNode"
    same = api.post(MIGRATIONS, json=migration("m2", "vm", targetNode="td"))
    assert same.status_code == 422 and "is the source node" in same.text
    bad = api.post(MIGRATIONS, json=migration("m3", "vm", bandwidthMiB=-1, maxDowntimeMs=0))
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"spec.bandwidthMiB", "spec.maxDowntimeMs"}
    assert api.get(MIGRATIONS).json()["items"] == []  # nothing half-written
    # A guest paused by its user moves too (here it fails only for want of another node).
    assert api.post(f"{BASE}/vm/pause").status_code == 202
    wait_phase(api, "vm", "Paused")
    paused = api.post(f"{BASE}/vm/migrate")
    assert paused.status_code == 201, paused.text
    assert finished(api, paused.json()["metadata"]["name"])["status"]["reason"] == "Unschedulable"
    refused = phase_refusal("Paused", "PausedIOError")
    assert refused is not None and refused.startswith(
        "the instance is Paused (PausedIOError); only a Running"
    )


def test_an_instance_with_the_longest_name_migrates_by_its_shortcut(api: httpx.Client) -> None:
    name = "v" * 63  # the shortcut's generateName is cut to fit, not refused
    running(api, name)
    created = api.post(f"{BASE}/{name}/migrate")
    assert created.status_code == 201, created.text
    assert created.json()["metadata"]["name"].startswith("v" * 47 + "-migration-")


def test_seed_manifest_with_no_other_node_fails_unschedulable(api: httpx.Client) -> None:
    running(api, "test-vmi")
    created = api.post(
        MIGRATIONS, content=MANIFEST.read_bytes(), headers={"Content-Type": "application/yaml"}
    )
    assert created.status_code == 201, created.text
    done = finished(api, "test-vmi-migration")
    assert done["status"]["phase"] == "Failed" and done["status"]["reason"] == "Unschedulable"
    assert "td: is the source node" in done["status"]["migrationState"]["failureReason"]
    again = api.patch(
        f"{MIGRATIONS}/test-vmi-migration",
        json={"spec": {"targetNode": "x"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert again.status_code == 422 and "immutable" in again.text
    assert wait_phase(api, "test-vmi", "Running")["status"]["nodeName"] == "td"


def test_a_target_without_shared_storage_gets_copies_and_a_failure_keeps_the_instance(
    api: httpx.Client,
) -> None:
    # Each test-driver host keeps its storage pools in memory: the target cannot see the instance's overlay,
    # so Corral creates a copy there for the migration to fill; the test driver cannot migrate at all.
    add_node(api, "plain", f"test://{PLAIN_NODE}", {"driver": "test"})
    vm = running(api, "vm")
    source = vm["status"]["nodeName"]
    target = "plain" if source == "td" else "td"
    created = api.post(f"{BASE}/vm/migrate", json={"targetNode": target})
    assert created.status_code == 201, created.text
    assert created.headers["location"].startswith(f"{MIGRATIONS}/vm-migration-")
    done = finished(api, created.json()["metadata"]["name"])
    status = done["status"]
    assert status["phase"] == "Failed" and status["reason"] == "SourceNotReady", status
    assert status["migrationState"]["copiedVolumes"] == [f"{vm['metadata']['uid']}-root.qcow2"]
    phases = [t["phase"] for t in status["phaseTransitionTimestamps"]]
    assert phases == ["Scheduling", "Scheduled", "PreparingTarget", "TargetReady", "Failed"]
    after = wait_phase(api, "vm", "Running")
    assert after["status"]["nodeName"] == source and after["metadata"]["uid"] == vm["metadata"]["uid"]
    # The instance is free again, and the copy left the target: a second migration prepares it afresh.
    again = api.post(f"{BASE}/vm/migrate", json={"targetNode": target})
    assert again.status_code == 201
    second = finished(api, again.json()["metadata"]["name"])["status"]
    assert second["migrationState"]["copiedVolumes"] == status["migrationState"]["copiedVolumes"], second


def test_cancel_and_delete(api: httpx.Client) -> None:
    running(api, "vm")
    # Cancel of a migration that cannot be placed yet (no other node): it ends Failed either way; a second
    # cancel of a finished one is a conflict.
    created = api.post(MIGRATIONS, json=migration("m", "vm")).json()
    assert created["status"]["phase"] == "Pending"
    api.post(f"{MIGRATIONS}/m/cancel")
    done = finished(api, "m")
    assert done["status"]["phase"] == "Failed"
    assert api.post(f"{MIGRATIONS}/m/cancel").status_code == 409
    assert api.delete(f"{MIGRATIONS}/m").status_code == 202
    wait_for(lambda: api.get(f"{MIGRATIONS}/m").status_code == 404, timeout=10, what="m removed")


def test_drain_lists_what_cannot_move_and_cordons(api: httpx.Client) -> None:
    add_node(api, "plain", f"test://{PLAIN_NODE}")
    running(api, "a", nodeSelector={"driver": "test"})
    assert api.post(
        BASE, json=instance("b", run_strategy="Halted", nodeSelector={"driver": "test"})
    ).is_success
    wait_phase(api, "b", "Scheduled")
    drained = api.post("/v1/nodes/td/drain")
    assert drained.status_code == 202, drained.text
    body = drained.json()
    assert body["unschedulable"] is True and body["node"] == "td"
    assert [m["vmiName"] for m in body["migrations"]] == ["a"]
    reason = "the instance is Scheduled; only a Running instance, or one paused by its user, live-migrates"
    assert body["notMigratable"] == [{"namespace": "default", "name": "b", "reason": reason}]
    assert api.get("/v1/nodes/td").json()["spec"]["unschedulable"] is True
    # New instances avoid the cordoned node.
    assert api.post(BASE, json=instance("c", nodeSelector={"driver": "test"})).status_code == 201
    assert "td: unschedulable" in wait_phase(api, "c", "Failed", "Unschedulable")["status"]["message"]
    wait_for(
        lambda: api.get("/v1/nodes/td/drain").json()["migrations"][0]["phase"] == "Failed",
        timeout=20,
        what="the test driver's migration fails",
    )
    assert api.delete("/v1/nodes/td/drain").status_code == 200
    assert api.post("/v1/nodes/nope/drain").status_code == 404


def test_drain_and_migrations_need_the_right_roles(api: httpx.Client) -> None:
    running(api, "vm")
    token = make_token(api, "ops", [{"namespace": "default", "role": "viewer"}])
    with httpx.Client(base_url=str(api.base_url), headers=bearer(token)) as viewer:
        assert viewer.post(f"{BASE}/vm/migrate").status_code == 403
        assert viewer.post("/v1/nodes/td/drain").status_code == 403
        assert viewer.get(MIGRATIONS).status_code == 200


def test_policy_ramp_and_timeout() -> None:
    defaults = Policy(max_downtime_ms=500, downtime_steps=10, downtime_delay_per_gib=75)
    ramp = downtime_ramp(defaults, 2 * GIB)
    assert ramp[0] == (0.0, 50) and ramp[-1] == (1500.0, 500) and len(ramp) == 11
    assert all(a[0] < b[0] and a[1] < b[1] for a, b in itertools.pairwise(ramp))
    assert completion_timeout(defaults, GIB // 2) == 75.0
    spec = MigrationSpec.model_validate({"vmiName": "x", "maxDowntimeMs": 100, "allowPostCopy": True})
    effective = defaults.overridden_by(spec)
    assert effective.max_downtime_ms == 100 and effective.allow_post_copy and effective.bandwidth_mib == 0
    shown = effective.configuration().model_dump(by_alias=True)
    assert shown["maxDowntimeMs"] == 100 and shown["completionTimeoutPerGiB"] == 150


def test_a_migration_waits_while_its_source_or_every_target_is_at_the_limit() -> None:
    busy = Counter({"a": 2, "b": 1, "c": 2})
    assert waiting_for_room(busy, "a", {"b"}, limit=2) == "node a has 2 migrations in flight (limit 2)"
    assert waiting_for_room(busy, "b", {"a", "c"}, limit=2) == "a, c: at the limit of 2 migrations in flight"
    assert waiting_for_room(busy, "b", {"a", "c", "d"}, limit=2) is None  # d has room
    assert waiting_for_room(busy, "b", set(), limit=2) is None  # nowhere to go: scheduling says why
    assert waiting_for_room(busy, "b", {"a"}, limit=3) is None


def test_switchover_pause_is_measured_between_the_two_migration_events() -> None:
    def event(name: str, detail: str, at: float, uuid: str = "u1") -> HypervisorEvent:
        return HypervisorEvent("qemu://x", EventKind.LIFECYCLE, name, detail, "d", uuid, at=at)

    clock = SwitchoverClock()
    clock.observe(event("Suspended", "Migrated", 5.0))  # an earlier migration's
    clock.observe(event("Suspended", "Paused", 10.01))  # a user's pause: not a switch-over
    clock.observe(event("Suspended", "Migrated", 10.0))
    clock.observe(event("Resumed", "Migrated", 10.034, uuid="u2"))  # another domain
    assert clock.pause_ms("u1", since=9.0, wait=0.01) is None  # not resumed yet
    clock.observe(event("Resumed", "Migrated", 10.034))
    assert clock.pause_ms("u1", since=9.0) == 34
    assert clock.pause_ms("u1", since=9.0, wait=0.01) is None  # taken once
    clock.observe(event("Suspended", "PostCopy", 20.0))
    clock.observe(event("Resumed", "PostCopy", 20.2))
    assert clock.pause_ms("u1", since=19.0) == 200


def test_finished_migrations_are_collected_beyond_five_per_instance(api: httpx.Client) -> None:
    running(api, "vm")
    for index in range(7):
        assert api.post(MIGRATIONS, json=migration(f"m{index}", "vm")).status_code == 201
        finished(api, f"m{index}")  # Unschedulable: there is no other node
    names = [m["metadata"]["name"] for m in api.get(MIGRATIONS).json()["items"]]
    assert names == ["m2", "m3", "m4", "m5", "m6"]
