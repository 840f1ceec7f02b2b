"""The instance state machine: every phase, how libvirt leads in and out of it, and the legal actions.

One table, read by the API (an illegal action answers 409 with the legal ones), by the reconciler (which
phase an observed libvirt state means), by the README and by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"
    SOFTREBOOT = "softreboot"
    PAUSE = "pause"
    UNPAUSE = "unpause"
    MIGRATE = "migrate"
    CANCEL_MIGRATION = "cancel-migration"
    DELETE = "delete"


@dataclass(frozen=True)
class Phase:
    name: str
    meaning: str
    enters_from: str  # what moves an instance into this phase (libvirt states and events, or Corral)
    actions: tuple[Action, ...]


A = Action
PHASES: dict[str, Phase] = {
    p.name: p
    for p in (
        Phase("Pending", "accepted, not placed yet", "create", (A.STOP, A.DELETE)),
        Phase(
            "Scheduling",
            "choosing a node (capacity, devices, nodeSelector)",
            "the worker's first pass",
            (A.STOP, A.DELETE),
        ),
        Phase(
            "Scheduled",
            "domain defined on the node, not started",
            "node chosen; defineXML done (DEFINED)",
            (A.START, A.STOP, A.DELETE),
        ),
        Phase("Starting", "domain starting", "create() issued; PAUSED/starting up", (A.STOP, A.DELETE)),
        Phase(
            "Running",
            "domain running",
            "RUNNING (STARTED, RESUMED)",
            (A.PAUSE, A.STOP, A.RESTART, A.SOFTREBOOT, A.MIGRATE, A.DELETE),
        ),
        Phase(
            "Paused",
            "vCPUs paused (reason: user, I/O error, ...)",
            "PAUSED (SUSPENDED), not by a migration",
            (A.UNPAUSE, A.STOP, A.DELETE),
        ),
        Phase(
            "Migrating",
            "live migration in flight",
            "a migration job; PAUSED/migration",
            (A.CANCEL_MIGRATION, A.DELETE),
        ),
        Phase(
            "Stopping",
            "shutdown requested: ACPI or agent, forced after the grace period",
            "stop action; SHUTDOWN (being shut down)",
            (A.STOP, A.DELETE),
        ),
        Phase(
            "Stopped",
            "domain defined, not running",
            "SHUTOFF that the runStrategy leaves off",
            (A.START, A.DELETE),
        ),
        Phase(
            "Failed",
            "cannot run: unschedulable, image missing, libvirt error, crashed (Once)",
            "a pass that cannot proceed; SHUTOFF/crashed with runStrategy Once",
            (A.START, A.DELETE),
        ),
        Phase(
            "Unknown",
            "node unreachable; last known state kept, nothing deleted",
            "the node's libvirt does not answer",
            (A.DELETE,),
        ),
        Phase("Terminating", "deletion in progress", "delete", ()),
    )
}


def legal_actions(phase: str) -> tuple[Action, ...]:
    return PHASES[phase].actions if phase in PHASES else (A.DELETE,)


def phase_table_markdown() -> str:
    rows = ["| phase | meaning | entered by | legal actions |", "|---|---|---|---|"]
    for phase in PHASES.values():
        actions = ", ".join(a.value for a in phase.actions) or "none"
        rows.append(f"| {phase.name} | {phase.meaning} | {phase.enters_from} | {actions} |")
    return "\n".join(rows)
