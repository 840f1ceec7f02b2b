"""Deterministic names of what Corral makes on a node, so a pass that died between two steps finds them."""

from __future__ import annotations

import hashlib
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
    """The NAT network on every node (`pod: {}`)."""
    return nat_network(DEFAULT_NETWORK, DEFAULT_BRIDGE, cidr)


def network_for(name: str, cidr: str) -> NetworkConfig:
    """The libvirt network of a `nat` Network resource: `corral-<name>` on a bridge named from a hash of
    it (Linux allows 15 characters)."""
    return nat_network(f"corral-{name}", "crl" + hashlib.sha256(name.encode()).hexdigest()[:12], cidr)


def nat_network(name: str, bridge: str, cidr: str) -> NetworkConfig:
    """A NAT network: the node is the subnet's first address; DHCP hands out the rest (after a few kept for
    the operator; a small subnet keeps none)."""
    subnet = ipaddress.ip_network(cidr)
    first, last = subnet.network_address + 1, subnet.broadcast_address - 1
    start = first + 9 if subnet.num_addresses > 32 else first + 1
    return NetworkConfig(name, bridge, str(first), subnet.prefixlen, str(start), str(last))
