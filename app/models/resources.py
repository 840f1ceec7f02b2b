"""One table per kind, all with the shared resource columns."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, ResourceRow


class NodeRow(ResourceRow, Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_nodes_namespace_name"),)


class InstanceRow(ResourceRow, Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_instances_namespace_name"),)

    # Where the worker placed the instance; a column so per-node queries need no JSON lookups.
    node_name: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    # What users asked for through actions (power state, restart and reboot counters): desired state
    # beside the spec, written by the API and, when the runStrategy ends a run, by the worker.
    intent: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # The worker's own bookkeeping, so a restarted worker resumes where the last one stopped.
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # The guest agent's last report: sections (osInfo, interfaces, ...) and when they were observed.
    guest: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    # The warm pool this instance is an unclaimed member of (a claim clears it).
    pool_uid: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    # What it holds on its node (from the spec) and the node a migration is moving it to (from progress):
    # columns so that a placement sums the cluster in one query instead of reading every instance.
    vcpus: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    migration_target: Mapped[str | None] = mapped_column(String(63), nullable=True)


class PoolRow(ResourceRow, Base):
    __tablename__ = "pools"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_pools_namespace_name"),)


class MigrationRow(ResourceRow, Base):
    __tablename__ = "migrations"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_migrations_namespace_name"),)

    # The instance it moves (spec.vmiName), a column so "the migrations of this instance" needs no JSON.
    vmi_name: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    # Requests beside the spec (abort), written by the API and read by the worker driving the migration.
    intent: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)


class DataVolumeRow(ResourceRow, Base):
    __tablename__ = "datavolumes"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_datavolumes_namespace_name"),)

    # The node holding the disk, once chosen; a column so placement finds it without JSON lookups.
    node_name: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    # The worker's bookkeeping (import attempts, the volume's name), so a restarted worker resumes.
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)


class NetworkRow(ResourceRow, Base):
    __tablename__ = "networks"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_networks_namespace_name"),)


class SecretRow(ResourceRow, Base):
    """A Secret: `spec` holds its type and its values sealed (app.sealing), never the values themselves."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_secrets_namespace_name"),)
