"""DataVolume use cases: immutable specs, no deletion while an instance uses the disk, one instance at a
time per disk, and uploads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, FieldError, Invalid
from app.kinds import DATAVOLUMES, NODES
from app.models import DataVolumeRow, InstanceRow
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject
from app.schemas.datavolume import DataVolumeSpec
from app.schemas.instance import InstanceSpec
from app.services.resources import ResourceService


def users_of(session: Session, namespace: str, name: str) -> list[str]:
    """Names of the instances in `namespace` whose volumes attach the DataVolume `name` (deleting ones too:
    they hold the disk until their domain is gone)."""
    rows = session.scalars(select(InstanceRow).where(InstanceRow.namespace == namespace))
    return sorted(
        row.name
        for row in rows
        if any(
            (v.get("dataVolume") or {}).get("name") == name
            or (v.get("persistentVolumeClaim") or {}).get("claimName") == name
            for v in (row.spec or {}).get("volumes", [])
        )
    )


def check_single_writer(session: Session, namespace: str, instance: str, spec: InstanceSpec) -> None:
    """Refuse (409, naming the holder) an instance attaching a DataVolume another instance uses. The
    DataVolume row is locked first, so two instances racing for one disk are decided one after the other."""
    repo = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
    for index, volume in enumerate(spec.volumes):
        name = volume.data_volume_name
        if name is None:
            continue
        repo.get(namespace, name, for_update=True)
        holders = [user for user in users_of(session, namespace, name) if user != instance]
        if holders:
            field = "dataVolume.name" if volume.data_volume is not None else "persistentVolumeClaim.claimName"
            raise Conflict(
                f"DataVolume {name!r} is in use by instance {holders[0]!r} (one instance at a time)",
                [FieldError(f"spec.volumes[{index}].{field}", f"in use by instance {holders[0]!r}")],
            )


class DataVolumeService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, DATAVOLUMES)

    def prepare_new(self, row: Any) -> None:
        spec = DataVolumeSpec.model_validate(row.spec)
        if (
            spec.node_name is not None
            and ResourceRepository[Any](self.session, NODES).get("", spec.node_name) is None
        ):
            raise Invalid(f"no node {spec.node_name!r}", [FieldError("spec.nodeName", "no such node")])
        row.progress = {}

    def spec_changed(self, row: Any, old_spec: JsonObject) -> None:
        if row.spec != old_spec:
            raise Invalid("a DataVolume's spec cannot change", [FieldError("spec", "is immutable")])

    def check_deletable(self, row: Any) -> None:
        users = users_of(self.session, row.namespace, row.name)
        if users:
            raise Conflict(
                f"DataVolume {row.name!r} is in use by instance {users[0]!r}",
                [FieldError("metadata.name", f"in use by instance {users[0]!r}")],
            )
