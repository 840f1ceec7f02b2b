"""Which service class serves which kind."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.kinds import DATAVOLUMES, INSTANCES, KINDS, MIGRATIONS, NETWORKS, NODES, POOLS, SECRETS
from app.services.datavolumes import DataVolumeService
from app.services.instances import InstanceService
from app.services.migrations import MigrationService
from app.services.networks import NetworkService
from app.services.nodes import NodeService
from app.services.pools import PoolService
from app.services.resources import ResourceService
from app.services.secrets import SecretService


def service_for(session: Session, kind_name: str) -> ResourceService:
    if kind_name == NODES.kind:
        return NodeService(session)
    if kind_name == INSTANCES.kind:
        return InstanceService(session)
    if kind_name == POOLS.kind:
        return PoolService(session)
    if kind_name == MIGRATIONS.kind:
        return MigrationService(session)
    if kind_name == DATAVOLUMES.kind:
        return DataVolumeService(session)
    if kind_name == NETWORKS.kind:
        return NetworkService(session)
    if kind_name == SECRETS.kind:
        return SecretService(session)
    return ResourceService(session, KINDS[kind_name])
