"""The worker's records: what the API asks of the worker (intent) and what the worker remembers between
passes (progress), per kind. The database keeps them as JSON (camelCase keys); Python sees only these models,
read with `load` and written with `dump`. Counters (restart, pause, ...) are one-shot requests: the worker
acts once per increment and remembers the last one it acted on.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Power = Literal["Running", "Stopped"]
RUN_AT_CREATE = frozenset({"Always", "RerunOnFailure", "Once"})


class Record(BaseModel):
    # Unknown keys (written by another version) are ignored rather than refused: a record is never user input.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    @classmethod
    def load(cls, data: Mapping[str, Any] | None) -> Self:
        return cls.model_validate(data or {})

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_defaults=True)

    def but(self, **changes: Any) -> Self:
        """A copy with `changes` (field names), validated like a loaded record."""
        return self.model_validate({**self.model_dump(), **changes})

    def rebased(self, *, before: Self, onto: Self) -> Self:
        """This record's changes since `before`, applied onto `onto` (what another writer stored since)."""
        changed = {
            name: getattr(self, name)
            for name in type(self).model_fields
            if getattr(self, name) != getattr(before, name)
        }
        return onto.but(**changed) if changed else onto


class InstanceIntent(Record):
    """What the user asked of an instance: its power state and one-shot requests."""

    power: Power = "Running"
    restart: int = 0
    soft_reboot: int = 0
    pause: int = 0
    paused: bool = False  # what the last pause request asked for: paused (pause) or running (unpause)
    retry: int = 0  # a start clears a crash-loop backoff
    force: bool = False  # stop by powering off at once
    grace_period_seconds: int | None = None  # the last stop's, over the spec's
    guest_refresh: int = 0  # ask the guest agent for a fresh report
    requested_at: datetime | None = None

    @classmethod
    def at_create(cls, run_strategy: str) -> InstanceIntent:
        return cls(power="Running" if run_strategy in RUN_AT_CREATE else "Stopped")

    def for_run_strategy(self, strategy: str) -> InstanceIntent:
        """Halted means stopped and Always means running, whatever the last action said (KubeVirt's VM)."""
        if strategy == "Halted":
            return self.but(power="Stopped")
        if strategy == "Always":
            return self.but(power="Running", force=False)
        return self

    def pause_requested(self, paused: bool, at: datetime) -> InstanceIntent:
        return self.but(pause=self.pause + 1, paused=paused, requested_at=at)


class MigrationLock(Record):
    """The unfinished migration that holds an instance: the instance reconciler leaves its domain alone."""

    uid: str
    name: str
    target: str


class InstanceProgress(Record):
    """What the instance reconciler did and saw, kept so a new worker resumes where the last one stopped."""

    domain: str | None = None  # the domain's name, fixed at the first definition (a claim renames instances)
    defined_generation: int | None = None
    volumes: tuple[str, ...] = ()  # every volume name ever defined, so deletion finds them all
    running: bool = False  # Corral started the domain and did not stop it
    ever_started: bool = False
    last_start_at: datetime | None = None
    stop_reason: str | None = None  # why the last run ended, when the guest stopped by itself
    crashes: int = 0  # in a row, for the crash-loop backoff
    retry_at: datetime | None = None  # no start before this (crash-loop backoff)
    failed_run: bool = False  # runStrategy Once and the run crashed: phase Failed
    stop_started_at: datetime | None = None  # when the graceful shutdown was asked
    restart_done: int = 0
    soft_reboot_done: int = 0
    pause_done: int = 0
    retry_done: int = 0
    migration: MigrationLock | None = None
    # The SSH keys the guest agent wrote, per guest user (accessCredentials), so a key the Secret no longer
    # holds is removed, and keys the guest got otherwise (cloud-init) are left alone.
    agent_keys: dict[str, tuple[str, ...]] = Field(default_factory=dict)


class MigrationIntent(Record):
    abort: bool = False
    abort_requested_at: datetime | None = None
