"""Host devices: the inventory and ledger as HostDevice objects, the permittedHostDevices rules, and the
check that an instance asks only for devices that exist, are PCI, and are permitted."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.errors import BadRequest, FieldError, Invalid, NotFound
from app.kinds import NODES
from app.models import HostDeviceRow
from app.repositories import workqueue
from app.repositories.devices import DeviceRepository, permitted, set_permitted
from app.repositories.resources import ResourceRepository
from app.repositories.revisions import current_revision
from app.schemas.common import JsonObject
from app.schemas.devices import HostDevice, PermittedHostDevices, is_resource_name
from app.schemas.instance import InstanceSpec
from app.services.validation import invalid


def device_view(row: HostDeviceRow, rules: PermittedHostDevices) -> JsonObject:
    facts = dict(row.facts or {})
    mdev_types = [
        {**t, "resourceName": rules.mdev_resource(t["id"], t["name"])} for t in facts.pop("mdevTypes", [])
    ]
    resource = (
        rules.pci_resource(facts.get("vendorId"), facts.get("productId")) if row.capability == "pci" else None
    )
    status = {
        **facts,
        "capability": row.capability,
        "present": row.present,
        "mdevTypes": mdev_types,
        "resourceName": resource,
        "holder": row.holder,
        "holderUid": row.holder_uid,
        "mediatedDevices": list(row.mdevs or []),
        "observedAt": row.observed_at,
    }
    view = HostDevice.model_validate(
        {
            "metadata": {
                "name": f"{row.node}.{row.name}",
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"corral.dev/hostdevices/{row.node}/{row.name}")),
                "labels": {"corral.dev/node": row.node},
                "creationTimestamp": row.created_at,
                "resourceVersion": "",
            },
            "spec": {"nodeName": row.node, "deviceName": row.name},
            "status": status,
        }
    ).model_dump(by_alias=True, mode="json", exclude_none=True)
    # Devices are the worker's, never written by clients: a digest of what is shown changes whenever it does.
    shown = json.dumps([view["spec"], view["status"]], sort_keys=True).encode()
    view["metadata"]["resourceVersion"] = hashlib.sha256(shown).hexdigest()[:16]
    return view


class DeviceService:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.devices = DeviceRepository(session)

    def list(
        self,
        *,
        node: str | None = None,
        holder: str | None = None,
        resource_name: str | None = None,
        free: bool | None = None,
    ) -> JsonObject:
        if node is not None and ResourceRepository[Any](self.session, NODES).get("", node) is None:
            raise NotFound(f"Node {node!r} not found")
        rules = permitted(self.session)
        items = [device_view(row, rules) for row in self.devices.find(node=node, holder=holder)]
        if resource_name is not None:
            items = [i for i in items if i["status"].get("resourceName") == resource_name]
        if free is not None:
            items = [i for i in items if bool({"holder", "usedBy"} & i["status"].keys()) != free]
        meta = {"resourceVersion": str(current_revision(self.session))}
        return {"apiVersion": "corral.dev/v1", "kind": "HostDeviceList", "metadata": meta, "items": items}

    def get(self, node: str, name: str) -> JsonObject:
        rows = self.devices.find(node=node, name=name)
        if not rows:
            raise NotFound(f"node {node!r} has no device {name!r}")
        return device_view(rows[0], permitted(self.session))

    def rules(self) -> PermittedHostDevices:
        return permitted(self.session)

    def set_rules(self, body: Any) -> PermittedHostDevices:
        if not isinstance(body, dict):
            raise BadRequest("the body must be an object", [FieldError("body", "must be an object")])
        try:
            rules = PermittedHostDevices.model_validate(body)
        except ValidationError as exc:
            raise invalid(exc) from exc
        set_permitted(self.session, rules)
        for node in ResourceRepository[Any](self.session, NODES).all_keys():
            workqueue.enqueue(self.session, NODES.work_key(*node))  # capacity per resourceName changes
        return rules

    def check_requests(self, spec: InstanceSpec) -> None:
        """422 naming the field for a device that is unknown, not PCI, or not permitted."""
        entries = [
            (f"spec.domain.devices.gpus[{i}].deviceName", d.device_name)
            for i, d in enumerate(spec.domain.devices.gpus)
        ]
        entries += [
            (f"spec.domain.devices.hostDevices[{i}].deviceName", d.device_name)
            for i, d in enumerate(spec.domain.devices.host_devices)
        ]
        entries += [
            (f"spec.domain.resources.requests[{key}]", key)
            for key in spec.domain.resources.requests
            if is_resource_name(key)
        ]
        if not entries:
            return
        rules = permitted(self.session)
        for field, name in entries:
            problem = self._problem(name, rules)
            if problem is not None:
                raise Invalid(f"{field}: {problem}", [FieldError(field, problem)])

    def _problem(self, name: str, rules: PermittedHostDevices) -> str | None:
        if is_resource_name(name):
            if name in rules.resource_names():
                return None
            known = ", ".join(sorted(rules.resource_names())) or "none"
            return f"resourceName {name!r} is not permitted (permittedHostDevices has: {known})"
        rows = self.devices.find(name=name)
        if not rows:
            return f"no node reports a device named {name!r}"
        pci = [r for r in rows if r.capability == "pci"]
        if not pci:
            return f"{name!r} is a {rows[0].capability} device; only PCI devices pass through"
        if not any(rules.pci_resource(r.facts.get("vendorId"), r.facts.get("productId")) for r in pci):
            ids = f"{pci[0].facts.get('vendorId')}:{pci[0].facts.get('productId')}"
            return f"device {name!r} ({ids}) is not permitted by permittedHostDevices"
        return None
