"""A migration's storage on the nodes: which volumes the target must receive a copy of, and removing copies or
originals and leftover definitions once the outcome is known."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress

from app.controllers.credentials import SecretMissing
from app.controllers.definitions import Owner, seed_of, store_seed
from app.controllers.migration_decisions import MigratingInstance
from app.controllers.naming import seed_file, volume_file
from app.controllers.placement import MIB
from app.controllers.volumes import DataVolumeMissing, DiskFinder, ImageResolver, plan_volumes
from app.virt import images
from app.virt.disk_import import data_volume_file
from app.virt.driver import (
    STORAGE_POOL,
    DomainInfo,
    DomainNotFound,
    DomainState,
    Hypervisor,
    HypervisorError,
    NetworkConfig,
)

log = logging.getLogger(__name__)
# A QEMU process exists for the domain: never undefine or remove volumes under it.
HAS_PROCESS = (DomainState.RUNNING, DomainState.BLOCKED, DomainState.PAUSED)
NodeConnector = Callable[[str], Hypervisor]  # a node's name -> its hypervisor; raises HypervisorError
ResolverOn = Callable[[str], ImageResolver]  # a node's name -> how the instance's images are found there


class StorageProblem(Exception):
    """The target cannot be given the instance's volumes; the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MigrationStorage:
    def __init__(
        self, connect: NodeConnector, resolver_on: ResolverOn, volume_dir: str, network: NetworkConfig
    ) -> None:
        self.connect = connect
        self.resolver_on = resolver_on
        self.volume_dir = volume_dir
        self.network = network

    def volumes_to_copy(
        self, instance: MigratingInstance, target: str, known: list[str], probe: str
    ) -> list[str]:
        """Volumes the target's pool does not see, after checking that its pool is not the source's own
        storage (then nothing could be copied onto it safely). Raises StorageProblem."""
        try:
            target_hv = self.connect(target)
            target_hv.ensure_pool(STORAGE_POOL, self.volume_dir)
            for network in (self.network, *instance.nat_networks):  # the guest's NICs name them
                target_hv.ensure_network(network)
            target_hv.refresh_pool(STORAGE_POOL)  # volumes another node created are unknown until then
            source_hv = self.connect(str(instance.node))
            volumes = [volume_file(instance.uid, v) for v in instance.volumes]
            volumes += [data_volume_file(disk.uid) for disk in instance.data_volumes]
            volumes += [seed_file(instance.uid, v.name) for v in instance.spec.volumes if v.cloud_init]
            missing = [
                v
                for v in volumes
                if v not in known
                and source_hv.volume_path(STORAGE_POOL, v)
                and not target_hv.volume_path(STORAGE_POOL, v)
            ]
            copies = known + missing
            if copies and self._shared(source_hv, target_hv, probe):
                unseen = ", ".join(copies)
                message = f"node {target} shares the {STORAGE_POOL} pool's storage but does not see {unseen}"
                raise StorageProblem("TargetStorageMissing", message)
        except HypervisorError as exc:
            raise StorageProblem("TargetNotReady", f"preparing node {target}: {exc}") from exc
        return copies

    def create_copies(self, instance: MigratingInstance, target: str, copies: list[str]) -> None:
        """Empty volumes on the same images for the migration to fill. Raises StorageProblem, or
        ImageNotReady while the target pulls the registry image the source runs on."""
        try:
            target_hv = self.connect(target)
            resolve = self.resolver_on(target)
            planned = plan_volumes(instance.spec, resolve, instance.uid, _by_name(instance))[1]
            # A DataVolume's copy is as large as its disk; the migration fills all of it.
            sizes = {data_volume_file(disk.uid): disk.capacity for disk in instance.data_volumes}
            for volume in planned:
                if volume.volume_id in copies:
                    capacity = sizes.get(volume.volume_id, volume.capacity)
                    target_hv.create_volume(STORAGE_POOL, volume.volume_id, capacity, volume.backing)
            owner = Owner("", instance.hostname, instance.uid, instance.domain, "")
            seed = seed_of(owner, instance.spec, instance.secrets)
            if seed is not None and seed_file(instance.uid, seed[0]) in copies:  # read-only: made, not copied
                store_seed(target_hv, instance.uid, *seed, self.volume_dir)
        except (HypervisorError, images.ImageNotFound, SecretMissing) as exc:
            message = (
                f"node {target} does not see {', '.join(copies)} in its {STORAGE_POOL} pool and could not "
                f"create a copy there: {exc}"
            )
            raise StorageProblem("TargetStorageMissing", message) from exc

    def copied_disks(self, instance: MigratingInstance, copies: list[str]) -> tuple[str, ...]:
        """The guest's disk targets (vda, ...) of the copied volumes. Raises images.ImageNotFound."""
        resolve = self.resolver_on(str(instance.node))
        planned = plan_volumes(instance.spec, resolve, instance.uid, _by_name(instance))[1]
        return tuple(v.target for v in planned if v.volume_id in copies)

    def domain_on(self, node: str, domain: str, uid: str | None) -> DomainInfo | None:
        """The domain on `node` if it is ours (same uuid); raises HypervisorError when the node cannot be
        asked."""
        try:
            info = self.connect(node).lookup(domain)
        except DomainNotFound:
            return None
        return info if uid is None or info.uuid == uid else None

    def clean_target(self, target: str, domain: str, uid: str | None, copies: list[str]) -> None:
        """A failed migration may leave an inactive definition on the target, and the copies it created
        there: remove them (ours only; nothing while our domain has a process there)."""
        with suppress(HypervisorError):
            info = self.domain_on(target, domain, uid)
            if info is not None and info.state in HAS_PROCESS:
                return
            if info is not None:
                self.connect(target).undefine(domain)
            self.delete(target, copies)

    def delete(self, node: str, volumes: list[str]) -> None:
        """Remove the volumes from `node`; a volume that cannot be removed now is logged and left."""
        for volume in volumes:
            try:
                self.connect(node).delete_volume(STORAGE_POOL, volume)
            except HypervisorError as exc:
                log.warning("volume %s stays on %s: %s", volume, node, exc)

    @staticmethod
    def _shared(source_hv: Hypervisor, target_hv: Hypervisor, probe: str) -> bool:
        """Whether the two pools are one storage: a volume made on the target shows on the source. Copies
        are made only where it does not, so removing the source's originals never touches the target's."""
        target_hv.create_volume(STORAGE_POOL, probe, MIB, None)
        try:
            source_hv.refresh_pool(STORAGE_POOL)
            return source_hv.volume_path(STORAGE_POOL, probe) is not None
        finally:
            target_hv.delete_volume(STORAGE_POOL, probe)


def _by_name(instance: MigratingInstance) -> DiskFinder:
    """The instance's DataVolumes as plan_volumes names them (only the file name matters here)."""
    files = {disk.name: data_volume_file(disk.uid) for disk in instance.data_volumes}

    def find(name: str) -> str:
        if name not in files:
            raise DataVolumeMissing(f"DataVolume {name!r} does not exist")
        return files[name]

    return find
