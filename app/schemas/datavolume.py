"""DataVolume (CDI's cdi.kubevirt.io/v1beta1 shape): a disk imported, uploaded, cloned or blank, kept on one
node and attached to instances by name (`dataVolume` or `persistentVolumeClaim` volumes)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from app.disks.reference import REFERENCE_PATTERN
from app.schemas.common import (
    ApiModel,
    Condition,
    DnsLabel,
    JsonObject,
    ListMeta,
    ObjectMeta,
    ObjectMetaOut,
    Quantity,
    exactly_one_of,
    parse_quantity,
)
from app.schemas.conditions import set_condition

DataVolumePhase = Literal[
    "Pending", "ImportScheduled", "ImportInProgress", "UploadReady", "CloneInProgress", "Succeeded", "Failed"
]
CHECKSUM_PATTERN = r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$"


# The host part: no brackets but around an IPv6 address, as a URL parser requires.
HTTP_URL_PATTERN = r"^https?://([^\s/?#\[\]]+|[^\s/?#\[\]]*\[[0-9A-Fa-f:.]+\])(:[0-9]*)?([/?#]\S*)?$"


class HttpSource(ApiModel):
    url: str = Field(
        max_length=2000,
        pattern=HTTP_URL_PATTERN,
        description="An http(s) URL of a qcow2 or raw disk. Loopback, link-local and metadata addresses are "
        "refused unless the host is in CORRAL_IMPORT_ALLOWED_HOSTS.",
    )
    checksum: str | None = Field(
        default=None, pattern=CHECKSUM_PATTERN, description="sha256:<hex> or sha512:<hex> of the file."
    )

    @field_validator("url")
    @classmethod
    def _parses(cls, url: str) -> str:
        urlsplit(url)  # a ValueError (e.g. a bracketed host that is no IPv6 address) is the field's 422
        return url


class RegistrySource(ApiModel):
    url: str = Field(
        max_length=262,
        pattern="^docker://" + REFERENCE_PATTERN.removeprefix("^"),
        description="docker://host/repository:tag (or @sha256:...): a containerDisk image.",
    )
    secret_ref: DnsLabel | None = Field(
        default=None,
        description="CDI's registry login: a Secret in the DataVolume's namespace with `accessKeyId` (user) "
        "and `secretKey` (password), or a kubernetes.io/dockerconfigjson Secret.",
    )


class EmptySource(ApiModel):
    """`upload: {}` and `blank: {}` take no fields."""


class PvcSource(ApiModel):
    namespace: DnsLabel | None = Field(default=None, description="Default: the DataVolume's own.")
    name: DnsLabel


class DataVolumeSource(ApiModel):
    model_config = exactly_one_of("http", "registry", "upload", "blank", "pvc")

    http: HttpSource | None = None
    registry: RegistrySource | None = None
    upload: EmptySource | None = None
    blank: EmptySource | None = None
    pvc: PvcSource | None = None

    @model_validator(mode="after")
    def _one(self) -> DataVolumeSource:
        given = [k for k in ("http", "registry", "upload", "blank", "pvc") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("exactly one source: http, registry, upload, blank or pvc")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("http", "registry", "upload", "blank", "pvc") if getattr(self, k) is not None)


class StorageRequests(ApiModel):
    storage: Quantity


class StorageResources(ApiModel):
    requests: StorageRequests


class StorageSpec(ApiModel):
    resources: StorageResources | None = None
    access_modes: list[Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]] = Field(
        default_factory=list, description="Accepted for CDI compatibility; a disk has one writer at a time."
    )
    storage_class_name: str | None = Field(default=None, max_length=253, description="Accepted, ignored.")
    volume_mode: Literal["Filesystem", "Block"] | None = Field(default=None, description="Accepted, ignored.")


class DataVolumeSpec(ApiModel):
    source: DataVolumeSource
    storage: StorageSpec | None = Field(default=None, description="spec.storage.resources.requests.storage")
    pvc: StorageSpec | None = Field(default=None, description="CDI's older spelling of spec.storage.")
    content_type: Literal["kubevirt"] = "kubevirt"
    node_name: DnsLabel | None = Field(
        default=None,
        description="Corral: the node to keep the disk on (default: chosen; a clone's source's).",
    )

    @model_validator(mode="after")
    def _size(self) -> DataVolumeSpec:
        if self.storage is not None and self.pvc is not None:
            raise ValueError("give spec.storage or spec.pvc, not both")
        if self.requested_bytes() is None and self.source.kind in ("blank", "upload"):
            raise ValueError(f"a {self.source.kind} DataVolume needs spec.storage.resources.requests.storage")
        return self

    def requested_bytes(self) -> int | None:
        storage = self.storage or self.pvc
        if storage is None or storage.resources is None:
            return None
        return int(parse_quantity(storage.resources.requests.storage))


class DataVolumeStatus(ApiModel):
    model_config = ApiModel.model_config | {"extra": "allow"}

    phase: DataVolumePhase = "Pending"
    progress: str = Field(default="N/A", description='Import or clone progress, e.g. "45.3%".')
    node_name: str | None = Field(default=None, description="The node that holds the disk.")
    capacity: int | None = Field(default=None, description="Virtual size of the disk, bytes.")
    claimed_by: str | None = Field(default=None, description="The instance using it (namespace/name).")
    restart_count: int = 0
    conditions: list[Condition] = Field(default_factory=list)


class DataVolumeBody(ApiModel):
    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta
    spec: DataVolumeSpec
    status: Any = Field(default=None, description="Ignored: status is written by Corral.")


class DataVolume(ApiModel):
    api_version: str = "cdi.kubevirt.io/v1beta1"
    kind: str = "DataVolume"
    metadata: ObjectMetaOut
    spec: DataVolumeSpec
    status: DataVolumeStatus


class DataVolumeList(ApiModel):
    api_version: str = "cdi.kubevirt.io/v1beta1"
    kind: str = "DataVolumeList"
    metadata: ListMeta
    items: list[DataVolume]


def data_volume_status(
    previous: JsonObject,
    phase: str,
    node: str | None,
    at: datetime,
    *,
    progress: str | None = None,
    message: str = "",
    capacity: int | None = None,
) -> JsonObject:
    """CDI's status: phase, progress, and the Bound/Ready/Running conditions."""
    status: JsonObject = {k: v for k, v in previous.items() if k not in ("message",)}
    status["conditions"] = [dict(c) for c in previous.get("conditions", [])]
    status["phase"] = phase
    status["progress"] = progress or ("100.0%" if phase == "Succeeded" else previous.get("progress", "N/A"))
    if node:
        status["nodeName"] = node
    if capacity is not None:
        status["capacity"] = capacity
    if message:
        status["message"] = message
    running = phase in ("ImportInProgress", "CloneInProgress")
    bound = node is not None and phase != "Pending"
    set_condition(status, "Bound", str(bound), "Bound" if bound else "Pending", "", at)
    ready = phase == "Succeeded"
    set_condition(status, "Ready", str(ready), phase, "" if ready else message, at)
    why = phase if running else ("Completed" if ready else phase)
    set_condition(status, "Running", str(running), why, message if phase == "Failed" else "", at)
    return status
