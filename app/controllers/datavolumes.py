"""The DataVolume reconciler: choose the node that keeps the disk, then fill it (blank, http import,
registry import, or a clone of another DataVolume); uploads arrive through the API. Deleting removes the
disk, which outlives every instance that used it.

A pass that dies half-way leaves only `dv-<uid>.qcow2` (replaced by the next attempt) and its scratch
directory (removed at the next attempt), never a DataVolume that says Succeeded without its disk.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from app.clock import Clock, utc_now
from app.controllers.base import NodeEvent, Result
from app.controllers.credentials import registry_logins, secret_values
from app.controllers.image_cache import RegistryConfig
from app.controllers.placement import cluster_views
from app.db import Database
from app.disks import reference as references
from app.disks.containerdisk import pull_disk
from app.disks.http import download
from app.disks.registry import Credentials, RegistryClient, RegistryError
from app.disks.untrusted import UnsafeDisk
from app.kinds import DATAVOLUMES, INSTANCES, NODES
from app.models import DataVolumeRow, NodeRow
from app.repositories import workqueue
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject
from app.schemas.datavolume import DataVolumeSpec, RegistrySource, data_volume_status
from app.services.datavolumes import users_of
from app.virt.disk_import import data_volume_file, finish_import
from app.virt.driver import (
    STORAGE_POOL,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
    NodeHypervisors,
)

log = logging.getLogger(__name__)
WAIT_RETRY = 5.0  # no node yet, or a clone's source not ready
PROGRESS_EVERY = 1.0
FIRST_PHASE = {"upload": "UploadReady", "pvc": "CloneInProgress"}  # others: ImportScheduled


@dataclass(frozen=True)
class ImportConfig:
    registry: RegistryConfig
    allowed_hosts: frozenset[str] = frozenset()  # import hosts allowed despite a loopback/link-local address


@dataclass(frozen=True)
class LoadedDataVolume:
    namespace: str
    name: str
    uid: str
    spec: DataVolumeSpec
    status: JsonObject
    node_name: str | None
    deleting: bool

    @property
    def phase(self) -> str:
        return str(self.status.get("phase") or "Pending")

    @property
    def volume(self) -> str:
        return data_volume_file(self.uid)


class DataVolumeReconciler:
    kind = DATAVOLUMES.kind

    def __init__(
        self,
        db: Database,
        hypervisors: NodeHypervisors,
        config: ImportConfig,
        volume_dir: str = "/var/lib/corral/instances",
        clock: Clock = utc_now,
    ) -> None:
        self.db = db
        self.hypervisors = hypervisors
        self.config = config
        self.volume_dir = volume_dir
        self.clock = clock

    def keys_for_events(self, session: Session, events: Sequence[NodeEvent]) -> list[str]:
        return []

    def reconcile(self, namespace: str, name: str) -> Result:
        dv = self._load(namespace, name)
        if dv is None:
            return Result()
        if dv.deleting:
            return self._delete(dv)
        if dv.phase in ("Succeeded", "Failed", "UploadReady"):
            return Result()
        if dv.node_name is None:
            node, why = self._choose_node(dv)
            if node is None:
                self._write(dv, "Pending", None, message=why)
                return Result(requeue_after=WAIT_RETRY)
            phase = FIRST_PHASE.get(dv.spec.source.kind, "ImportScheduled")
            self._write(dv, phase, node, progress="N/A")
            if phase == "UploadReady":
                return Result()
            dv = self._load(namespace, name)
            if dv is None or dv.node_name is None:
                return Result()
        uri = self._node_uri(dv.node_name)
        if uri is None:
            self._write(dv, dv.phase, dv.node_name, message=f"node {dv.node_name!r} no longer exists")
            return Result(requeue_after=WAIT_RETRY)
        try:
            hv = self.hypervisors.get(dv.node_name, uri)
            capacity = self._populate(dv, hv)
        except HypervisorUnavailable:
            self.hypervisors.forget(dv.node_name)
            raise
        except _Waiting as exc:
            self._write(dv, dv.phase, dv.node_name, message=str(exc))
            return Result(requeue_after=WAIT_RETRY)
        except (UnsafeDisk, RegistryError, HypervisorError, OSError) as exc:
            log.warning("DataVolume %s/%s failed: %s", namespace, name, exc)
            self._write(dv, "Failed", dv.node_name, message=str(exc)[:2000])
            return Result()
        self._write(dv, "Succeeded", dv.node_name, capacity=capacity)
        return Result()

    # -- placement -----------------------------------------------------------------------------------
    def _choose_node(self, dv: LoadedDataVolume) -> tuple[str | None, str]:
        with self.db.transaction() as session:  # placement sums may fill in legacy rows
            nodes = ResourceRepository[NodeRow](session, NODES)
            if dv.spec.source.pvc is not None:
                source = self._clone_source(session, dv)
                if source is None or source.node_name is None:
                    return None, "waiting for the clone's source DataVolume to have a node"
                return source.node_name, ""
            if dv.spec.node_name is not None:
                if nodes.get("", dv.spec.node_name) is None:
                    return None, f"spec.nodeName: no node {dv.spec.node_name!r}"
                return dv.spec.node_name, ""
            _, views = cluster_views(session, dv.uid)
            usable = [v for v in views if v.ready and not v.unschedulable]
            if not usable:
                return None, "no Ready, schedulable node to keep the disk on"
            # The node with the most free memory: where the instances using the disk will most likely fit.
            return max(usable, key=lambda v: (v.memory - v.used_memory, v.name)).name, ""

    def _clone_source(self, session: Session, dv: LoadedDataVolume) -> DataVolumeRow | None:
        pvc = dv.spec.source.pvc
        assert pvc is not None
        repo = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
        return repo.get(pvc.namespace or dv.namespace, pvc.name)

    @staticmethod
    def _node_uri_of(session: Session, node: str) -> str | None:
        row = ResourceRepository[NodeRow](session, NODES).get("", node)
        return None if row is None else str(row.spec["uri"])

    def _node_uri(self, node: str) -> str | None:
        with self.db.read() as session:
            return self._node_uri_of(session, node)

    # -- filling the disk ----------------------------------------------------------------------------
    def _populate(self, dv: LoadedDataVolume, hv: Hypervisor) -> int:
        """Fill the DataVolume's volume; its capacity. Raises _Waiting, UnsafeDisk, RegistryError."""
        source, requested = dv.spec.source, dv.spec.requested_bytes()
        if source.blank is not None:
            assert requested is not None
            hv.ensure_pool(STORAGE_POOL, self.volume_dir)
            hv.delete_volume(STORAGE_POOL, dv.volume)
            hv.create_volume(STORAGE_POOL, dv.volume, requested, None)
            return requested
        if source.pvc is not None:
            return self._clone(dv, hv, requested)
        scratch = self.config.registry.scratch / f"dv-{dv.uid}"
        shutil.rmtree(scratch, ignore_errors=True)  # what a killed import left
        scratch.mkdir(parents=True)
        progress = _Progress(self, dv)
        self._write(dv, "ImportInProgress", dv.node_name, progress="0.0%")
        try:
            if source.http is not None:
                disk = scratch / "download"
                download(
                    source.http.url,
                    disk,
                    allowed_hosts=self.config.allowed_hosts,
                    checksum=source.http.checksum,
                    progress=progress.update,
                )
            else:
                assert source.registry is not None
                disk = self._pull(dv, source.registry, scratch, progress)
            return finish_import(
                hv,
                disk,
                dv.volume,
                requested=requested,
                max_bytes=self.config.registry.max_disk_bytes,
                volume_dir=self.volume_dir,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _pull(self, dv: LoadedDataVolume, source: RegistrySource, scratch: Path, progress: _Progress) -> Path:
        registry = self.config.registry
        try:
            [reference] = references.candidates(source.url.removeprefix("docker://"), ())
        except references.InvalidReference as exc:
            raise RegistryError(str(exc)) from None
        logins = Credentials.from_file(registry.auth_file)
        if source.secret_ref is not None:
            with self.db.read() as session:
                values = secret_values(session, dv.namespace, source.secret_ref)
            if values is None:
                raise RegistryError(f"Secret {source.secret_ref!r} (spec.source.registry.secretRef) is gone")
            logins = logins.overridden_by(registry_logins(values, registry=reference.registry))
        client = RegistryClient(insecure=registry.insecure, credentials=logins)
        try:
            manifest = client.manifest(reference)
            total = sum(layer.size for layer in manifest.layers)
            disk, _ = pull_disk(
                client, manifest, scratch, lambda done: progress.update(done, total), registry.max_disk_bytes
            )
            return disk
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        finally:
            client.close()

    def _clone(self, dv: LoadedDataVolume, hv: Hypervisor, requested: int | None) -> int:
        with self.db.read() as session:
            source = self._clone_source(session, dv)
            if source is None:
                raise _Waiting("the clone's source DataVolume does not exist yet")
            phase = (source.status or {}).get("phase")
            capacity = int((source.status or {}).get("capacity") or 0)
            if phase != "Succeeded":
                raise _Waiting(f"the clone's source {source.namespace}/{source.name} is {phase}")
            if source.node_name != dv.node_name:
                raise UnsafeDisk(
                    f"the clone's source is on node {source.node_name}, this DataVolume on {dv.node_name}"
                )
            source_volume = data_volume_file(source.uid)
        if requested is not None and requested < capacity:
            raise UnsafeDisk(
                f"spec.storage.resources.requests.storage ({requested} bytes) is smaller than the source's "
                f"{capacity} bytes"
            )
        hv.clone_volume(STORAGE_POOL, source_volume, dv.volume)
        if requested is not None and requested > capacity and hv.capabilities.volume_contents:
            hv.resize_volume(STORAGE_POOL, dv.volume, requested)
        return max(requested or 0, capacity)

    # -- deletion ------------------------------------------------------------------------------------
    def _delete(self, dv: LoadedDataVolume) -> Result:
        if dv.node_name is not None:
            uri = self._node_uri(dv.node_name)
            if uri is not None:
                try:
                    self.hypervisors.get(dv.node_name, uri).delete_volume(STORAGE_POOL, dv.volume)
                except HypervisorUnavailable:
                    self.hypervisors.forget(dv.node_name)
                    raise
        with self.db.transaction() as session:
            repo = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
            row = repo.get(dv.namespace, dv.name, for_update=True)
            if row is not None and row.uid == dv.uid:
                repo.remove(row)
        return Result()

    # -- reading and writing -------------------------------------------------------------------------
    def _load(self, namespace: str, name: str) -> LoadedDataVolume | None:
        with self.db.read() as session:
            row = ResourceRepository[DataVolumeRow](session, DATAVOLUMES).get(namespace, name)
            if row is None:
                return None
            return LoadedDataVolume(
                namespace,
                name,
                row.uid,
                DataVolumeSpec.model_validate(row.spec),
                dict(row.status or {}),
                row.node_name,
                row.deleted_at is not None,
            )

    def _write(
        self,
        dv: LoadedDataVolume,
        phase: str,
        node: str | None,
        *,
        progress: str | None = None,
        message: str = "",
        capacity: int | None = None,
    ) -> None:
        with self.db.transaction() as session:
            repo = ResourceRepository[DataVolumeRow](session, DATAVOLUMES)
            row = repo.get(dv.namespace, dv.name, for_update=True)
            if row is None or row.uid != dv.uid:
                return
            status = data_volume_status(
                row.status or {},
                phase,
                node,
                self.clock(),
                progress=progress,
                message=message,
                capacity=capacity,
            )
            if status == row.status and row.node_name == node:
                return
            if phase != (row.status or {}).get("phase"):  # the instances waiting for it look again
                for user in users_of(session, dv.namespace, dv.name):
                    workqueue.enqueue(session, INSTANCES.work_key(dv.namespace, user))
            row.status, row.node_name = status, node
            repo.touch(row)


class _Waiting(Exception):
    """Not yet: a clone's source is not ready."""


class _Progress:
    """Import progress as CDI shows it ("45.3%"), written at most once per PROGRESS_EVERY seconds."""

    def __init__(self, reconciler: DataVolumeReconciler, dv: LoadedDataVolume) -> None:
        self.reconciler, self.dv = reconciler, dv
        self._written_at = time.monotonic()

    def update(self, done: int, total: int) -> None:
        if not total or time.monotonic() - self._written_at < PROGRESS_EVERY:
            return
        self._written_at = time.monotonic()
        percent = f"{min(done / total, 1.0) * 100:.1f}%"
        self.reconciler._write(self.dv, "ImportInProgress", self.dv.node_name, progress=percent)
