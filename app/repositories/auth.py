"""Tokens and grants."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import GrantRow, TokenRow


def token_by_digest(session: Session, digest: str) -> TokenRow | None:
    return session.scalars(select(TokenRow).where(TokenRow.digest == digest)).one_or_none()


def token_by_name(session: Session, name: str) -> TokenRow | None:
    return session.scalars(select(TokenRow).where(TokenRow.name == name)).one_or_none()


def list_tokens(session: Session) -> list[TokenRow]:
    return list(session.scalars(select(TokenRow).order_by(TokenRow.name)))


def lock_tokens(session: Session) -> list[TokenRow]:
    """Every token, locked for this transaction, in name order."""
    return list(session.scalars(select(TokenRow).order_by(TokenRow.name).with_for_update()))


def add_token(session: Session, token: TokenRow, grants: list[GrantRow]) -> TokenRow:
    token.grants = grants
    session.add(token)
    session.flush()
    return token


def delete_token(session: Session, token: TokenRow) -> None:
    session.delete(token)
    session.flush()
