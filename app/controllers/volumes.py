"""Volume planning: which disks an instance gets, from which image, in which order."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from app.controllers.naming import volume_file
from app.schemas.common import parse_quantity
from app.schemas.instance import ContainerDiskSource, InstanceSpec
from app.schemas.records import InstanceProgress
from app.virt import images

TARGETS = "abcdefghijklmnopqrstuvwxyz"
# A containerDisk (None: the catalog's default image) -> the image on the node. Raises images.ImageNotFound,
# or app.controllers.image_cache.ImageNotReady while a registry image is being pulled.
ImageResolver = Callable[[ContainerDiskSource | None], images.Image]


@dataclass(frozen=True)
class PlannedVolume:
    """A disk volume Corral creates for an instance, in its node's storage pool."""

    name: str  # the spec's volume name ("root" for the catalog's default image)
    volume_id: str  # the file in the pool: <uid>-<name>.qcow2
    capacity: int
    backing: tuple[str, str] | None  # (path, format) of the image under a copy-on-write overlay
    target: str  # the guest's disk: vda, vdb, ...


def plan_volumes(
    spec: InstanceSpec, resolve: ImageResolver, uid: str
) -> tuple[images.Image, list[PlannedVolume]]:
    """The boot image and the instance's volumes, in disk order. The first containerDisk is the boot image;
    an instance with none boots the catalog's default."""
    boot = next((v for v in spec.volumes if v.container_disk is not None), None)
    volume_images = {v.name: resolve(v.container_disk) for v in spec.volumes if v.container_disk is not None}
    boot_image = volume_images[boot.name] if boot else resolve(None)
    sources: list[tuple[str, int, tuple[str, str] | None]] = []
    if boot is None and boot_image.disk is not None:
        sources.append(("root", *_overlay_of(boot_image)))
    for volume in spec.volumes:
        if volume.container_disk is not None and volume_images[volume.name].disk is not None:
            sources.append((volume.name, *_overlay_of(volume_images[volume.name])))
        elif volume.empty_disk is not None:
            sources.append((volume.name, int(parse_quantity(volume.empty_disk.capacity)), None))
    planned = [
        PlannedVolume(name, volume_file(uid, name), capacity, backing, f"vd{TARGETS[index]}")
        for index, (name, capacity, backing) in enumerate(sources)
    ]
    return boot_image, planned


def _overlay_of(image: images.Image) -> tuple[int, tuple[str, str]]:
    """Capacity and backing (path, format) of a copy-on-write overlay on the image's disk."""
    return image.disk_size or 0, (str(image.disk), image.disk_format or "qcow2")


def volume_names(spec_volumes: Iterable[str], progress: InstanceProgress) -> tuple[str, ...]:
    """Names of the instance's volumes, including any an earlier spec had (deletion must find them all)."""
    return tuple(sorted({"root", *spec_volumes, *progress.volumes}))
