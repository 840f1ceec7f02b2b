"""One table per kind, all with the shared resource columns."""

from __future__ import annotations

from sqlalchemy import String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, ResourceRow


class NodeRow(ResourceRow, Base):
    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_nodes_namespace_name"),)


class InstanceRow(ResourceRow, Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_instances_namespace_name"),)

    # Where the worker placed the instance; a column so per-node queries need no JSON lookups.
    node_name: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
