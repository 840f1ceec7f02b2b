"""The phase table: every phase, its legal actions, and its README rendering."""

from __future__ import annotations

import typing

from app.schemas.instance import InstancePhase
from app.schemas.phases import PHASES, Action, legal_actions, phase_table_markdown


def test_the_phase_table_covers_every_phase_with_the_contracts_actions() -> None:
    assert set(PHASES) == set(typing.get_args(InstancePhase))
    contract = {
        "Pending": {"stop", "delete"},
        "Scheduling": {"stop", "delete"},
        "Scheduled": {"start", "stop", "delete"},
        "Starting": {"stop", "delete"},
        "Running": {"pause", "stop", "restart", "softreboot", "migrate", "delete"},
        "Paused": {"unpause", "stop", "delete"},
        "Migrating": {"cancel-migration", "delete"},
        "Stopping": {"stop", "delete"},
        "Stopped": {"start", "delete"},
        "Failed": {"start", "delete"},
        "Unknown": {"delete"},
        "Terminating": set(),
    }
    assert {name: {a.value for a in legal_actions(name)} for name in PHASES} == contract
    assert legal_actions("NoSuchPhase") == (Action.DELETE,)
    table = phase_table_markdown()
    assert all(f"| {name} |" in table for name in PHASES)
