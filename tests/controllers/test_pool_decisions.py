"""The pool reconciler's decisions as tables: scaling, replacing, pausing, rolling, backing off."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.controllers.pool_decisions import (
    REPLENISH_DELAY,
    WARMING_RECHECK,
    Bookkeeping,
    Member,
    decide,
    failure_backoff,
    pool_status,
)
from app.schemas.pool import PoolSpec

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def spec(**fields: Any) -> PoolSpec:
    return PoolSpec.model_validate({"size": 3, "template": {}, **fields})


def member(n: int, state: str = "available", *, current: bool = True, paused: bool = False) -> Member:
    return Member(
        name=f"p-{n}",
        order=n,
        state=state,
        up=state != "warming",
        agent_ready=state == "available" and not paused,
        warm_paused=paused,
        current=current,
        failure="Crashed: boom" if state == "failed" else "",
        phase={"available": "Paused" if paused else "Running", "warming": "Starting"}.get(state, "Failed"),
    )


FULL = [member(0), member(1), member(2)]


@pytest.mark.parametrize(
    ("members", "burst", "create", "remove"),
    [
        ([], 2, 2, ()),  # at most `burst` warming at once
        ([member(0, "warming")], 2, 1, ()),
        ([member(0, "warming"), member(1, "warming")], 2, 0, ()),
        (FULL, 2, 0, ()),
        ([*FULL, member(3, "warming"), member(4)], 2, 0, ("p-3", "p-4")),  # warming first, then the newest
        ([member(0), member(1, "failed"), member(2)], 2, 0, ("p-1",)),  # its replacement backs off
    ],
)
def test_scaling_and_replacing(
    members: list[Member], burst: int, create: int, remove: tuple[str, ...]
) -> None:
    plan = decide(spec(), members, Bookkeeping(), None, NOW, burst)
    assert (plan.create, plan.remove) == (create, remove)


def test_a_failed_member_backs_off_the_next_create() -> None:
    failing = [member(0, "failed"), member(1, "warming")]
    plan = decide(spec(size=2), failing, Bookkeeping(failures=2), None, NOW, 2)
    assert plan.remove == ("p-0",) and plan.create == 0
    assert plan.bookkeeping == Bookkeeping(3, NOW + timedelta(seconds=failure_backoff(3)))
    assert plan.requeue == failure_backoff(3) and plan.failure_message == "member p-0 failed: Crashed: boom"
    later = decide(
        spec(size=2), [member(1, "warming")], plan.bookkeeping, None, NOW + timedelta(minutes=1), 2
    )
    assert later.create == 1 and later.requeue == WARMING_RECHECK
    healthy = decide(spec(size=2), [member(1), member(2)], plan.bookkeeping, None, NOW, 2)
    assert healthy.bookkeeping.failures == 0  # an available member ends the run of failures


def test_a_claim_delays_the_replacement_briefly() -> None:
    plan = decide(spec(), FULL[:2], Bookkeeping(), NOW - timedelta(seconds=0.25), NOW, 2)
    assert plan.create == 0 and plan.requeue == pytest.approx(REPLENISH_DELAY - 0.25)
    assert decide(spec(), FULL[:2], Bookkeeping(), NOW - timedelta(seconds=2), NOW, 2).create == 1


def test_warm_members_pause_once_their_agent_answers_and_resume_when_asked() -> None:
    members = [member(0), member(1, paused=True), member(2, "warming")]
    paused_pool = decide(spec(warmState="Paused"), members, Bookkeeping(), None, NOW, 2)
    assert paused_pool.pause == ("p-0",) and paused_pool.resume == ()
    running_pool = decide(spec(warmState="Running"), members, Bookkeeping(), None, NOW, 2)
    assert running_pool.pause == () and running_pool.resume == ("p-1",)


OLD = [member(0, current=False), member(1, current=False), member(2, current=False)]


@pytest.mark.parametrize(
    ("members", "min_available", "remove", "create"),
    [
        (OLD, 3, (), 1),  # a surge member first: an old one going now would break minAvailable
        (OLD, 2, ("p-0",), 2),  # with room below minAvailable, an old one goes at once
        ([*OLD, member(3, "warming")], 2, (), 0),  # no old one goes while a new one warms
        ([*OLD, member(3)], 3, ("p-0",), 1),  # a new one is available: an old one goes, the next surges
        ([OLD[0], member(1, "warming", current=False), OLD[2], member(3)], 3, ("p-1",), 1),  # warming first
    ],
)
def test_template_changes_roll_one_member_at_a_time(
    members: list[Member], min_available: int, remove: tuple[str, ...], create: int
) -> None:
    plan = decide(spec(minAvailable=min_available), members, Bookkeeping(), None, NOW, 2)
    assert (plan.remove, plan.create) == (remove, create)
    assert plan.requeue == WARMING_RECHECK


def test_a_paused_pool_changes_nothing_and_says_so() -> None:
    members = [member(0, "failed"), member(1)]
    plan = decide(spec(paused=True), members, Bookkeeping(failures=1), None, NOW, 2)
    assert (plan.create, plan.remove, plan.pause, plan.requeue) == (0, (), (), None)
    status = pool_status({}, spec(paused=True), 4, plan, failed=1, claimed=2, now=NOW)
    assert (status["replicas"], status["availableReplicas"], status["failed"], status["claimed"]) == (
        2,
        1,
        1,
        2,
    )
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "BelowMinAvailable": "False",
        "Paused": "True",
    }


def test_status_counts_and_conditions() -> None:
    members = [member(0), member(1, "warming"), member(2, "failed")]
    plan = decide(spec(minAvailable=2), members, Bookkeeping(), None, NOW, 2)
    status = pool_status({}, spec(minAvailable=2), 7, plan, failed=1, claimed=0, now=NOW)
    assert status["observedGeneration"] == 7
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"], status["warming"]) == (
        2,
        1,
        1,
        1,
    )
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions["BelowMinAvailable"] == ("True", "BelowMinAvailable")
    assert conditions["ReplicaFailure"] == ("True", "MemberFailed")
    assert "failures" not in status and status["retryAfter"].endswith("Z")  # an available member ends the run


@pytest.mark.parametrize(
    ("warm_state", "members", "updated"),
    [
        ("Running", [member(0), member(1), member(2)], 3),
        ("Paused", [member(0), member(1), member(2)], 0),  # the change is seen, not yet rolled out
        ("Paused", [member(0, paused=True), member(1, paused=True), member(2)], 2),
        # Asked to pause, not yet Paused: not rolled out (a client waiting on this would see Running members)
        ("Paused", [replace(member(0, paused=True), phase="Running"), member(1, paused=True)], 1),
        ("Running", [member(0, current=False), member(1), member(2, paused=True)], 1),
    ],
)
def test_updated_replicas_say_when_the_spec_has_rolled_out(
    warm_state: str, members: list[Member], updated: int
) -> None:
    plan = decide(spec(warmState=warm_state, paused=True), members, Bookkeeping(), None, NOW, 2)
    status = pool_status({}, spec(warmState=warm_state), 2, plan, failed=0, claimed=0, now=NOW)
    assert status["updatedReplicas"] == updated
