"""The instance reconciler's decisions, as pure functions: given what the user asked (spec and intent), what
the worker remembers (progress), what libvirt reports of the domain and the time, which actions to take and
what to remember. No I/O here: the reconciler observes, calls `decide`, and carries the actions out.

A plan lists its actions in the order they run; `decide` follows the domain's state through them as libvirt
would leave it (a power-off leaves it off, a start running), so later decisions in the same pass see it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from app.controllers.instance_status import STOP_REASONS, Observed, phase_of
from app.controllers.volumes import volume_names
from app.schemas.common import JsonObject
from app.schemas.records import InstanceIntent, InstanceProgress, MigrationLock
from app.virt.driver import DomainInfo, DomainState, NicAddress

log = logging.getLogger(__name__)
# The domain is on: a QEMU process exists (running, paused, shutting down or suspended to RAM).
POWERED = frozenset(
    {
        DomainState.RUNNING,
        DomainState.BLOCKED,
        DomainState.PAUSED,
        DomainState.SHUTDOWN,
        DomainState.PMSUSPENDED,
    }
)
CRASH_BACKOFF_BASE = 10.0
CRASH_BACKOFF_MAX = 300.0
STABLE_AFTER = 60.0  # a run this long resets the crash count
STOPPING_POLL = 1.0
UNSCHEDULABLE_RETRY = 5.0
CONFIG_RETRY = 30.0  # a missing image or a name conflict: someone must act; look again now and then
GUEST_REFRESH = 60.0  # seconds between guest agent reports while it stays connected
# An agent that answers while its guest is still booting may leave sections out (libvirt skips a command that
# timed out): such a report is asked for again this soon, for this long after the start.
INCOMPLETE_REPORT_RETRY = 2.0
INCOMPLETE_REPORT_WAIT = timedelta(minutes=2)
NODE_RETRY = 10.0
KEYS_RETRY = 5.0  # the guest refused SSH keys (its user may not exist yet)
LEASE_POLL = 1.0
LEASE_WAIT = timedelta(minutes=2)


class Act(StrEnum):
    """What the reconciler can do to a domain and its volumes."""

    DEFINE = "define"  # volumes and domain definition, from the spec (applies at the next boot)
    POWER_OFF = "power-off"
    SHUT_DOWN = "shut-down"  # through the guest agent when connected, else ACPI; a refusal powers off
    REBOOT = "reboot"  # the guest's own reboot, through the agent or ACPI
    SUSPEND = "suspend"
    RESUME = "resume"
    START = "start"  # the instance's mediated devices are created first, where the host makes them
    UNDEFINE = "undefine"
    DELETE_VOLUMES = "delete-volumes"
    REMOVE_MDEVS = "remove-mdevs"


# What libvirt reports once an action has run: (state, reason).
_LEAVES = {
    Act.POWER_OFF: (DomainState.SHUTOFF, "destroyed"),
    Act.START: (DomainState.RUNNING, "booted"),
    Act.SUSPEND: (DomainState.PAUSED, "user"),
    Act.RESUME: (DomainState.RUNNING, "unpaused"),
}


@dataclass(frozen=True)
class Desired:
    """An instance as the decisions need it."""

    uid: str
    node: str
    domain: str
    generation: int
    run_strategy: str
    grace_period_seconds: int  # the spec's
    intent: InstanceIntent
    volumes: tuple[str, ...] = ()  # volume names this spec defines (remembered for deletion)
    passthrough: bool = False  # host devices: not live-migratable
    deleting: bool = False
    migration: MigrationLock | None = None


@dataclass(frozen=True)
class Plan:
    actions: tuple[Act, ...]
    progress: InstanceProgress
    intent: InstanceIntent
    domain: DomainInfo | None  # as libvirt should report it once the actions ran
    requeue: float | None = None
    hold: Observed | None = None  # report this, not the domain's state (a crash-loop wait, a conflict)
    retry_after: datetime | None = None  # when a crash-looping instance starts again


@dataclass
class _Draft:
    """A plan being built: each step sees the domain as the earlier steps leave it."""

    desired: Desired
    progress: InstanceProgress
    intent: InstanceIntent
    domain: DomainInfo
    now: datetime
    actions: tuple[Act, ...] = ()
    requeue: float | None = None

    @property
    def state(self) -> DomainState:
        return self.domain.state

    def do(self, act: Act) -> None:
        self.actions += (act,)
        if act in _LEAVES:
            state, reason = _LEAVES[act]
            self.domain = replace(self.domain, state=state, reason=reason)

    def remember(self, **changes: object) -> None:
        self.progress = self.progress.but(**changes)

    def plan(self, **extra: object) -> Plan:
        fields = {"requeue": self.requeue, **extra}
        return Plan(self.actions, self.progress, self.intent, self.domain, **fields)  # type: ignore[arg-type]


def crash_backoff(crashes: int) -> float:
    """Seconds before restarting after the n-th crash in a row: at once, then 10 s, 20 s, ... 5 min."""
    if crashes <= 1:
        return 0.0
    return float(min(CRASH_BACKOFF_BASE * 2 ** (crashes - 2), CRASH_BACKOFF_MAX))


def definition_stale(desired: Desired, progress: InstanceProgress) -> bool:
    """The spec changed since the domain was defined: define again (applies at the next boot)."""
    return progress.defined_generation is not None and progress.defined_generation != desired.generation


def decide(desired: Desired, progress: InstanceProgress, domain: DomainInfo | None, now: datetime) -> Plan:
    """The actions that drive a placed instance's domain toward its desired power state."""
    if domain is not None and domain.uuid != desired.uid:
        message = f"node {desired.node} has a domain {desired.domain!r} of another owner ({domain.uuid})"
        conflict = Observed("Failed", "DomainNameConflict", message)
        return Plan((), progress, desired.intent, domain, requeue=CONFIG_RETRY, hold=conflict)
    unknown = DomainInfo(desired.domain, desired.uid, DomainState.SHUTOFF, "unknown")
    draft = _Draft(desired, progress, desired.intent, domain or unknown, now)
    if domain is None or definition_stale(desired, progress):
        draft.do(Act.DEFINE)
        volumes = volume_names(desired.volumes, progress)
        draft.remember(domain=desired.domain, defined_generation=desired.generation, volumes=volumes)
    _after_unasked_stop(draft)
    _one_shot_requests(draft)
    if draft.intent.power == "Running":
        return _toward_running(draft)
    _toward_stopped(draft)
    return draft.plan()


def _after_unasked_stop(draft: _Draft) -> None:
    """A run that ended without Corral asking: the runStrategy decides what follows."""
    if draft.state in POWERED or not draft.progress.running:
        return
    crashed = draft.domain.reason != "shutdown"
    strategy = draft.desired.run_strategy
    restart = strategy == "Always" or (strategy == "RerunOnFailure" and crashed)
    draft.remember(running=False, stop_reason=STOP_REASONS.get(draft.domain.reason, "Stopped"))
    if crashed and restart:
        crashes = draft.progress.crashes + 1
        draft.remember(crashes=crashes, retry_at=draft.now + timedelta(seconds=crash_backoff(crashes)))
    if not restart:
        draft.intent = draft.intent.but(power="Stopped")
        draft.remember(failed_run=crashed and strategy == "Once")
    outcome = "restart" if restart else "stay stopped"
    log.info(
        "%s: stopped by itself (%s); runStrategy %s: %s",
        draft.desired.domain,
        draft.domain.reason,
        strategy,
        outcome,
    )


def _one_shot_requests(draft: _Draft) -> None:
    """Restart, soft reboot, pause and retry requests are counters: act once per increment."""
    intent, progress = draft.intent, draft.progress
    if intent.restart > progress.restart_done:
        if draft.state in POWERED:
            draft.do(Act.POWER_OFF)  # the start below boots it again
        draft.remember(restart_done=intent.restart, retry_at=None)
    if intent.soft_reboot > progress.soft_reboot_done:
        if draft.state is DomainState.RUNNING:
            draft.do(Act.REBOOT)
        draft.remember(soft_reboot_done=intent.soft_reboot)
    if intent.pause > progress.pause_done:
        if intent.paused and draft.state is DomainState.RUNNING:
            draft.do(Act.SUSPEND)
        elif not intent.paused and draft.state is DomainState.PAUSED:
            draft.do(Act.RESUME)
        draft.remember(pause_done=intent.pause)
    if intent.retry > progress.retry_done:
        draft.remember(retry_done=intent.retry, retry_at=None, crashes=0, failed_run=False)


def _toward_running(draft: _Draft) -> Plan:
    draft.remember(stop_started_at=None)
    now = draft.now
    if draft.state not in POWERED:
        retry_at = draft.progress.retry_at
        if retry_at is not None and retry_at > now:
            wait = (retry_at - now).total_seconds()
            message = f"crashed {draft.progress.crashes} times; next start in {wait:.0f}s"
            draft.requeue = wait
            return draft.plan(hold=Observed("Stopped", "CrashLoopBackOff", message), retry_after=retry_at)
        draft.do(Act.START)
        draft.remember(running=True, ever_started=True, last_start_at=now, retry_at=None, stop_reason=None)
    elif not (draft.progress.running and draft.progress.ever_started):
        # A worker killed between its start and the write of its progress: the run is ours all the same,
        # or a later stop would report Scheduled and a guest shutdown would not count as one.
        draft.remember(running=True, ever_started=True, last_start_at=draft.progress.last_start_at or now)
    started = draft.progress.last_start_at
    if draft.progress.crashes and started and (now - started).total_seconds() > STABLE_AFTER:
        draft.remember(crashes=0)
    elif draft.progress.crashes:
        draft.requeue = STABLE_AFTER  # to reset the count once the run has lasted
    return draft.plan()


def _toward_stopped(draft: _Draft) -> None:
    if draft.state in POWERED:
        draft.remember(running=False)
        grace = draft.intent.grace_period_seconds
        grace = draft.desired.grace_period_seconds if grace is None else grace
        asked = draft.progress.stop_started_at
        if draft.intent.force or grace == 0 or draft.state is not DomainState.RUNNING:
            draft.do(Act.POWER_OFF)
        elif asked is None:
            draft.do(Act.SHUT_DOWN)
            draft.remember(stop_started_at=draft.now)
            draft.requeue = STOPPING_POLL
        elif (draft.now - asked).total_seconds() >= grace:
            log.info("%s: still running %ss after shutdown; powering off", draft.desired.domain, grace)
            draft.do(Act.POWER_OFF)
        else:
            draft.requeue = STOPPING_POLL
    if draft.state not in POWERED:
        draft.remember(stop_started_at=None)


def decide_teardown(
    desired: Desired, progress: InstanceProgress, domain: DomainInfo | None, now: datetime
) -> Plan:
    """Deletion: power off (gracefully within the spec's grace period), undefine, delete the volumes and
    mediated devices. A plan with `hold` waits for the guest to shut down; otherwise the row goes after it."""
    ours = domain if domain is not None and domain.uuid == desired.uid else None  # never another's domain
    draft = _Draft(
        desired, progress, desired.intent, ours or DomainInfo("", "", DomainState.SHUTOFF, ""), now
    )
    if ours is not None and ours.state in POWERED:
        grace = desired.grace_period_seconds
        asked = progress.stop_started_at
        if grace == 0 or desired.intent.force or ours.state is not DomainState.RUNNING:
            draft.do(Act.POWER_OFF)
        elif asked is None:
            draft.do(Act.SHUT_DOWN)
            draft.remember(stop_started_at=now, running=False)
            draft.requeue = STOPPING_POLL
            return draft.plan(hold=Observed("Terminating", "ShuttingDown"))
        elif (now - asked).total_seconds() < grace:
            draft.requeue = STOPPING_POLL
            return draft.plan(hold=Observed("Terminating", "ShuttingDown"))
        else:
            draft.do(Act.POWER_OFF)
    if ours is not None:
        draft.do(Act.UNDEFINE)
    draft.do(Act.DELETE_VOLUMES)
    draft.do(Act.REMOVE_MDEVS)
    return draft.plan()


def report(desired: Desired, plan: Plan, domain: DomainInfo, agent: bool | None) -> Observed:
    """What the status says once the plan ran and libvirt was asked again. `agent`: whether the guest agent
    is connected, None where the backend runs no guests."""
    power = plan.intent.power
    stopping = power == "Stopped" and domain.state in POWERED
    phase, reason = phase_of(domain, stopping=stopping, ever_started=plan.progress.ever_started)
    if phase == "Stopped":
        # Who stopped it matters more than libvirt's reason: a stop Corral performed was the user's.
        reason = plan.progress.stop_reason or ("StoppedByUser" if power == "Stopped" else reason)
        if plan.progress.failed_run:
            phase = "Failed"
    running = domain.state is DomainState.RUNNING
    if running and agent is None:
        agent_status, agent_reason = "Unknown", "NoGuestAgentOnTestDriver"  # its domains run no guest
    else:
        agent_status = "True" if running and agent else "False"
        agent_reason = "AgentNotConnected" if running else "DomainNotRunning"
    return Observed(
        phase,
        reason,
        agent=agent_status,
        agent_reason=agent_reason,
        live_migratable=not desired.passthrough,
        migratable_reason="HostDeviceNotLiveMigratable" if desired.passthrough else "Migratable",
    )


def requeue_after(plan: Plan, observed: Observed) -> float | None:
    """When to look again: the plan's wish, and at least every GUEST_REFRESH while the agent answers."""
    if observed.agent == "True":
        return min(plan.requeue or GUEST_REFRESH, GUEST_REFRESH)
    return plan.requeue


def lease_recheck(
    nics: list[NicAddress], phase: str, started: datetime | None, now: datetime
) -> float | None:
    """DHCP leases come with no libvirt event: while a running guest's NIC has no address yet, and not for
    longer than LEASE_WAIT after its start, look again after LEASE_POLL."""
    waiting = phase == "Running" and any(not nic.addresses for nic in nics)
    if waiting and started is not None and now - started < LEASE_WAIT:
        return LEASE_POLL
    return None


def placed(node: str | None, why_not: str) -> Observed:
    """Scheduling once placement chose a node; Failed/Unschedulable with every node's reason otherwise."""
    return Observed("Scheduling", "Scheduled") if node else Observed("Failed", "Unschedulable", why_not)


def disks_not_ready(
    data_volumes: dict[str, tuple[str | None, str]], wanted: list[str]
) -> Observed | str | None:
    """Where the instance's DataVolumes pin it: (None) anywhere, (a node's name), or what it waits for
    (Pending/DataVolumeNotReady) or why it cannot run (Failed/Unschedulable). `data_volumes`: name ->
    (node, phase) of those that exist."""
    waiting = [f"{name} does not exist" for name in wanted if name not in data_volumes]
    waiting += [
        f"{name} is {phase}" for name, (_, phase) in sorted(data_volumes.items()) if phase != "Succeeded"
    ]
    if waiting:
        return Observed("Pending", "DataVolumeNotReady", "DataVolume " + "; ".join(waiting))
    nodes = sorted({str(node) for node, _ in data_volumes.values()})
    if len(nodes) > 1:
        return Observed(
            "Failed", "Unschedulable", f"its DataVolumes are on different nodes ({', '.join(nodes)})"
        )
    return nodes[0] if nodes else None


def unreachable(message: str, *, deleting: bool = False) -> Observed:
    """The node's libvirt does not answer: the last known state stays, nothing is deleted."""
    return Observed("Terminating" if deleting else "Unknown", "NodeUnreachable", message[:300])


def while_migrating(desired: Desired, agent: str) -> Observed:
    """A migration owns the domain until it finishes: report it, never act (a delete waits for its abort)."""
    assert desired.migration is not None
    lock = desired.migration
    if desired.deleting:
        return Observed(
            "Terminating", "WaitingForMigration", f"aborting migration {lock.name} first", agent=agent
        )
    message = f"migration {lock.name} to node {lock.target}"
    return Observed("Migrating", "Migrating", message, agent=agent, agent_reason="AgentNotConnected")


def report_incomplete(report: JsonObject, progress: InstanceProgress, now: datetime) -> bool:
    """A report early in the run that does not say what the guest OS is: the agent answered too soon."""
    started = progress.last_start_at
    early = started is not None and now - started < INCOMPLETE_REPORT_WAIT
    return early and not report.get("osInfo")


def guest_report_due(
    observed_at: datetime | None,
    refreshed: int,
    intent: InstanceIntent,
    progress: InstanceProgress,
    was_connected: bool,
    now: datetime,
) -> bool:
    """Report again when a refresh was asked, the last report is a minute old, or the agent just connected
    in a run the last report predates. An agent that reconnects after a pause in the same run finds the
    guest as it was: reporting then would only hold the pass (a pause during the report waits out the
    agent)."""
    asked = intent.guest_refresh > refreshed
    fresh = observed_at is not None and (now - observed_at).total_seconds() < GUEST_REFRESH
    started = progress.last_start_at
    new_run = observed_at is None or (started is not None and observed_at < started)
    return asked or not fresh or (not was_connected and new_run)
