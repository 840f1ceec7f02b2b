"""Answers to requests sent with an Idempotency-Key: a retry gets the first answer and acts once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UtcDateTime


class IdempotencyRow(Base):
    __tablename__ = "idempotency_keys"

    principal: Mapped[str] = mapped_column(String(63), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request: Mapped[str] = mapped_column(String(1024), nullable=False)  # method and path it answered
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False, index=True)
