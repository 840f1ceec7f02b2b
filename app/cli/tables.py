"""What `corral get` shows of each kind: its columns (more with `-o wide`), ages as people read them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

Item = dict[str, Any]
Column = tuple[str, Callable[[Item], str]]


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """kubectl's style: 45s, 12m, 5h, 3d."""
    if not timestamp:
        return ""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    for limit, unit, size in ((120, "s", 1), (2 * 3600, "m", 60), (48 * 3600, "h", 3600)):
        if seconds < limit:
            return f"{seconds // size}{unit}"
    return f"{seconds // 86400}d"


def _status(item: Item) -> Item:
    return item.get("status") or {}


def _spec(item: Item) -> Item:
    return item.get("spec") or {}


def _condition(kind: str) -> Callable[[Item], str]:
    def value(item: Item) -> str:
        found: Item = next((c for c in _status(item).get("conditions", []) if c.get("type") == kind), {})
        return str(found.get("status", ""))

    return value


def _field(*path: str) -> Callable[[Item], str]:
    def value(item: Item) -> str:
        found: Any = item
        for key in path:
            found = found.get(key) if isinstance(found, dict) else None
        return "" if found is None else str(found)

    return value


def _address(item: Item) -> str:
    return next((n["ipAddress"] for n in _status(item).get("interfaces", []) if n.get("ipAddress")), "")


def _migration_progress(item: Item) -> str:
    state = _status(item).get("migrationState") or {}
    total, done = state.get("dataTotalBytes"), state.get("dataProcessedBytes")
    return f"{100 * done / total:.0f}%" if total and done is not None else ""


def _network_type(item: Item) -> str:
    spec = _spec(item)
    if "bridge" in spec:
        return f"bridge {spec['bridge'].get('name', '')}"
    return f"nat {(spec.get('nat') or {}).get('cidr', '')}"


NAME: Column = ("NAME", lambda item: str(item["metadata"]["name"]))
AGE: Column = ("AGE", lambda item: age(item["metadata"].get("creationTimestamp")))
PHASE: Column = ("PHASE", _field("status", "phase"))
NODE: Column = ("NODE", _field("status", "nodeName"))

COLUMNS: dict[str, tuple[Sequence[Column], Sequence[Column]]] = {
    # plural: (columns, more columns for -o wide)
    "instances": (
        [
            NAME,
            PHASE,
            ("NODE", _field("status", "nodeName")),
            ("IP", _address),
            ("READY", _condition("Ready")),
            AGE,
        ],
        [("AGENT", _condition("AgentConnected")), ("DOMAIN", _field("status", "domainName"))],
    ),
    "pools": (
        [
            NAME,
            ("DESIRED", _field("status", "replicas")),
            ("READY", _field("status", "readyReplicas")),
            ("AVAILABLE", _field("status", "availableReplicas")),
            ("CLAIMED", _field("status", "claimed")),
            AGE,
        ],
        [("WARMING", _field("status", "warming")), ("UPDATED", _field("status", "updatedReplicas"))],
    ),
    "migrations": (
        [
            NAME,
            ("VMI", _field("spec", "vmiName")),
            PHASE,
            ("SOURCE", _field("status", "migrationState", "sourceNode")),
            ("TARGET", _field("status", "migrationState", "targetNode")),
            ("PROGRESS", _migration_progress),
            AGE,
        ],
        [("MODE", _field("status", "migrationState", "mode")), ("REASON", _field("status", "reason"))],
    ),
    "datavolumes": (
        [
            NAME,
            PHASE,
            ("PROGRESS", _field("status", "progress")),
            ("NODE", _field("status", "nodeName")),
            AGE,
        ],
        [("CAPACITY", _field("status", "capacity"))],
    ),
    "nodes": (
        [NAME, ("STATUS", _field("status", "phase")), ("READY", _condition("Ready")), AGE],
        [("URI", _field("spec", "uri"))],
    ),
    "devices": (
        [
            NAME,
            ("NODE", _field("spec", "nodeName")),
            ("RESOURCE", _field("status", "resourceName")),
            ("HOLDER", _field("status", "holder")),
        ],
        [("DRIVER", _field("status", "driver")), ("IOMMU", _field("status", "iommuGroup"))],
    ),
    "secrets": (
        [NAME, ("TYPE", _field("type")), ("DATA", lambda item: str(len(item.get("data") or {}))), AGE],
        [],
    ),
    "networks": ([NAME, ("NETWORK", _network_type), AGE], []),
}


def table(
    plural: str,
    items: Sequence[Item],
    *,
    wide: bool = False,
    namespaces: bool = False,
    columns: Sequence[Column] | None = None,
    header: bool = True,
) -> str:
    """Aligned rows under a header, kubectl-style (a NAMESPACE column first when listing across them)."""
    standard, extra = COLUMNS.get(plural, ([NAME, PHASE, AGE], []))
    chosen = list(columns) if columns is not None else [*standard, *(extra if wide else [])]
    if namespaces:
        chosen.insert(0, ("NAMESPACE", _field("metadata", "namespace")))
    rows = [[heading for heading, _ in chosen]] + [[value(item) for _, value in chosen] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(chosen))]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines if header else lines[1:])
