"""Placement: which Ready node has room for an instance (pure functions over plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.schemas.common import parse_quantity
from app.schemas.conditions import condition_true

MIB = 1024 * 1024


@dataclass(frozen=True)
class NodeView:
    name: str
    labels: dict[str, str]
    ready: bool
    unschedulable: bool
    cpu: int  # allocatable vCPUs (capacity x allocation ratio)
    memory: int  # allocatable bytes
    used_cpu: int = 0
    used_memory: int = 0


@dataclass(frozen=True)
class Request:
    vcpus: int
    memory: int
    node_selector: dict[str, str] = field(default_factory=dict)
    # Host devices (gpus/hostDevices deviceNames and extended resources such as nvidia.com/gpu): placement
    # needs a node whose device inventory offers them; no node has an inventory yet, so none qualifies.
    devices: tuple[str, ...] = ()


def node_view(
    name: str,
    labels: dict[str, str],
    spec: dict[str, object],
    status: dict[str, object],
    used_cpu: int,
    used_memory: int,
) -> NodeView:
    allocatable = status.get("allocatable") or {}
    assert isinstance(allocatable, dict)
    return NodeView(
        name=name,
        labels={**labels, "corral.dev/node": name},
        ready=condition_true(status, "Ready"),
        unschedulable=bool(spec.get("unschedulable")),
        cpu=int(parse_quantity(str(allocatable.get("cpu", "0")))),
        memory=int(parse_quantity(str(allocatable.get("memory", "0")))),
        used_cpu=used_cpu,
        used_memory=used_memory,
    )


def why_not(node: NodeView, request: Request) -> str | None:
    """None when the instance fits on the node, else the reason in a few words."""
    if not node.ready:
        return "not Ready"
    if node.unschedulable:
        return "unschedulable"
    mismatched = [k for k, v in request.node_selector.items() if node.labels.get(k) != v]
    if mismatched:
        return f"nodeSelector {', '.join(sorted(mismatched))} does not match"
    if request.devices:
        return f"offers no host device {', '.join(request.devices)}"
    if node.cpu - node.used_cpu < request.vcpus:
        return f"insufficient cpu (requested {request.vcpus}, free {node.cpu - node.used_cpu})"
    free = node.memory - node.used_memory
    if free < request.memory:
        return f"insufficient memory (requested {request.memory // MIB}Mi, free {max(free, 0) // MIB}Mi)"
    return None


def choose(nodes: list[NodeView], request: Request) -> tuple[NodeView | None, dict[str, str]]:
    """The fitting node with the most free memory (spreads load), and why each other node was passed over."""
    reasons = {n.name: r for n in nodes if (r := why_not(n, request)) is not None}
    fitting = [n for n in nodes if n.name not in reasons]
    if not fitting:
        return None, reasons
    return max(fitting, key=lambda n: (n.memory - n.used_memory, n.cpu - n.used_cpu, n.name)), reasons


def unschedulable_message(total: int, reasons: dict[str, str]) -> str:
    if not total:
        return "0/0 nodes: no node is registered"
    detail = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items()))
    return f"0/{total} nodes can run it: {detail}"
