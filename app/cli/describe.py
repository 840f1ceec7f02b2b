"""What `corral describe` shows of one object: its identity, a spec summary, status, conditions with ages,
the phase history and, for instances, the recent guest operations."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.cli.tables import Column, Item, age, field, table

Section = list[tuple[str, str]]


def describe(plural: str, obj: Item, operations: Sequence[Item] = ()) -> str:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    lines = _fields(
        [
            ("Name", str(meta.get("name", ""))),
            ("Namespace", str(meta.get("namespace") or "")),
            ("Labels", _pairs(meta.get("labels"))),
            ("Annotations", _pairs(meta.get("annotations"))),
            ("Created", _when(meta.get("creationTimestamp"))),
            ("Deleting since", _when(meta.get("deletionTimestamp"))),
            ("UID", str(meta.get("uid", ""))),
        ]
    )
    summary = SPEC_SUMMARIES.get(plural, _generic_spec)(spec) if spec else []
    if summary:
        lines += ["Spec:", *_fields(summary, indent=2)]
    state = [(k, str(v)) for k, v in _status_fields(plural, status) if v not in (None, "", [], {})]
    if state:
        lines += ["Status:", *_fields(state, indent=2)]
    conditions = status.get("conditions") or []
    if conditions:
        lines += ["Conditions:", _indent(table("", conditions, columns=CONDITION_COLUMNS))]
    history = status.get("phaseTransitionTimestamps") or []
    if history:
        lines.append("Phase history:")
        lines += [f"  {h.get('phase', ''):<16}{_when(h.get('phaseTransitionTimestamp'))}" for h in history]
    if operations:
        lines += ["Guest operations:", _indent(table("", operations, columns=OPERATION_COLUMNS))]
    return "\n".join(lines)


def _fields(pairs: Section, indent: int = 0) -> list[str]:
    """`Key:  value` lines, aligned; keys without a value are left out."""
    shown = [(k, v) for k, v in pairs if v]
    width = max((len(k) for k, _ in shown), default=0) + 2
    return [f"{' ' * indent}{(k + ':').ljust(width)}{v}" for k, v in shown]


def _pairs(mapping: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((mapping or {}).items())) or "<none>"


def _when(timestamp: Any) -> str:
    return f"{timestamp} ({age(timestamp)} ago)" if timestamp else ""


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _operation_detail(op: Item) -> str:
    if op.get("error"):
        return str(op["error"])
    request = op.get("request") or {}
    if "command" in request:
        return " ".join(str(a) for a in request["command"])
    return str(request.get("path", ""))


CONDITION_COLUMNS: list[Column] = [
    ("TYPE", field("type")),
    ("STATUS", field("status")),
    ("REASON", field("reason")),
    ("AGE", lambda row: age(row.get("lastTransitionTime"))),
    ("MESSAGE", field("message")),
]
OPERATION_COLUMNS: list[Column] = [
    ("KIND", field("kind")),
    ("STATE", field("state")),
    ("BY", field("requestedBy")),
    ("AGE", lambda row: age(row.get("createdAt"))),
    ("DETAIL", _operation_detail),
]


def _resources(spec: Item) -> str:
    requests = ((spec.get("domain") or {}).get("resources") or {}).get("requests") or {}
    return ", ".join(f"{k} {v}" for k, v in requests.items())


def _instance_spec(spec: Item) -> Section:
    volumes = []
    for volume in spec.get("volumes") or []:
        source = next((k for k in volume if k != "name"), "")
        volumes.append(f"{volume.get('name')} ({source})")
    networks = [n.get("name", "") for n in spec.get("networks") or []]
    devices = (spec.get("domain") or {}).get("devices") or {}
    passthrough = [
        d.get("deviceName", "") for d in (devices.get("gpus") or []) + (devices.get("hostDevices") or [])
    ]
    return [
        ("Run strategy", str(spec.get("runStrategy", "Always"))),
        ("Resources", _resources(spec)),
        ("Volumes", ", ".join(volumes)),
        ("Networks", ", ".join(networks)),
        ("Host devices", ", ".join(passthrough)),
        ("Node selector", _pairs(spec.get("nodeSelector")) if spec.get("nodeSelector") else ""),
    ]


def _pool_spec(spec: Item) -> Section:
    template = spec.get("template") or {}
    return [
        ("Size", str(spec.get("size", ""))),
        ("Min available", str(spec.get("minAvailable", ""))),
        ("Auto replenish", str(spec.get("autoReplenish", ""))),
        ("Warm state", str(spec.get("warmState", ""))),
        ("Template", _resources(template.get("spec") or template)),
    ]


def _migration_spec(spec: Item) -> Section:
    return [("Instance", str(spec.get("vmiName", ""))), ("Target node", str(spec.get("targetNode") or "any"))]


def _generic_spec(spec: Item) -> Section:
    return [
        (k, v if isinstance(v, str) else str(v)) for k, v in spec.items() if not isinstance(v, dict | list)
    ]


SPEC_SUMMARIES = {"instances": _instance_spec, "pools": _pool_spec, "migrations": _migration_spec}


def _status_fields(plural: str, status: Item) -> list[tuple[str, Any]]:
    common = [
        ("Phase", status.get("phase")),
        ("Reason", status.get("reason")),
        ("Message", status.get("message")),
    ]
    if plural == "instances":
        addresses = [n.get("ipAddress") for n in status.get("interfaces") or [] if n.get("ipAddress")]
        os_info = status.get("guestOSInfo") or {}
        return [
            *common,
            ("Node", status.get("nodeName")),
            ("Domain", status.get("domainName")),
            ("Addresses", ", ".join(addresses)),
            ("Guest OS", os_info.get("prettyName") or os_info.get("name")),
        ]
    if plural == "migrations":
        state = status.get("migrationState") or {}
        return [
            *common,
            ("Source", state.get("sourceNode")),
            ("Target", state.get("targetNode")),
            ("Mode", state.get("mode")),
            ("Iterations", state.get("iteration")),
            ("Downtime", f"{state['downtimeMs']} ms" if state.get("downtimeMs") is not None else None),
        ]
    if plural == "pools":
        return [
            *common,
            ("Members", status.get("replicas")),
            ("Ready", status.get("readyReplicas")),
            ("Available", status.get("availableReplicas")),
            ("Warming", status.get("warming")),
            ("Claimed", status.get("claimed")),
            ("Updated", status.get("updatedReplicas")),
        ]
    return [
        *common,
        *(
            (k, v)
            for k, v in status.items()
            if k not in ("conditions", "phase", "reason", "message") and not isinstance(v, dict | list)
        ),
    ]
