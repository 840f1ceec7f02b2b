"""The change log behind resourceVersion and resumable watches.

Every change takes the next value of the single `revisions` row when its transaction is about to commit (the
row lock, held to commit, orders commits, so a watch that has seen revision N has seen every commit before
N) and appends the object as it then is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UtcDateTime


class RevisionRow(Base):
    __tablename__ = "revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class EventRow(Base):
    __tablename__ = "resource_events"
    __table_args__ = (Index("ix_resource_events_kind_rv", "kind", "rv"),)

    rv: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False)
    name: Mapped[str] = mapped_column(String(63), nullable=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    object: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
