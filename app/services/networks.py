"""Network use cases: instances name existing Networks with a binding the Network allows, MACs are unique
across instances, a Network in use stays."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, FieldError, Invalid
from app.kinds import NETWORKS
from app.models import InstanceRow
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject
from app.schemas.instance import InstanceSpec
from app.schemas.network import NetworkSpec
from app.services.resources import ResourceService


def _instances(session: Session) -> list[InstanceRow]:
    return list(session.scalars(select(InstanceRow)))


def users_of(session: Session, network: str) -> list[str]:
    """namespace/name of the instances attached to the Network."""
    return sorted(
        f"{row.namespace}/{row.name}"
        for row in _instances(session)
        if any(
            (n.get("multus") or {}).get("networkName") == network
            for n in (row.spec or {}).get("networks", [])
        )
    )


def check_networks(session: Session, namespace: str, name: str, spec: InstanceSpec) -> None:
    """422 for a Network that does not exist, a binding it does not allow, or a MAC another instance has."""
    repo = ResourceRepository[Any](session, NETWORKS)
    bindings = {nic.name: (i, nic) for i, nic in enumerate(spec.domain.devices.interfaces)}
    for i, network in enumerate(spec.networks):
        if network.multus is None:
            continue
        wanted = network.multus.network_name
        row = repo.get("", wanted)
        if row is None:
            field = f"spec.networks[{i}].multus.networkName"
            raise Invalid(f"no Network named {wanted!r}", [FieldError(field, "no such Network")])
        index, nic = bindings.get(network.name, (None, None))
        if nic is not None and nic.masquerade is not None and NetworkSpec.model_validate(row.spec).bridge:
            field = f"spec.domain.devices.interfaces[{index}].masquerade"
            message = f"Network {wanted!r} is a host bridge: bind with bridge: {{}}, not masquerade"
            raise Invalid(message, [FieldError(field, "not allowed on a host bridge Network")])
    macs = {
        nic.mac_address.lower(): i for i, nic in enumerate(spec.domain.devices.interfaces) if nic.mac_address
    }
    if not macs:
        return
    for row in _instances(session):
        if (row.namespace, row.name) == (namespace, name):
            continue
        for other in (row.spec or {}).get("domain", {}).get("devices", {}).get("interfaces", []):
            mac = str(other.get("macAddress") or "").lower()
            if mac in macs:
                field = f"spec.domain.devices.interfaces[{macs[mac]}].macAddress"
                holder = f"{row.namespace}/{row.name}"
                # Invalid input like any other bad value (not a conflict of versions): another MAC works.
                raise Invalid(f"MAC {mac} is instance {holder}'s", [FieldError(field, f"in use by {holder}")])


class NetworkService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, NETWORKS)

    def spec_changed(self, row: Any, old_spec: JsonObject) -> None:
        if row.spec != old_spec:
            raise Invalid("a Network's spec cannot change", [FieldError("spec", "is immutable")])

    def check_deletable(self, row: Any) -> None:
        users = users_of(self.session, row.name)
        if users:
            raise Conflict(
                f"Network {row.name!r} is in use by instance {users[0]}",
                [FieldError("metadata.name", f"in use by instance {users[0]}")],
            )
