"""Defining an instance's domain on its node: its volumes in the node's storage pool, then the domain XML.

Every step is idempotent (volumes and the domain have deterministic names); a failure undoes what this pass
created, so nothing half-made is left for the next pass to trip on.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from app.controllers.credentials import SecretMissing, SecretValues, document, seed_keys
from app.controllers.image_cache import ImageNotReady
from app.controllers.instance_status import Observed
from app.controllers.naming import network_for, seed_file
from app.controllers.placement import MIB
from app.controllers.volumes import DataVolumeMissing, DiskFinder, ImageResolver, PlannedVolume, plan_volumes
from app.disks.cloudinit import Seed, SeedKind, build_iso
from app.schemas.instance import InstanceSpec, Interface, requested_memory, requested_vcpus
from app.schemas.network import NetworkSpec
from app.virt import images
from app.virt.disk_import import store_file
from app.virt.domain_xml import DiskConfig, DomainConfig, InterfaceConfig, KernelBoot, build_domain_xml
from app.virt.driver import (
    STORAGE_POOL,
    Hypervisor,
    HypervisorError,
    HypervisorUnavailable,
    InvalidDomainConfig,
    NetworkConfig,
)


@dataclass(frozen=True)
class Owner:
    """Whose domain it is, and where it runs."""

    namespace: str
    name: str
    uid: str
    domain: str
    virt_type: str  # the node's: kvm or qemu
    pci_devices: tuple[str, ...] = ()
    mdev_uuids: tuple[str, ...] = ()


class Definer:
    """Defines domains on nodes; remembers on which nodes the storage pool and the NAT network are known to
    exist."""

    def __init__(self, volume_dir: str, network: NetworkConfig) -> None:
        self.volume_dir = volume_dir
        self.network = network
        self._pools_ready: set[str] = set()  # node URIs

    def define(
        self,
        hv: Hypervisor,
        owner: Owner,
        spec: InstanceSpec,
        resolve: ImageResolver,
        find_disk: DiskFinder,
        networks: Mapping[str, NetworkSpec],
        secrets: SecretValues,
    ) -> Observed | None:
        """Create the volumes and define the domain; None when done, else what to report instead."""
        try:
            boot_image, planned = plan_volumes(spec, resolve, owner.uid, find_disk)
        except images.ImageNotFound as exc:
            return Observed("Failed", "ImageNotFound", str(exc))
        except ImageNotReady as exc:
            return Observed("Scheduled", exc.reason, str(exc))
        except DataVolumeMissing as exc:
            return Observed("Scheduled", "DataVolumeNotReady", str(exc))
        try:
            seed = seed_of(owner, spec, secrets)
        except SecretMissing as exc:
            return Observed("Scheduled", "SecretNotFound", str(exc))
        with ExitStack() as undo:
            try:
                self._ensure_pool(hv, undo)
            except HypervisorUnavailable:
                raise
            except HypervisorError as exc:
                return Observed("Failed", "NodeNotReady", f"the node's storage pool or network: {exc}"[:500])
            try:
                nics = self._nics(hv, spec, networks)
            except LookupError as exc:
                return Observed("Failed", "NetworkNotFound", str(exc))
            disks = [self._volume(hv, volume, undo) for volume in planned]
            if seed is not None:
                disks.append(self._seed(hv, owner.uid, *seed, undo))
            config = domain_config(owner, spec, boot_image, tuple(disks), hv, nics)
            try:
                hv.define(build_domain_xml(config))
            except InvalidDomainConfig as exc:
                return Observed("Failed", "InvalidConfiguration", str(exc)[:500])
            undo.pop_all()
        return None

    def _nics(
        self, hv: Hypervisor, spec: InstanceSpec, networks: Mapping[str, NetworkSpec]
    ) -> tuple[InterfaceConfig, ...]:
        """Each interface on its network: the node's NAT network for `pod: {}` (and for every interface when
        the spec names no networks), a host bridge or a NAT network of its own for a Network resource.
        Raises LookupError naming a Network that is gone."""
        named = {n.name: n for n in spec.networks}
        nics = []
        for nic in spec.domain.devices.interfaces or [Interface(name="default")]:
            network = named.get(nic.name)
            if network is None or network.multus is None:
                nics.append(InterfaceConfig(network=self.network.name, model=nic.model, mac=nic.mac_address))
                continue
            wanted = network.multus.network_name
            target = networks.get(wanted)
            if target is None:
                raise LookupError(f"no Network named {wanted!r}")
            if target.bridge is not None:
                nics.append(InterfaceConfig(bridge=target.bridge.name, model=nic.model, mac=nic.mac_address))
                continue
            assert target.nat is not None
            libvirt_network = network_for(wanted, target.nat.cidr)
            hv.ensure_network(libvirt_network)
            nics.append(InterfaceConfig(network=libvirt_network.name, model=nic.model, mac=nic.mac_address))
        return tuple(nics)

    def forget_pool(self, hv: Hypervisor) -> None:
        self._pools_ready.discard(hv.uri)

    def _ensure_pool(self, hv: Hypervisor, undo: ExitStack) -> None:
        if hv.uri not in self._pools_ready:
            hv.ensure_pool(STORAGE_POOL, self.volume_dir)
            hv.ensure_network(self.network)
            self._pools_ready.add(hv.uri)
        undo.callback(self._pools_ready.discard, hv.uri)  # a failed pass checks the pool again

    def _seed(self, hv: Hypervisor, uid: str, name: str, seed: Seed, undo: ExitStack) -> DiskConfig:
        existed = hv.volume_path(STORAGE_POOL, seed_file(uid, name)) is not None
        path = store_seed(hv, uid, name, seed, self.volume_dir)
        if not existed:
            undo.callback(hv.delete_volume, STORAGE_POOL, seed_file(uid, name))
        # virtio-scsi: every machine type takes it and cloud kernels carry its driver (many have no AHCI).
        return DiskConfig(path=path, target="sda", format="raw", bus="scsi", readonly=True, device="cdrom")

    @staticmethod
    def _volume(hv: Hypervisor, volume: PlannedVolume, undo: ExitStack) -> DiskConfig:
        if volume.attach is not None:  # a DataVolume's disk: it exists, and outlives this instance
            return DiskConfig(path=volume.attach, target=volume.target, serial=volume.name[:20])
        existed = hv.volume_path(STORAGE_POOL, volume.volume_id) is not None
        path = hv.create_volume(STORAGE_POOL, volume.volume_id, volume.capacity, volume.backing)
        if not existed:
            undo.callback(hv.delete_volume, STORAGE_POOL, volume.volume_id)
        return DiskConfig(path=path, target=volume.target, serial=volume.name[:20])


def seed_of(owner: Owner, spec: InstanceSpec, secrets: SecretValues) -> tuple[str, Seed] | None:
    """(volume name, seed) of the instance's cloud-init volume; instance-id is its uid, so a restart keeps
    it (first-boot modules do not run again) and a new instance gets a new one. Raises SecretMissing."""
    volume = next((v for v in spec.volumes if v.cloud_init is not None), None)
    if volume is None or volume.cloud_init is None:
        return None
    kind: SeedKind = "noCloud" if volume.cloud_init_no_cloud is not None else "configDrive"
    source = volume.cloud_init
    seed = Seed(
        kind,
        owner.uid,
        spec.hostname or owner.name,
        document(source, "user_data", secrets),
        document(source, "network_data", secrets),
        tuple(seed_keys(spec, secrets, kind)),
    )
    return volume.name, seed


def store_seed(hv: Hypervisor, uid: str, name: str, seed: Seed, volume_dir: str) -> str:
    """The seed's ISO image in the node's pool (replacing one of that name); its path."""
    image = build_iso(seed)
    with tempfile.TemporaryDirectory(prefix="corral-seed-") as scratch:
        path = Path(scratch) / "seed.iso"
        path.write_bytes(image)
        return store_file(hv, path, seed_file(uid, name), volume_dir, len(image))


def domain_config(
    owner: Owner,
    spec: InstanceSpec,
    boot_image: images.Image,
    disks: tuple[DiskConfig, ...],
    hv: Hypervisor,
    nics: tuple[InterfaceConfig, ...],
) -> DomainConfig:
    """The domain for the spec on this node (pure but for reading the backend's capabilities)."""
    kernel = None
    if boot_image.kernel is not None:
        # The bundle's command line may carry {hostname}; plain text, not a format string.
        cmdline = boot_image.cmdline.replace("{hostname}", spec.hostname or owner.name)
        initrd = str(boot_image.initrd) if boot_image.initrd else None
        kernel = KernelBoot(str(boot_image.kernel), initrd, cmdline)
    capabilities = hv.capabilities
    cpu = spec.domain.cpu
    topology = None
    if cpu is not None and (cpu.cores or cpu.sockets or cpu.threads):
        topology = (cpu.sockets or 1, cpu.cores or 1, cpu.threads or 1)
    console = f"/var/log/libvirt/qemu/{owner.domain}-console.log" if capabilities.console_log else None
    return DomainConfig(
        name=owner.domain,
        uuid=owner.uid,
        virt_type=capabilities.domain_type or owner.virt_type,
        vcpus=requested_vcpus(spec),
        memory_mib=max(requested_memory(spec) // MIB, 16),
        machine=spec.domain.machine.type if spec.domain.machine else "pc",
        kernel_boot=kernel,
        disks=disks,
        interfaces=nics,
        console_log=console,
        graphics=capabilities.runs_guests,
        metadata={"namespace": owner.namespace, "name": owner.name, "uid": owner.uid},
        cpu_topology=topology,
        pci_devices=owner.pci_devices,
        mdev_devices=owner.mdev_uuids,
    )
