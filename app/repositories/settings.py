"""Installation facts (key/value)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import SettingRow


def get_setting(session: Session, key: str) -> str | None:
    row = session.get(SettingRow, key)
    return row.value if row else None


def set_setting(session: Session, key: str, value: str) -> None:
    row = session.get(SettingRow, key)
    if row is None:
        session.add(SettingRow(key=key, value=value))
    else:
        row.value = value
    session.flush()
