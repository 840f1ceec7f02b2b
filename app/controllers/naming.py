"""Deterministic names of what Corral makes on a node, so a pass that died between two steps finds them."""

from __future__ import annotations

from app.schemas.records import InstanceProgress


def domain_name(namespace: str, name: str, uid: str, progress: InstanceProgress) -> str:
    # Unique on the node even after a claim renames the instance (its domain keeps the first name).
    return progress.domain or f"{namespace}.{name}.{uid[:8]}"


def volume_file(uid: str, volume: str) -> str:
    """An instance's volume in the storage pool: `<uid>-<volume name>.qcow2`."""
    return f"{uid}-{volume}.qcow2"


def seed_file(uid: str, volume: str) -> str:
    """An instance's cloud-init seed image in the storage pool: `<uid>-<volume name>.iso`."""
    return f"{uid}-{volume}.iso"
