"""Deterministic names of what Corral makes on a node, so a pass that died between two steps finds them."""

from __future__ import annotations

import ipaddress

from app.schemas.records import InstanceProgress
from app.virt.driver import NetworkConfig

DEFAULT_NETWORK = "corral-default"
DEFAULT_BRIDGE = "corral0"


def domain_name(namespace: str, name: str, uid: str, progress: InstanceProgress) -> str:
    # Unique on the node even after a claim renames the instance (its domain keeps the first name).
    return progress.domain or f"{namespace}.{name}.{uid[:8]}"


def volume_file(uid: str, volume: str) -> str:
    """An instance's volume in the storage pool: `<uid>-<volume name>.qcow2`."""
    return f"{uid}-{volume}.qcow2"


def seed_file(uid: str, volume: str) -> str:
    """An instance's cloud-init seed image in the storage pool: `<uid>-<volume name>.iso`."""
    return f"{uid}-{volume}.iso"


def default_network(cidr: str = "10.88.0.0/16") -> NetworkConfig:
    """The NAT network on every node: the node is the subnet's first address; DHCP hands out the rest
    (after a few kept for the operator)."""
    subnet = ipaddress.ip_network(cidr)
    first, last = subnet.network_address + 1, subnet.broadcast_address - 1
    return NetworkConfig(
        DEFAULT_NETWORK, DEFAULT_BRIDGE, str(first), subnet.prefixlen, str(first + 9), str(last)
    )
