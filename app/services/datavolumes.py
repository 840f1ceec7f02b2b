"""DataVolume use cases: immutable specs, no deletion while an instance uses the disk, one instance at a
time per disk, and uploads."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.errors import Conflict, FieldError, Invalid, NotFound
from app.kinds import DATAVOLUMES, INSTANCES, NODES
from app.models import DataVolumeRow, InstanceRow
from app.repositories import workqueue
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject
from app.schemas.datavolume import DataVolumeSpec, data_volume_status
from app.schemas.instance import InstanceSpec
from app.services.resources import ResourceService
from app.services.secrets import check_exist


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
        login = spec.source.registry.secret_ref if spec.source.registry is not None else None
        if login is not None:
            check_exist(self.session, row.namespace, [("spec.source.registry.secretRef", login)])
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


def upload_target(session: Session, namespace: str, name: str) -> tuple[str, str, str, int | None]:
    """(uid, node, node URI, requested bytes) of a DataVolume waiting for its upload; 404 or 409 otherwise."""
    row = ResourceRepository[DataVolumeRow](session, DATAVOLUMES).get(namespace, name)
    if row is None:
        raise NotFound(f"DataVolume {name!r} not found in namespace {namespace!r}")
    phase = (row.status or {}).get("phase", "Pending")
    if DataVolumeSpec.model_validate(row.spec).source.upload is None:
        raise Conflict(f"DataVolume {name!r} is not an upload", [FieldError("spec.source", "not upload: {}")])
    if phase != "UploadReady" or row.node_name is None or row.deleted_at is not None:
        raise Conflict(
            f"DataVolume {name!r} is {phase}, not UploadReady", [FieldError("status.phase", phase)]
        )
    node = ResourceRepository[Any](session, NODES).get("", row.node_name)
    if node is None:
        raise Conflict(f"the node {row.node_name!r} holding DataVolume {name!r} no longer exists")
    requested = DataVolumeSpec.model_validate(row.spec).requested_bytes()
    return row.uid, row.node_name, str(node.spec["uri"]), requested


def record_upload(session: Session, namespace: str, name: str, uid: str, capacity: int) -> JsonObject:
    """The upload arrived and is on the node: Succeeded."""
    repo = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
    row = repo.get(namespace, name, for_update=True)
    if row is None or row.uid != uid:
        raise NotFound(f"DataVolume {name!r} was deleted during the upload")
    row.status = data_volume_status(
        row.status or {}, "Succeeded", row.node_name, utc_now(), capacity=capacity
    )
    for user in users_of(session, namespace, name):
        workqueue.enqueue(session, INSTANCES.work_key(namespace, user))
    repo.touch(row)
    return repo.settled(row)
