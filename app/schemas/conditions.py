"""Reading and setting status conditions (lastTransitionTime moves only when the status flips)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.clock import rfc3339


def find_condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def condition_true(status: dict[str, Any], kind: str) -> bool:
    found = find_condition(status, kind)
    return found is not None and found.get("status") == "True"


def set_condition(
    status: dict[str, Any], kind: str, value: str, reason: str, message: str, at: datetime
) -> None:
    conditions: list[dict[str, Any]] = status.setdefault("conditions", [])
    current = find_condition(status, kind)
    stamp = rfc3339(at)
    if current is None:
        conditions.append(
            {"type": kind, "status": value, "reason": reason, "message": message, "lastTransitionTime": stamp}
        )
        return
    if current.get("status") != value:
        current["lastTransitionTime"] = stamp
    current.update(status=value, reason=reason, message=message)
