"""Postgres: a pooled connection the server has closed is discarded at checkout, without a round trip per
transaction, so the next transaction succeeds instead of failing once."""

from __future__ import annotations

import time

from sqlalchemy import text

from app.db import Database


def test_a_connection_the_server_terminated_is_replaced_at_checkout(pg_url: str) -> None:
    db = Database(pg_url)
    try:
        with db.transaction() as session:
            victim = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        administrator = Database(pg_url)  # its own pool: the victim stays idle in the first one
        with administrator.transaction() as session:
            session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": victim})
        administrator.dispose()
        time.sleep(0.2)  # the server's goodbye reaches the victim's socket
        with db.transaction() as session:
            survivor = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert survivor != victim
    finally:
        db.dispose()
