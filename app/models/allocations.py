"""What the instances placed on each node hold, kept by database triggers on `instances` (migration 0016), so
a placement reads one row per node instead of summing every placed instance."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base


class NodeAllocationRow(Base):
    __tablename__ = "node_allocations"

    node: Mapped[str] = mapped_column(String(63), primary_key=True)
    vcpus: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    memory_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    # Instances counted here whose vcpus/memory_bytes are NULL (stored before migration 0014): placement
    # fills them from their spec, which the triggers then count.
    unsized: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
