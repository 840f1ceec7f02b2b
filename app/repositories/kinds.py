"""Storage facts of each kind (the API-level description is app.services.kinds)."""

from __future__ import annotations

from app.models import InstanceRow, MigrationRow, NodeRow, PoolRow
from app.repositories.resources import KindInfo

NODE_INFO = KindInfo(kind="Node", api_version="corral.dev/v1", row=NodeRow, namespaced=False)
POOL_INFO = KindInfo(
    kind="VirtualMachinePool", api_version="pool.kubevirt.io/v1", row=PoolRow, namespaced=True
)
INSTANCE_INFO = KindInfo(kind="VirtualMachineInstance", api_version="kubevirt.io/v1", row=InstanceRow,
                         namespaced=True)  # fmt: skip
MIGRATION_INFO = KindInfo(
    kind="VirtualMachineInstanceMigration", api_version="kubevirt.io/v1", row=MigrationRow, namespaced=True
)
