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


# A DataVolume's name -> the path of its disk on the instance's node. Raises DataVolumeMissing.
DiskFinder = Callable[[str], str]


class DataVolumeMissing(LookupError):
    """A DataVolume the instance attaches has no disk on its node; the message says which."""


def no_data_volumes(name: str) -> str:
    raise DataVolumeMissing(f"DataVolume {name!r} cannot be attached here")


@dataclass(frozen=True)
class PlannedVolume:
    """A disk of the instance: a volume Corral creates in its node's storage pool, or (`attach`) a
    DataVolume's disk that exists already and outlives the instance."""

    name: str  # the spec's volume name ("root" for the catalog's default image)
    volume_id: str  # the file in the pool: <uid>-<name>.qcow2
    capacity: int
    backing: tuple[str, str] | None  # (path, format) of the image under a copy-on-write overlay
    target: str  # the guest's disk: vda, vdb, ...
    attach: str | None = None  # the DataVolume disk's path: attached as it is, never created or removed


def plan_volumes(
    spec: InstanceSpec, resolve: ImageResolver, uid: str, find_disk: DiskFinder = no_data_volumes
) -> tuple[images.Image, list[PlannedVolume]]:
    """The boot image and the instance's volumes, in disk order. The first containerDisk is the boot image;
    an instance with none boots the catalog's default (a DataVolume first in the list boots instead)."""
    boot = next((v for v in spec.volumes if v.container_disk is not None), None)
    volume_images = {v.name: resolve(v.container_disk) for v in spec.volumes if v.container_disk is not None}
    disk_boots = bool(spec.volumes) and spec.volumes[0].data_volume_name is not None
    if boot is not None:
        boot_image = volume_images[boot.name]
    else:
        boot_image = images.NO_IMAGE if disk_boots else resolve(None)
    sources: list[tuple[str, int, tuple[str, str] | None, str | None]] = []
    if boot is None and boot_image.disk is not None:
        sources.append(("root", *_overlay_of(boot_image), None))
    for volume in spec.volumes:
        data_volume = volume.data_volume_name
        if volume.container_disk is not None and volume_images[volume.name].disk is not None:
            sources.append((volume.name, *_overlay_of(volume_images[volume.name]), None))
        elif volume.empty_disk is not None:
            sources.append((volume.name, int(parse_quantity(volume.empty_disk.capacity)), None, None))
        elif data_volume is not None:
            sources.append((volume.name, 0, None, find_disk(data_volume)))
    planned = [
        PlannedVolume(
            name,
            attach.rsplit("/", 1)[-1] if attach else volume_file(uid, name),
            capacity,
            backing,
            f"vd{TARGETS[index]}",
            attach,
        )
        for index, (name, capacity, backing, attach) in enumerate(sources)
    ]
    return boot_image, planned


def _overlay_of(image: images.Image) -> tuple[int, tuple[str, str]]:
    """Capacity and backing (path, format) of a copy-on-write overlay on the image's disk."""
    return image.disk_size or 0, (str(image.disk), image.disk_format or "qcow2")


def volume_names(spec_volumes: Iterable[str], progress: InstanceProgress) -> tuple[str, ...]:
    """Names of the instance's volumes, including any an earlier spec had (deletion must find them all)."""
    return tuple(sorted({"root", *spec_volumes, *progress.volumes}))
