"""The resource kinds Corral serves, described once: how each is stored, served, authorized and queued."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from app.models import (
    DataVolumeRow,
    InstanceRow,
    MigrationRow,
    NetworkRow,
    NodeRow,
    PoolRow,
    ResourceRow,
    SecretRow,
)
from app.schemas.auth import Role
from app.schemas.common import ApiModel
from app.schemas.datavolume import DataVolume, DataVolumeBody, DataVolumeList, DataVolumeSpec
from app.schemas.instance import Instance, InstanceBody, InstanceList, InstanceSpec
from app.schemas.migration import Migration, MigrationBody, MigrationList, MigrationSpec
from app.schemas.network import NetworkBody, NetworkList, NetworkObject, NetworkSpec
from app.schemas.node import Node, NodeBody, NodeList, NodeSpec
from app.schemas.pool import Pool, PoolBody, PoolList, PoolSpec
from app.schemas.secret import SecretBody, SecretList, SecretObject, SecretSpec
from app.sealing import shown_secret

RowT = TypeVar("RowT", bound=ResourceRow)


@dataclass(frozen=True)
class Kind(Generic[RowT]):
    kind: str
    api_version: str  # what the API writes in answers
    row: type[RowT]
    namespaced: bool
    plural: str
    singular: str  # names SDK methods: listInstances, createInstance, ...
    api_versions: tuple[str, ...]  # accepted in request bodies
    spec_model: type[ApiModel]
    body_model: type[ApiModel]
    object_model: type[ApiModel]
    list_model: type[ApiModel]
    write_role: Role
    read_role: Role = Role.viewer
    # How a stored object (as in the change log) is shown to clients, when that differs.
    present: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def shown(self, stored: dict[str, Any]) -> dict[str, Any]:
        return self.present(stored) if self.present is not None else stored

    def work_key(self, namespace: str, name: str) -> str:
        return f"{self.kind}/{namespace}/{name}"


def split_work_key(key: str) -> tuple[str, str, str]:
    """(kind, namespace, name) of a work key; names hold no slash, so the split is exact."""
    kind, namespace, name = key.split("/", 2)
    return kind, namespace, name


NODES = Kind(
    kind="Node",
    api_version="corral.dev/v1",
    row=NodeRow,
    namespaced=False,
    plural="nodes",
    singular="Node",
    api_versions=("corral.dev/v1", "v1"),
    spec_model=NodeSpec,
    body_model=NodeBody,
    object_model=Node,
    list_model=NodeList,
    write_role=Role.admin,
)

INSTANCES = Kind(
    kind="VirtualMachineInstance",
    api_version="kubevirt.io/v1",
    row=InstanceRow,
    namespaced=True,
    plural="instances",
    singular="Instance",
    api_versions=("kubevirt.io/v1",),
    spec_model=InstanceSpec,
    body_model=InstanceBody,
    object_model=Instance,
    list_model=InstanceList,
    write_role=Role.operator,
)

POOLS = Kind(
    kind="VirtualMachinePool",
    api_version="pool.kubevirt.io/v1",
    row=PoolRow,
    namespaced=True,
    plural="pools",
    singular="Pool",
    api_versions=("pool.kubevirt.io/v1", "pool.kubevirt.io/v1alpha1", "pool.kubevirt.io/v1beta1"),
    spec_model=PoolSpec,
    body_model=PoolBody,
    object_model=Pool,
    list_model=PoolList,
    write_role=Role.operator,
)

MIGRATIONS = Kind(
    kind="VirtualMachineInstanceMigration",
    api_version="kubevirt.io/v1",
    row=MigrationRow,
    namespaced=True,
    plural="migrations",
    singular="Migration",
    api_versions=("kubevirt.io/v1",),
    spec_model=MigrationSpec,
    body_model=MigrationBody,
    object_model=Migration,
    list_model=MigrationList,
    write_role=Role.operator,
)

DATAVOLUMES = Kind(
    kind="DataVolume",
    api_version="cdi.kubevirt.io/v1beta1",
    row=DataVolumeRow,
    namespaced=True,
    plural="datavolumes",
    singular="DataVolume",
    api_versions=("cdi.kubevirt.io/v1beta1", "cdi.kubevirt.io/v1alpha1"),
    spec_model=DataVolumeSpec,
    body_model=DataVolumeBody,
    object_model=DataVolume,
    list_model=DataVolumeList,
    write_role=Role.operator,
)

NETWORKS = Kind(
    kind="Network",
    api_version="corral.dev/v1",
    row=NetworkRow,
    namespaced=False,
    plural="networks",
    singular="Network",
    api_versions=("corral.dev/v1",),
    spec_model=NetworkSpec,
    body_model=NetworkBody,
    object_model=NetworkObject,
    list_model=NetworkList,
    write_role=Role.admin,
)

SECRETS = Kind(
    kind="Secret",
    api_version="v1",
    row=SecretRow,
    namespaced=True,
    plural="secrets",
    singular="Secret",
    api_versions=("v1",),
    spec_model=SecretSpec,
    body_model=SecretBody,
    object_model=SecretObject,
    list_model=SecretList,
    write_role=Role.operator,
    # Kubernetes' `view` role cannot read Secrets either: their values are credentials.
    read_role=Role.operator,
    present=shown_secret,
)

KINDS: dict[str, Kind[Any]] = {
    k.kind: k for k in (NODES, INSTANCES, POOLS, MIGRATIONS, DATAVOLUMES, NETWORKS, SECRETS)
}
