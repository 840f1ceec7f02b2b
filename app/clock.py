"""The wall clock, in one place. Reconcilers take a `Clock` so tests can move time instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(at: datetime) -> str:
    """A UTC instant as the API shows it: `2026-12-01T22:13:29.123456Z`."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
