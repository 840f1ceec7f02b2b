"""The resource kinds the API serves, described once; every generic route and service reads this."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from app.repositories.kinds import INSTANCE_INFO, MIGRATION_INFO, NODE_INFO, POOL_INFO
from app.repositories.resources import KindInfo
from app.schemas.common import ApiModel
from app.schemas.instance import Instance, InstanceBody, InstanceList, InstanceSpec
from app.schemas.migration import Migration, MigrationBody, MigrationList, MigrationSpec
from app.schemas.node import Node, NodeBody, NodeList, NodeSpec
from app.schemas.pool import Pool, PoolBody, PoolList, PoolSpec


class Role(IntEnum):
    viewer = 1
    operator = 2
    admin = 3


@dataclass(frozen=True)
class ResourceKind:
    info: KindInfo[Any]
    plural: str
    singular: str  # names SDK methods: listInstances, createInstance, ...
    api_versions: tuple[str, ...]  # accepted in request bodies
    spec_model: type[ApiModel]
    body_model: type[ApiModel]
    object_model: type[ApiModel]
    list_model: type[ApiModel]
    write_role: Role
    read_role: Role = Role.viewer

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def namespaced(self) -> bool:
        return self.info.namespaced

    def work_key(self, namespace: str, name: str) -> str:
        return f"{self.kind}/{namespace}/{name}"


NODES = ResourceKind(
    info=NODE_INFO,
    plural="nodes",
    singular="Node",
    api_versions=("corral.dev/v1", "v1"),
    spec_model=NodeSpec,
    body_model=NodeBody,
    object_model=Node,
    list_model=NodeList,
    write_role=Role.admin,
)

INSTANCES = ResourceKind(
    info=INSTANCE_INFO,
    plural="instances",
    singular="Instance",
    api_versions=("kubevirt.io/v1",),
    spec_model=InstanceSpec,
    body_model=InstanceBody,
    object_model=Instance,
    list_model=InstanceList,
    write_role=Role.operator,
)

POOLS = ResourceKind(
    info=POOL_INFO,
    plural="pools",
    singular="Pool",
    api_versions=("pool.kubevirt.io/v1", "pool.kubevirt.io/v1alpha1", "pool.kubevirt.io/v1beta1"),
    spec_model=PoolSpec,
    body_model=PoolBody,
    object_model=Pool,
    list_model=PoolList,
    write_role=Role.operator,
)

MIGRATIONS = ResourceKind(
    info=MIGRATION_INFO,
    plural="migrations",
    singular="Migration",
    api_versions=("kubevirt.io/v1",),
    spec_model=MigrationSpec,
    body_model=MigrationBody,
    object_model=Migration,
    list_model=MigrationList,
    write_role=Role.operator,
)

KINDS: dict[str, ResourceKind] = {k.kind: k for k in (NODES, INSTANCES, POOLS, MIGRATIONS)}


def parse_work_key(key: str) -> tuple[ResourceKind, str, str]:
    kind, namespace, name = key.split("/", 2)
    return KINDS[kind], namespace, name
