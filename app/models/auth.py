"""API tokens (stored as SHA-256 digests only) and their per-namespace role grants."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, UtcDateTime


class TokenRow(Base):
    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True, nullable=False)
    digest: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), nullable=False)
    grants: Mapped[list[GrantRow]] = relationship(
        back_populates="token", cascade="all, delete-orphan", lazy="selectin"
    )


class GrantRow(Base):
    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("token_id", "namespace", name="uq_grants_token_namespace"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"), nullable=False)
    namespace: Mapped[str] = mapped_column(String(63), nullable=False)  # "*" grants every namespace
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    token: Mapped[TokenRow] = relationship(back_populates="grants")
