"""Guest agent operations (exec, file read/write, freeze/thaw): asked for by the API, run by the worker in the
instance's reconcile pass (so never beside a start or stop of the same instance), and kept as the record of
who ran what, when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UtcDateTime


class OperationRow(Base):
    __tablename__ = "guest_operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    instance_uid: Mapped[str] = mapped_column(String(36), nullable=False, index=True)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False)
    instance: Mapped[str] = mapped_column(String(63), nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    request: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    requested_by: Mapped[str] = mapped_column(String(63), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="Pending")
    result: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    error_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
