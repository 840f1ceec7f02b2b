"""Registry images on nodes: an instance's pass asks the cache (ImageCache), a pull reconciler
(ImagePuller, work keys `ImagePull/<node>/<row id>`) fetches, checks and uploads, and collects unused images.

One row per node and image name, so a pool's members on one node share one pull. The disk is pulled on the
worker's host, checked as untrusted input (app.disks.untrusted), converted to qcow2 and streamed into the
node's storage pool through libvirt (a remote node needs no shared filesystem). Volumes are named by the
manifest digest; a row is trusted only when Ready, so a pull killed half-way is redone from the start.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.clock import Clock, rfc3339, utc_now
from app.controllers.base import NodeEvent, Result
from app.controllers.credentials import registry_logins, secret_values
from app.db import Database
from app.disks import reference as references
from app.disks import untrusted
from app.disks.containerdisk import pull_disk
from app.disks.registry import Credentials, Manifest, ManifestUnknown, RegistryClient, RegistryError
from app.kinds import KINDS, NODES, split_work_key
from app.models import CachedImageRow, NodeRow
from app.repositories import workqueue
from app.repositories.images import FAILED, PENDING, PULLING, READY, ImageCacheRepository
from app.repositories.resources import ResourceRepository
from app.schemas.instance import ContainerDiskSource
from app.virt import images
from app.virt.disk_import import store_file
from app.virt.driver import (
    STORAGE_POOL,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
    NodeHypervisors,
)

log = logging.getLogger(__name__)
IMAGE_PULL = "ImagePull"
BACKOFF_MAX = 300.0
PROGRESS_EVERY = 1.0  # seconds between two progress writes (each wakes the waiting instances)
BUSY_RETRY = 2.0
ANY_TIME = datetime.min.replace(tzinfo=UTC)  # as `created`: any cached copy is recent enough


@dataclass(frozen=True)
class RegistryConfig:
    search: tuple[str, ...]
    insecure: frozenset[str] = frozenset()
    auth_file: Path | None = None
    max_disk_bytes: int = 2 << 40
    cache_bytes: int = 20 << 30
    scratch: Path = Path(".corral/pulls")
    concurrent_pulls: int = 2
    backoff_seconds: float = 10.0  # after the first failure; doubles per failure up to BACKOFF_MAX
    keep_unused: timedelta = timedelta(minutes=10)  # an image wanted this recently is not collected


class ImageNotReady(Exception):
    """The image is being pulled, or its pull failed and is retried: the instance waits (reason, message)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def resolver(
    catalog: Path,
    cache: ImageCache,
    hv: Hypervisor,
    node: str,
    waiter: str,
    created: datetime,
    *,
    namespace: str,
    same_as: str | None = None,
) -> Callable[[ContainerDiskSource | None], images.Image]:
    """How an instance on `node` finds its images: a short name in the node's catalog directory first, then
    (and a qualified reference always) through the registry cache, with the login of the instance's
    imagePullSecret (in `namespace`). With `same_as` (a migration's source
    node) a registry image is the very digest that node holds, so an overlay copied over fits its base."""

    def resolve(source: ContainerDiskSource | None) -> images.Image:
        if source is None:
            return images.resolve(catalog, None)
        if not references.is_qualified(source.image):
            try:
                return images.resolve(catalog, source.image)
            except images.ImageNotFound:
                pass
        login = f"{namespace}/{source.image_pull_secret}" if source.image_pull_secret else None
        if same_as is None:
            policy = source.image_pull_policy
            return cache.image(node, source.image, policy, waiter, created, present, login)
        pinned = cache.pinned(same_as, source.image)
        if pinned is None:
            raise images.ImageNotFound(f"node {same_as} holds no pulled copy of {source.image!r}")
        return cache.image(node, pinned, "IfNotPresent", waiter, created, present, login)

    def present(volume: str) -> bool:
        return hv.volume_path(STORAGE_POOL, volume) is not None

    return resolve


def pull_key(node: str, row_id: int) -> str:
    return f"{IMAGE_PULL}/{node}/{row_id}"


def _wake(session: Session, row: CachedImageRow) -> None:
    """Wake the instances (and migrations) waiting for the image; forget those that no longer exist."""
    alive = []
    for key in row.waiters:
        kind_name, namespace, name = split_work_key(key)
        kind = KINDS.get(kind_name)
        if kind is not None and ResourceRepository[Any](session, kind).get(namespace, name) is not None:
            alive.append(key)
            workqueue.enqueue(session, key)
    if alive != row.waiters:
        row.waiters = alive


def _image_of(row: CachedImageRow) -> images.Image:
    assert row.path is not None
    disk = Path(row.path)
    return images.Image(row.name, disk.parent, disk, "qcow2", row.virtual_size, None, None, "")


class ImageCache:
    """What an instance pass asks: the cached image on its node, or why it has to wait."""

    def __init__(self, db: Database, clock: Clock = utc_now) -> None:
        self.db = db
        self.clock = clock

    def image(
        self,
        node: str,
        name: str,
        policy: str,
        waiter: str,
        created: datetime,
        present: Callable[[str], bool],
        pull_secret: str | None = None,
    ) -> images.Image:
        """The image `name` as a disk on `node`. Raises ImageNotReady while it is not there, after asking
        for a pull. Policy Always wants a registry check newer than the instance (`created`). `present`
        asks the node whether a cached volume still exists (someone may have removed it by hand)."""
        now = self.clock()
        with self.db.transaction() as session:  # the wait is raised after the commit: the request stays
            repo = ImageCacheRepository(session)
            row, added = (
                (repo.find(node, name), False) if policy == "Never" else repo.find_or_add(node, name, now)
            )
            if (
                row is not None
                and row.volume is not None
                and row.path is not None
                and not present(row.volume)
            ):
                log.warning("image %s on node %s: volume %s is gone; pulling again", name, node, row.volume)
                row.path, row.volume, row.state = None, None, PENDING
            if row is not None and row.path is not None:  # even after a failed re-check: the image is good
                row.wanted_at = now
                fresh = row.checked_at is not None and row.checked_at >= created
                if policy != "Always" or (row.state == READY and fresh):
                    row.waiters = [w for w in row.waiters if w != waiter]
                    return _image_of(row)
                if row.state == READY:
                    row.state = PENDING  # Always: ask the registry whether the tag moved
            if row is None or policy == "Never":
                wait = ImageNotReady(
                    "ErrImageNeverPull", f"image {name!r} is not on node {node} (policy Never)"
                )
            else:
                row.wanted_at = now
                if pull_secret is not None and pull_secret != row.pull_secret:
                    row.pull_secret = pull_secret
                    row.retry_at = None  # another login: worth trying at once
                if waiter not in row.waiters:
                    row.waiters = [*row.waiters, waiter]
                if row.state == FAILED and (row.retry_at is None or row.retry_at <= now):
                    row.state = PENDING
                if added or row.state == PENDING:
                    workqueue.enqueue(session, pull_key(node, row.id))
                wait = _waiting(row)
        raise wait

    def pinned(self, node: str, name: str) -> str | None:
        """The digest-pinned reference of the image `name` as pulled onto `node`."""
        with self.db.read() as session:
            row = ImageCacheRepository(session).find(node, name, for_update=False)
            return row.reference if row is not None and row.path is not None else None


def _waiting(row: CachedImageRow) -> ImageNotReady:
    if row.state == FAILED:
        retry = f"retry at {rfc3339(row.retry_at)}" if row.retry_at else "retrying"
        if row.attempts <= 1:
            return ImageNotReady("ErrImagePull", f"pulling {row.name!r} failed ({retry}): {row.message}")
        return ImageNotReady(
            "ImagePullBackOff",
            f"back-off pulling {row.name!r}: {row.attempts} failures, {retry}; last: {row.message}",
        )
    if row.bytes_total:
        done = f"{row.bytes_done} of {row.bytes_total} bytes"
        return ImageNotReady("ImagePulling", f"pulling {row.reference or row.name}: {done}")
    return ImageNotReady("ImagePulling", f"pulling {row.name!r}: {row.message or 'waiting to start'}")


class ImagePuller:
    kind = IMAGE_PULL

    def __init__(
        self,
        db: Database,
        hypervisors: NodeHypervisors,
        config: RegistryConfig,
        volume_dir: str = "/var/lib/corral/instances",
        clock: Clock = utc_now,
    ) -> None:
        self.db = db
        self.hypervisors = hypervisors
        self.config = config
        self.volume_dir = volume_dir
        self.clock = clock
        self._slots = threading.BoundedSemaphore(config.concurrent_pulls)

    def keys_for_events(self, session: Session, events: Sequence[NodeEvent]) -> list[str]:
        return []

    def resync_keys(self, session: Session) -> list[str]:
        return [pull_key(node, row_id) for node, row_id in ImageCacheRepository(session).unfinished()]

    def reconcile(self, namespace: str, name: str) -> Result:
        node, row_id = namespace, int(name)
        with self.db.transaction() as session:
            row = ImageCacheRepository(session).get(row_id, for_update=True)
            if row is None:
                return Result()
            if row.state == READY:
                _wake(session, row)
                return Result()
            if row.state == FAILED:
                if not row.waiters:
                    return Result()  # nobody wants it now; the next instance that does asks again
                wait = (row.retry_at - self.clock()).total_seconds() if row.retry_at else 0.0
                if wait > 0:
                    return Result(requeue_after=wait)
            uri = self._node_uri(session, node)
            if uri is None:
                return Result()
        if not self._slots.acquire(blocking=False):
            return Result(requeue_after=BUSY_RETRY)
        try:
            hv = self.hypervisors.get(node, uri)
            return self._pull(hv, node, row_id)
        except HypervisorUnavailable:
            self.hypervisors.forget(node)
            raise
        finally:
            self._slots.release()

    @staticmethod
    def _node_uri(session: Session, node: str) -> str | None:
        row = ResourceRepository[NodeRow](session, NODES).get("", node)
        return None if row is None else str(row.spec["uri"])

    # -- pulling -------------------------------------------------------------------------------------
    def _pull(self, hv: Hypervisor, node: str, row_id: int) -> Result:
        scratch = self.config.scratch / f"{node}-{row_id}"
        shutil.rmtree(scratch, ignore_errors=True)  # what a killed pull left
        progress = _Progress(self, row_id)
        try:
            name = self._update(row_id, state=PULLING, message="asking the registry", bytes_done=0)
            logins = self._logins(row_id)
            manifest = self._manifest(name, logins)
            volume = f"image-{manifest.digest.removeprefix('sha256:')}.qcow2"
            stored = self._cached_volume(hv, node, volume)
            if stored is None:
                scratch.mkdir(parents=True)
                total = sum(layer.size for layer in manifest.layers)
                self._update(row_id, reference=str(manifest.reference), bytes_total=total, message="")
                disk, facts = self._fetch(manifest, scratch, progress, logins)
                stored = self._store(hv, disk, volume, progress.row_id), facts
            path, facts = stored
        except (RegistryError, untrusted.UnsafeDisk, OSError) as exc:
            return self._failed(row_id, str(exc))
        except HypervisorError as exc:
            if isinstance(exc, HypervisorUnavailable):
                raise
            return self._failed(row_id, f"storing the image on node {node}: {exc}")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._ready(row_id, manifest, volume, path, facts)
        self._collect(hv, node)
        return Result()

    def _logins(self, row_id: int) -> Credentials:
        """The node's registry logins, with those of the pull Secret the image was last asked with over
        them (a Secret that is gone adds none: the registry's refusal will say so)."""
        logins = Credentials.from_file(self.config.auth_file)
        with self.db.read() as session:
            row = ImageCacheRepository(session).get(row_id, for_update=False)
            if row is None or row.pull_secret is None:
                return logins
            namespace, _, name = row.pull_secret.partition("/")
            values = secret_values(session, namespace, name)
        if values is None:
            return logins
        return logins.overridden_by(registry_logins(values, registry=None))

    def _manifest(self, name: str, logins: Credentials) -> Manifest:
        """The manifest of the first search registry that has the image; every registry's answer when
        none has it."""
        client = self._client(logins)
        answers = []
        try:
            for candidate in references.candidates(name, self.config.search):
                try:
                    return client.manifest(candidate)
                except ManifestUnknown as exc:
                    answers.append(str(exc))
            if not answers:
                raise RegistryError(f"{name!r} names no registry and none is configured to search")
            raise RegistryError("; ".join(answers))
        except references.InvalidReference as exc:
            raise RegistryError(str(exc)) from None
        finally:
            client.close()

    def _client(self, logins: Credentials) -> RegistryClient:
        return RegistryClient(insecure=self.config.insecure, credentials=logins)

    def _cached_volume(
        self, hv: Hypervisor, node: str, volume: str
    ) -> tuple[str, untrusted.DiskFacts] | None:
        """(path, facts) of `volume` when a Ready row on the node holds it (the same digest under another
        name, or this row's image again), and libvirt still has it."""
        with self.db.read() as session:
            rows = ImageCacheRepository(session).on_node(node, for_update=False)
            holder = next((r for r in rows if r.volume == volume and r.state == READY), None)
            if holder is None:
                return None
            facts = untrusted.DiskFacts("qcow2", holder.virtual_size, holder.size)
        path = hv.volume_path(STORAGE_POOL, volume)
        return None if path is None else (path, facts)

    def _fetch(
        self, manifest: Manifest, scratch: Path, progress: _Progress, logins: Credentials
    ) -> tuple[Path, untrusted.DiskFacts]:
        client = self._client(logins)
        try:
            pulled = pull_disk(client, manifest, scratch, progress.fetched, self.config.max_disk_bytes)
        finally:
            client.close()
        progress.flush()
        return pulled

    def _store(self, hv: Hypervisor, disk: Path, volume: str, row_id: int) -> str:
        self._update(row_id, message="storing on the node")
        return store_file(hv, disk, volume, self.volume_dir, disk.stat().st_size)

    # -- writing -------------------------------------------------------------------------------------
    def _update(self, row_id: int, **fields: object) -> str:
        """Set fields on the row and wake its waiters; the row's image name."""
        with self.db.transaction() as session:
            row = ImageCacheRepository(session).get(row_id, for_update=True)
            if row is None:
                raise RegistryError("the cache entry was removed")
            for key, value in fields.items():
                setattr(row, key, value)
            _wake(session, row)
            return row.name

    def _ready(
        self, row_id: int, manifest: Manifest, volume: str, path: str, facts: untrusted.DiskFacts
    ) -> None:
        self._keep_replaced(row_id, volume)
        self._update(
            row_id,
            state=READY,
            reference=str(manifest.reference),
            volume=volume,
            path=path,
            virtual_size=facts.virtual_size,
            size=facts.file_size,
            message="",
            attempts=0,
            retry_at=None,
            checked_at=self.clock(),
        )

    def _keep_replaced(self, row_id: int, volume: str) -> None:
        """A tag that moved (policy Always) gets a new volume; the old one stays cached under its pinned
        reference, for the instances still on it and for collection when they are gone."""
        with self.db.transaction() as session:
            repo = ImageCacheRepository(session)
            row = repo.get(row_id, for_update=True)
            if row is None or row.volume in (None, volume) or row.reference is None:
                return
            kept, _ = repo.find_or_add(row.node, row.reference, row.wanted_at)
            if kept.path is None:
                for field in ("reference", "volume", "path", "virtual_size", "size", "checked_at"):
                    setattr(kept, field, getattr(row, field))
                kept.state = READY

    def _failed(self, row_id: int, message: str) -> Result:
        log.warning("image pull %s failed: %s", row_id, message)
        with self.db.transaction() as session:
            row = ImageCacheRepository(session).get(row_id, for_update=True)
            if row is None:
                return Result()
            row.attempts += 1
            wait = min(self.config.backoff_seconds * 2 ** (row.attempts - 1), BACKOFF_MAX)
            row.state, row.message = FAILED, message[:2000]
            row.retry_at = self.clock() + timedelta(seconds=wait)
            _wake(session, row)
            return Result(requeue_after=wait if row.waiters else None)

    # -- collection ----------------------------------------------------------------------------------
    def _collect(self, hv: Hypervisor, node: str) -> None:
        """Remove unused images, least recently wanted first, while the node's cache is over budget."""
        with self.db.transaction() as session:
            cached = ImageCacheRepository(session).on_node(node, for_update=True)
            rows = [r for r in cached if r.state == READY]
            sizes = {r.volume: r.size for r in rows if r.volume}
            total = sum(sizes.values())
            if total <= self.config.cache_bytes:
                return
            in_use = hv.volume_backings(STORAGE_POOL)
            recent = self.clock() - self.config.keep_unused
            used_volumes = {r.volume for r in rows if r.path in in_use or r.wanted_at > recent or r.waiters}
            for row in rows:
                if total <= self.config.cache_bytes:
                    break
                if row.volume is None or row.volume in used_volumes or row.volume not in sizes:
                    continue
                hv.delete_volume(STORAGE_POOL, row.volume)
                total -= sizes.pop(row.volume)
                for sharer in rows:
                    if sharer.volume == row.volume:
                        session.delete(sharer)
                log.info("image cache on %s: removed %s (%s)", node, row.volume, row.name)


class _Progress:
    """Pull progress, written at most once per PROGRESS_EVERY seconds."""

    def __init__(self, puller: ImagePuller, row_id: int) -> None:
        self.puller, self.row_id = puller, row_id
        self.done, self._written_at, self._written = 0, 0.0, -1

    def fetched(self, done: int) -> None:
        self.done = done
        if time.monotonic() - self._written_at >= PROGRESS_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.done != self._written:
            self.puller._update(self.row_id, bytes_done=self.done)
            self._written, self._written_at = self.done, time.monotonic()
