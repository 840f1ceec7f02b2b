"""The instance reconciler's decisions as tables: every row of the phase table and every runStrategy, without
a database or libvirt."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.controllers.instance_decisions import (
    CONFIG_RETRY,
    GUEST_REFRESH,
    INCOMPLETE_REPORT_WAIT,
    STABLE_AFTER,
    STOPPING_POLL,
    Act,
    Desired,
    Plan,
    decide,
    decide_teardown,
    guest_report_due,
    placed,
    report,
    report_incomplete,
    requeue_after,
    unreachable,
    while_migrating,
)
from app.controllers.instance_status import Observed
from app.schemas.instance import InstanceStatus
from app.schemas.phases import PHASES
from app.schemas.records import InstanceIntent, InstanceProgress, MigrationLock
from app.virt.driver import DomainInfo, DomainState

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
UID = "0b9c6d2e-5f1a-4c3b-9e8d-7a6b5c4d3e2f"
DESIRED = Desired(
    uid=UID,
    node="n1",
    domain="ns.vm.0b9c6d2e",
    generation=1,
    run_strategy="Always",
    grace_period_seconds=30,
    intent=InstanceIntent(),
    volumes=("data",),
)
DEFINED = InstanceProgress(domain="ns.vm.0b9c6d2e", defined_generation=1, volumes=("data", "root"))
RUNNING = InstanceProgress(
    domain="ns.vm.0b9c6d2e",
    defined_generation=1,
    volumes=("data", "root"),
    running=True,
    ever_started=True,
    last_start_at=NOW - timedelta(hours=1),
)


def domain(state: DomainState, reason: str = "booted", uid: str = UID) -> DomainInfo:
    return DomainInfo("ns.vm.0b9c6d2e", uid, state, reason)


def desired(**changes: object) -> Desired:
    intent = changes.pop("intent", {})
    assert isinstance(intent, dict)
    return replace(DESIRED, intent=InstanceIntent(**intent), **changes)  # type: ignore[arg-type]


def after(plan: Plan, want: Desired = DESIRED, agent: bool | None = True) -> Observed:
    """The report once the plan ran as the decisions expect it to."""
    assert plan.domain is not None
    return plan.hold or report(want, plan, plan.domain, agent)


# -- the phase table, row by row ----------------------------------------------------------------------
def pending() -> Observed:
    return Observed(InstanceStatus.model_validate({}).phase)  # what the API shows before the first pass


def starting() -> Observed:
    return report(
        DESIRED, decide(DESIRED, DEFINED, None, NOW), domain(DomainState.PAUSED, "starting up"), None
    )


def stopping() -> Observed:
    want = desired(intent={"power": "Stopped"})
    plan = decide(want, RUNNING, domain(DomainState.RUNNING), NOW)
    assert plan.actions == (Act.SHUT_DOWN,) and plan.requeue == STOPPING_POLL
    return after(plan, want)


def stopped() -> Observed:
    want = desired(run_strategy="Halted", intent={"power": "Stopped"})
    plan = decide(want, RUNNING.but(running=False), domain(DomainState.SHUTOFF, "destroyed"), NOW)
    assert plan.actions == ()
    return after(plan, want)


def failed() -> Observed:
    want = desired(run_strategy="Once")
    plan = decide(want, RUNNING, domain(DomainState.SHUTOFF, "crashed"), NOW)
    assert plan.actions == () and plan.intent.power == "Stopped" and plan.progress.failed_run
    return after(plan, want)


def scheduled() -> Observed:
    want = desired(intent={"power": "Stopped"})
    return after(decide(want, InstanceProgress(), None, NOW), want)


def paused() -> Observed:
    want = desired(intent={"pause": 1, "paused": True})
    return after(decide(want, RUNNING, domain(DomainState.RUNNING), NOW), want)


def migrating() -> Observed:
    lock = MigrationLock(uid="m", name="m1", target="n2")
    return while_migrating(replace(DESIRED, migration=lock), "True")


def terminating() -> Observed:
    want = replace(DESIRED, deleting=True)
    return after(decide_teardown(want, RUNNING, domain(DomainState.RUNNING), NOW), want)


PHASE_CASES: dict[str, tuple[Callable[[], Observed], str]] = {
    "Pending": (pending, ""),
    "Scheduling": (lambda: placed("n1", ""), "Scheduled"),
    "Scheduled": (scheduled, "Defined"),
    "Starting": (starting, "StartingUp"),
    "Running": (lambda: after(decide(DESIRED, DEFINED, None, NOW)), "Running"),
    "Paused": (paused, "PausedByUser"),
    "Migrating": (migrating, "Migrating"),
    "Stopping": (stopping, "StopRequested"),
    "Stopped": (stopped, "StoppedByUser"),
    "Failed": (failed, "Crashed"),
    "Unknown": (lambda: unreachable("node n1: connection refused"), "NodeUnreachable"),
    "Terminating": (terminating, "ShuttingDown"),
}


def test_every_phase_of_the_table_has_a_case() -> None:
    assert set(PHASE_CASES) == set(PHASES)


@pytest.mark.parametrize("phase", list(PHASE_CASES))
def test_phase_table_row(phase: str) -> None:
    case, reason = PHASE_CASES[phase]
    observed = case()
    assert (observed.phase, observed.reason) == (phase, reason)


# -- runStrategy: a run that ends without Corral asking -------------------------------------------------
@pytest.mark.parametrize(
    ("strategy", "how", "starts", "phase"),
    [
        ("Always", "shutdown", True, "Running"),
        ("Always", "crashed", True, "Running"),
        ("RerunOnFailure", "shutdown", False, "Stopped"),
        ("RerunOnFailure", "crashed", True, "Running"),
        ("Once", "shutdown", False, "Stopped"),
        ("Once", "crashed", False, "Failed"),
        ("Manual", "shutdown", False, "Stopped"),
        ("Manual", "crashed", False, "Stopped"),
        ("Halted", "shutdown", False, "Stopped"),
        ("Halted", "crashed", False, "Stopped"),
    ],
)
def test_run_strategy_after_the_guest_stops(strategy: str, how: str, starts: bool, phase: str) -> None:
    want = desired(run_strategy=strategy)
    plan = decide(want, RUNNING, domain(DomainState.SHUTOFF, how), NOW)
    assert (Act.START in plan.actions) == starts
    assert plan.intent.power == ("Running" if starts else "Stopped")
    stop_reason = "GuestShutdown" if how == "shutdown" else "Crashed"
    assert plan.progress.stop_reason == (None if starts else stop_reason)  # a new run clears it
    assert plan.progress.crashes == (1 if starts and how == "crashed" else 0)
    assert after(plan, want).phase == phase


def test_a_stop_corral_made_is_not_a_crash() -> None:
    want = desired(intent={"power": "Stopped"})
    plan = decide(want, RUNNING.but(running=False), domain(DomainState.SHUTOFF, "destroyed"), NOW)
    assert plan.actions == () and plan.progress.crashes == 0 and not plan.progress.failed_run


def test_a_run_whose_start_was_not_recorded_is_adopted() -> None:
    """A worker killed after virDomainCreate and before its write: the next pass finds the domain running
    and records the run, so a stop then reports Stopped (not Scheduled) and a guest shutdown counts."""
    adopted = decide(DESIRED, DEFINED, domain(DomainState.RUNNING), NOW)
    assert adopted.actions == () and adopted.progress.running and adopted.progress.ever_started
    assert adopted.progress.last_start_at == NOW
    want = desired(intent={"power": "Stopped"})
    off = domain(DomainState.SHUTOFF, "destroyed")
    stopped = decide(want, adopted.progress.but(running=False), off, NOW)
    assert after(stopped, want).phase == "Stopped"
    manual = desired(run_strategy="Manual")
    shut_down = decide(manual, adopted.progress, domain(DomainState.SHUTOFF, "shutdown"), NOW)
    assert shut_down.progress.stop_reason == "GuestShutdown"


# -- crash loops ---------------------------------------------------------------------------------------
def test_crash_loop_backs_off_then_starts() -> None:
    crashed = RUNNING.but(crashes=2)
    first = decide(DESIRED, crashed, domain(DomainState.SHUTOFF, "crashed"), NOW)
    assert first.actions == () and first.progress.crashes == 3
    assert first.hold == Observed("Stopped", "CrashLoopBackOff", "crashed 3 times; next start in 20s")
    assert first.retry_after == NOW + timedelta(seconds=20) and first.requeue == 20
    waited = decide(
        DESIRED, first.progress, domain(DomainState.SHUTOFF, "crashed"), NOW + timedelta(seconds=21)
    )
    assert waited.actions == (Act.START,) and waited.requeue == STABLE_AFTER


def test_a_start_clears_the_backoff_and_a_long_run_the_count() -> None:
    looping = RUNNING.but(running=False, crashes=4, retry_at=NOW + timedelta(minutes=2))
    plan = decide(desired(intent={"retry": 1}), looping, domain(DomainState.SHUTOFF, "crashed"), NOW)
    assert plan.actions == (Act.START,) and plan.progress.crashes == 0 and plan.progress.retry_done == 1
    stable = RUNNING.but(crashes=2, last_start_at=NOW - timedelta(seconds=STABLE_AFTER + 1))
    assert decide(DESIRED, stable, domain(DomainState.RUNNING), NOW).progress.crashes == 0


# -- one-shot requests ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("intent", "state", "actions", "done"),
    [
        ({"restart": 1}, DomainState.RUNNING, (Act.POWER_OFF, Act.START), "restart_done"),
        ({"restart": 1}, DomainState.SHUTOFF, (Act.START,), "restart_done"),
        ({"soft_reboot": 1}, DomainState.RUNNING, (Act.REBOOT,), "soft_reboot_done"),
        ({"soft_reboot": 1}, DomainState.PAUSED, (), "soft_reboot_done"),
        ({"pause": 1, "paused": True}, DomainState.RUNNING, (Act.SUSPEND,), "pause_done"),
        ({"pause": 2, "paused": False}, DomainState.PAUSED, (Act.RESUME,), "pause_done"),
        ({"pause": 1, "paused": False}, DomainState.RUNNING, (), "pause_done"),
    ],
)
def test_requests_act_once_per_increment(
    intent: dict[str, object], state: DomainState, actions: tuple[Act, ...], done: str
) -> None:
    want = desired(intent=intent)
    plan = decide(want, RUNNING, domain(state, "user"), NOW)
    assert plan.actions == actions
    assert getattr(plan.progress, done) == max(v for v in intent.values() if isinstance(v, int))
    again = decide(want, plan.progress, plan.domain, NOW)
    assert again.actions == ()


# -- stopping ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("intent", "asked_ago", "state", "actions", "requeue"),
    [
        ({"power": "Stopped"}, None, DomainState.RUNNING, (Act.SHUT_DOWN,), STOPPING_POLL),
        ({"power": "Stopped"}, 10, DomainState.RUNNING, (), STOPPING_POLL),
        ({"power": "Stopped"}, 30, DomainState.RUNNING, (Act.POWER_OFF,), None),
        ({"power": "Stopped", "grace_period_seconds": 5}, 6, DomainState.RUNNING, (Act.POWER_OFF,), None),
        ({"power": "Stopped", "force": True}, None, DomainState.RUNNING, (Act.POWER_OFF,), None),
        ({"power": "Stopped", "grace_period_seconds": 0}, None, DomainState.RUNNING, (Act.POWER_OFF,), None),
        ({"power": "Stopped"}, None, DomainState.PAUSED, (Act.POWER_OFF,), None),
        ({"power": "Stopped"}, None, DomainState.SHUTOFF, (), None),
    ],
)
def test_stop_is_graceful_within_the_grace_period(
    intent: dict[str, object],
    asked_ago: int | None,
    state: DomainState,
    actions: tuple[Act, ...],
    requeue: float | None,
) -> None:
    asked = None if asked_ago is None else NOW - timedelta(seconds=asked_ago)
    plan = decide(desired(intent=intent), RUNNING.but(stop_started_at=asked), domain(state), NOW)
    assert plan.actions == actions and plan.requeue == requeue
    off = plan.domain is not None and plan.domain.state is DomainState.SHUTOFF
    assert (plan.progress.stop_started_at is None) == off
    assert not plan.progress.running


# -- definition ----------------------------------------------------------------------------------------
def test_defines_when_missing_or_stale_and_never_touches_another_owner() -> None:
    fresh = decide(DESIRED, InstanceProgress(), None, NOW)
    assert fresh.actions == (Act.DEFINE, Act.START)
    assert (fresh.progress.domain, fresh.progress.defined_generation) == (DESIRED.domain, 1)
    assert fresh.progress.volumes == ("data", "root")
    stale = decide(replace(DESIRED, generation=2), RUNNING, domain(DomainState.RUNNING), NOW)
    assert stale.actions == (Act.DEFINE,) and stale.progress.defined_generation == 2  # applies at next boot
    other = decide(DESIRED, RUNNING, domain(DomainState.RUNNING, uid="another"), NOW)
    assert other.actions == () and other.requeue == CONFIG_RETRY
    assert other.hold is not None and other.hold.reason == "DomainNameConflict"


CLEAN_UP = (Act.UNDEFINE, Act.DELETE_VOLUMES, Act.REMOVE_MDEVS)


# -- deletion ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("grace", "asked_ago", "found", "actions", "waits"),
    [
        (30, None, domain(DomainState.RUNNING), (Act.SHUT_DOWN,), True),
        (30, 5, domain(DomainState.RUNNING), (), True),
        (30, 31, domain(DomainState.RUNNING), (Act.POWER_OFF, *CLEAN_UP), False),
        (0, None, domain(DomainState.RUNNING), (Act.POWER_OFF, *CLEAN_UP), False),
        (30, None, domain(DomainState.SHUTOFF), CLEAN_UP, False),
        (30, None, None, CLEAN_UP[1:], False),
        (30, None, domain(DomainState.RUNNING, uid="another"), CLEAN_UP[1:], False),
    ],
)
def test_teardown(
    grace: int, asked_ago: int | None, found: DomainInfo | None, actions: tuple[Act, ...], waits: bool
) -> None:
    asked = None if asked_ago is None else NOW - timedelta(seconds=asked_ago)
    want = replace(DESIRED, grace_period_seconds=grace, deleting=True)
    plan = decide_teardown(want, RUNNING.but(stop_started_at=asked), found, NOW)
    assert plan.actions == actions and (plan.hold is not None) == waits


# -- reports -------------------------------------------------------------------------------------------
def test_agent_and_migratability_in_the_report() -> None:
    plan = decide(DESIRED, RUNNING, domain(DomainState.RUNNING), NOW)
    connected = report(DESIRED, plan, domain(DomainState.RUNNING), True)
    assert (connected.agent, connected.live_migratable) == ("True", True)
    assert requeue_after(plan, connected) == GUEST_REFRESH
    no_guests = report(DESIRED, plan, domain(DomainState.RUNNING), None)
    assert (no_guests.agent, no_guests.agent_reason) == ("Unknown", "NoGuestAgentOnTestDriver")
    passthrough = report(replace(DESIRED, passthrough=True), plan, domain(DomainState.SHUTOFF), False)
    assert (passthrough.agent_reason, passthrough.migratable_reason) == (
        "DomainNotRunning",
        "HostDeviceNotLiveMigratable",
    )
    assert placed(None, "0/1 nodes can run it: n1: not Ready") == Observed(
        "Failed", "Unschedulable", "0/1 nodes can run it: n1: not Ready"
    )


@pytest.mark.parametrize(
    ("observed_ago", "refreshed", "asked", "connected", "started_ago", "due"),
    [
        (None, 0, 0, True, 100, True),  # never reported
        (10, 0, 0, True, 100, False),
        (GUEST_REFRESH + 1, 0, 0, True, 100, True),  # a minute old
        (10, 0, 1, True, 100, True),  # a refresh asked
        (10, 1, 1, True, 100, False),  # ... and answered
        (10, 0, 0, False, 5, True),  # the agent connected in a new run: a new boot
        (10, 0, 0, False, 100, False),  # reconnected after a pause in the same run: nothing new to see
    ],
)
def test_guest_reports_are_refreshed_when_due(
    observed_ago: float | None, refreshed: int, asked: int, connected: bool, started_ago: float, due: bool
) -> None:
    observed_at = None if observed_ago is None else NOW - timedelta(seconds=observed_ago)
    intent = InstanceIntent(guest_refresh=asked)
    progress = RUNNING.but(last_start_at=NOW - timedelta(seconds=started_ago))
    assert guest_report_due(observed_at, refreshed, intent, progress, connected, NOW) == due


def test_a_report_without_the_os_is_asked_again_early_in_the_run() -> None:
    """An agent that answered while its guest was booting may leave sections out (libvirt skips a command
    that timed out): such a report is due again at once, for the first minutes of the run only."""
    progress = RUNNING.but(last_start_at=NOW - timedelta(seconds=20))
    partial: dict[str, Any] = {"osInfo": {}, "hostname": "vm", "observedAt": "x"}
    assert report_incomplete(partial, progress, NOW)
    assert not report_incomplete({**partial, "osInfo": {"id": "debian"}}, progress, NOW)
    assert not report_incomplete(partial, progress, NOW + INCOMPLETE_REPORT_WAIT)  # an agent that never says
