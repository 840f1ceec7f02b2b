"""Alembic environment: Corral's tables, with a Postgres advisory lock so that several processes
starting at once migrate one at a time."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from app.models import Base

MIGRATION_LOCK = 0x636F7272  # "corr"
config = context.config
target_metadata = Base.metadata


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            conn.commit()
        try:
            # SQLite alters tables by copying them ("batch" mode).
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=not postgres)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if postgres:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                conn.commit()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
