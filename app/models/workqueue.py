"""The keyed work queue: one row per key that needs a reconcile pass.

`seq` grows on every enqueue; a lease remembers the `seq` it took, so a key enqueued again while leased is
processed again after the lease ends (controller-runtime's dirty set), and never by two workers at once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UtcDateTime


class WorkItemRow(Base):
    __tablename__ = "work_items"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    due_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, index=True)
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=1)
    leased_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    leased_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
