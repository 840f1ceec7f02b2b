"""The migration reconciler's decisions as tables: admission, steering and the verdict by location."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from app.controllers.migration_decisions import (
    Location,
    MigratingInstance,
    Steering,
    admit,
    candidates,
    merged,
    progress_state,
    steer,
    where_the_guest_is,
)
from app.controllers.migration_policy import Policy, downtime_ramp
from app.controllers.placement import NodeView
from app.schemas.instance import InstanceSpec
from app.schemas.migration import MigrationState
from app.schemas.records import MigrationLock
from app.virt.driver import DomainInfo, DomainState, JobProgress

INSTANCE = MigratingInstance(
    uid="u1",
    node="n1",
    phase="Running",
    reason="Running",
    spec=InstanceSpec(),
    domain="ns.vm.u1",
    lock=None,
    volumes=("root",),
    deleting=False,
    unmigratable=None,
)


def with_(**changes: object) -> MigratingInstance:
    return replace(INSTANCE, **changes)  # type: ignore[arg-type]


LOCKED = with_(lock=MigrationLock(uid="other", name="m0", target="n2"))
NOT_RUNNING = "; only a Running instance, or one paused by its user, live-migrates"


@pytest.mark.parametrize(
    ("instance", "busy", "refusal", "wait"),
    [
        (INSTANCE, {}, None, None),
        (with_(phase="Paused", reason="PausedByUser"), {}, None, None),
        (None, {}, "instance 'vm' does not exist", None),
        (LOCKED, {}, None, "migration 'm0' of the instance runs"),
        (with_(lock=MigrationLock(uid="m1", name="m1", target="n2")), {}, None, None),
        (with_(node=None, phase="Pending"), {}, "the instance is Pending; it runs on no node", None),
        (with_(unmigratable="HostDevice"), {}, "the instance is not live-migratable: HostDevice", None),
        (with_(phase="Stopped"), {}, "the instance is Stopped" + NOT_RUNNING, None),
        (
            with_(phase="Paused", reason="PausedIOError"),
            {},
            "the instance is Paused (PausedIOError)" + NOT_RUNNING,
            None,
        ),
        (INSTANCE, {"n1": 2}, None, "node n1 has 2 migrations in flight (limit 2)"),
        (INSTANCE, {"n2": 2, "n3": 2}, None, "n2, n3: at the limit of 2 migrations in flight"),
        (INSTANCE, {"n2": 2}, None, None),
    ],
)
def test_admission(
    instance: MigratingInstance | None, busy: dict[str, int], refusal: str | None, wait: str | None
) -> None:
    admission = admit("m1", "vm", instance, Counter(busy), {"n2", "n3"}, 2)
    assert (admission.refusal, admission.wait) == (refusal, wait)


def test_candidates_name_why_each_node_is_passed_over() -> None:
    views = [NodeView(n, {}, True, False, 4, 1 << 30) for n in ("n1", "n2", "n3")]
    possible, reasons = candidates(views, "n1", None)
    assert [v.name for v in possible] == ["n2", "n3"] and reasons == {"n1": "is the source node"}
    possible, reasons = candidates(views, "n1", "n3")
    assert [v.name for v in possible] == ["n3"] and reasons["n2"] == "not the requested targetNode"
    possible, reasons = candidates(views, "n1", "n9")
    assert possible == [] and reasons["n9"] == "no such node"


def test_steering_ramps_downtime_then_times_out() -> None:
    policy = Policy(max_downtime_ms=300, downtime_steps=3, downtime_delay_per_gib=10)
    ramp = downtime_ramp(policy, 1 << 30)
    assert ramp == [(0.0, 100), (10.0, 167), (20.0, 233), (30.0, 300)]
    wheel, steering = steer(Steering(), 5.0, False, policy, ramp, timeout=100)
    assert (wheel.abort, wheel.post_copy, wheel.max_downtime_ms) == (False, False, None)
    wheel, steering = steer(steering, 25.0, False, policy, ramp, timeout=100)
    assert wheel.max_downtime_ms == 233 and steering.ramp_step == 2
    assert wheel.state.model_dump(exclude_unset=True) == {"current_max_downtime_ms": 233}
    wheel, steering = steer(steering, 101.0, False, policy, ramp, timeout=100)
    assert wheel.abort and not wheel.post_copy and steering.timed_out and not steering.aborted
    wheel, steering = steer(steering, 102.0, False, policy, ramp, timeout=100)
    assert not wheel.abort  # once


def test_steering_switches_to_post_copy_when_allowed_and_honours_aborts_once() -> None:
    policy = Policy(allow_post_copy=True)
    ramp = downtime_ramp(policy, 1 << 30)
    wheel, steering = steer(Steering(), 200.0, False, policy, ramp, timeout=150)
    assert wheel.post_copy and not wheel.abort and wheel.state.mode == "PostCopy"
    wheel, steering = steer(Steering(), 1.0, True, policy, ramp, timeout=150)
    assert wheel.abort and steering.aborted and wheel.state.abort_status == "Aborting"
    wheel, steering = steer(steering, 500.0, True, policy, ramp, timeout=150)
    assert not wheel.abort and not wheel.post_copy  # aborted: no timeout handling either


def on(state: DomainState, reason: str = "") -> DomainInfo:
    return DomainInfo("ns.vm.u1", "u1", state, reason)


@pytest.mark.parametrize(
    ("source", "target", "answered", "location"),
    [
        (None, on(DomainState.RUNNING), True, Location.TARGET),
        (on(DomainState.PAUSED, "migration"), on(DomainState.RUNNING), True, Location.TARGET),
        (None, on(DomainState.PAUSED, "user"), True, Location.TARGET),  # paused by its user all along
        (on(DomainState.RUNNING), None, True, Location.SOURCE),
        (on(DomainState.RUNNING), on(DomainState.PAUSED, "migration"), True, Location.SOURCE),
        (None, None, True, Location.NOWHERE),
        (None, None, False, Location.UNSETTLED),
        (on(DomainState.RUNNING), on(DomainState.RUNNING), True, Location.UNSETTLED),
    ],
)
def test_the_outcome_is_where_the_guest_runs(
    source: DomainInfo | None, target: DomainInfo | None, answered: bool, location: Location
) -> None:
    assert where_the_guest_is(source, target, answered) is location


def test_progress_reports_only_what_libvirt_said() -> None:
    state = progress_state(JobProgress(active=True, data_total=10, data_remaining=4, iteration=2))
    assert state.model_dump(by_alias=True, exclude_unset=True) == {
        "dataTotalBytes": 10,
        "dataRemainingBytes": 4,
        "iteration": 2,
    }


def test_partial_states_merge_by_the_fields_they_set() -> None:
    steering = MigrationState(current_max_downtime_ms=100, mode="PostCopy")
    state = merged(steering, MigrationState(iteration=3, mode="PreCopy"), MigrationState(downtime_ms=None))
    assert state.model_dump(exclude_unset=True) == {
        "current_max_downtime_ms": 100,
        "mode": "PreCopy",
        "iteration": 3,
        "downtime_ms": None,  # set to nothing is still set: libvirt had no figure
    }
