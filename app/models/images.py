"""The node image cache: registry images pulled onto a node's storage pool, one row per node and name."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, BigIntKey, JSONType, UtcDateTime


class CachedImageRow(Base):
    __tablename__ = "cached_images"
    __table_args__ = (UniqueConstraint("node", "name", name="uq_cached_images_node_name"),)

    id: Mapped[int] = mapped_column(BigIntKey, primary_key=True, autoincrement=True)
    node: Mapped[str] = mapped_column(String(63), nullable=False, index=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)  # as the spec wrote it: ubuntu:22.04
    # Pending (wanted, not started), Pulling, Ready, Failed (retried at retry_at while someone waits).
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    reference: Mapped[str | None] = mapped_column(String(400), nullable=True)  # resolved, @digest pinned
    volume: Mapped[str | None] = mapped_column(String(100), nullable=True)  # in the node's storage pool
    path: Mapped[str | None] = mapped_column(String(1000), nullable=True)  # the volume's path on the node
    virtual_size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)  # bytes the volume takes
    bytes_done: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    message: Mapped[str] = mapped_column(Text, nullable=False, default="")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # failures in a row
    retry_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)  # registry last asked
    wanted_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)  # an instance last used it
    # The Secret (namespace/name) with the registry login the last instance asking for it named.
    pull_secret: Mapped[str | None] = mapped_column(String(127), nullable=True)
    # Work keys of the instances waiting for it: woken on every change of state or progress.
    waiters: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
