"""SQLAlchemy tables. Importing this package registers every table on `Base.metadata`."""

from app.models.allocations import NodeAllocationRow
from app.models.auth import GrantRow, TokenRow
from app.models.base import Base, ResourceRow
from app.models.devices import HostDeviceRow
from app.models.events import EventRow, RevisionRow
from app.models.idempotency import IdempotencyRow
from app.models.images import CachedImageRow
from app.models.operations import OperationRow
from app.models.resources import (
    DataVolumeRow,
    InstanceRow,
    MigrationRow,
    NetworkRow,
    NodeRow,
    PoolRow,
    SecretRow,
)
from app.models.settings import SettingRow
from app.models.workqueue import WorkItemRow

__all__ = [
    "Base",
    "CachedImageRow",
    "DataVolumeRow",
    "EventRow",
    "GrantRow",
    "HostDeviceRow",
    "IdempotencyRow",
    "InstanceRow",
    "MigrationRow",
    "NetworkRow",
    "NodeAllocationRow",
    "NodeRow",
    "OperationRow",
    "PoolRow",
    "ResourceRow",
    "RevisionRow",
    "SecretRow",
    "SettingRow",
    "TokenRow",
    "WorkItemRow",
]
