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


def field(*path: str) -> Callable[[Item], str]:
    """A column's cell: the value at `path` (keys into nested objects), blank when absent."""

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
PHASE: Column = ("PHASE", field("status", "phase"))
NODE: Column = ("NODE", field("status", "nodeName"))

COLUMNS: dict[str, tuple[Sequence[Column], Sequence[Column]]] = {
    # plural: (columns, more columns for -o wide)
    "instances": (
        [
            NAME,
            PHASE,
            ("NODE", field("status", "nodeName")),
            ("IP", _address),
            ("READY", _condition("Ready")),
            AGE,
        ],
        [("AGENT", _condition("AgentConnected")), ("DOMAIN", field("status", "domainName"))],
    ),
    "pools": (
        [
            NAME,
            ("DESIRED", field("status", "replicas")),
            ("READY", field("status", "readyReplicas")),
            ("AVAILABLE", field("status", "availableReplicas")),
            ("CLAIMED", field("status", "claimed")),
            AGE,
        ],
        [("WARMING", field("status", "warming")), ("UPDATED", field("status", "updatedReplicas"))],
    ),
    "migrations": (
        [
            NAME,
            ("VMI", field("spec", "vmiName")),
            PHASE,
            ("SOURCE", field("status", "migrationState", "sourceNode")),
            ("TARGET", field("status", "migrationState", "targetNode")),
            ("PROGRESS", _migration_progress),
            AGE,
        ],
        [("MODE", field("status", "migrationState", "mode")), ("REASON", field("status", "reason"))],
    ),
    "datavolumes": (
        [
            NAME,
            PHASE,
            ("PROGRESS", field("status", "progress")),
            ("NODE", field("status", "nodeName")),
            AGE,
        ],
        [("CAPACITY", field("status", "capacity"))],
    ),
    "nodes": (
        [NAME, ("STATUS", field("status", "phase")), ("READY", _condition("Ready")), AGE],
        [("URI", field("spec", "uri"))],
    ),
    "devices": (
        [
            NAME,
            ("NODE", field("spec", "nodeName")),
            ("RESOURCE", field("status", "resourceName")),
            ("HOLDER", field("status", "holder")),
        ],
        [("DRIVER", field("status", "driver")), ("IOMMU", field("status", "iommuGroup"))],
    ),
    "secrets": (
        [NAME, ("TYPE", field("type")), ("DATA", lambda item: str(len(item.get("data") or {}))), AGE],
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
        chosen.insert(0, ("NAMESPACE", field("metadata", "namespace")))
    rows = [[heading for heading, _ in chosen]] + [[value(item) for _, value in chosen] for item in items]
    widths = [max(len(row[i]) for row in rows) for i in range(len(chosen))]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines if header else lines[1:])
