"""Postgres: the change log and the work queue send their own NOTIFY (a statement-level trigger), so a
write costs no extra round trip to wake other processes' watches and workers

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 14:40:00.000000
"""

from __future__ import annotations

from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

# (table, channel): the channel names are app.db's EVENTS_CHANNEL and WORK_CHANNEL.
NOTIFYING = (('resource_events', 'corral_events'), ('work_items', 'corral_work'))


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return  # SQLite has one process: its in-process hub is all the waking there is
    for table, channel in NOTIFYING:
        op.execute(
            f"CREATE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$ "
            # The payload names the writer (its application_name): a process skips its own, already heard.
            f"BEGIN PERFORM pg_notify('{channel}', current_setting('application_name')); RETURN NULL; END $$"
        )
        # INSERT statements only (an upsert is one): leases and releases update rows and must not wake anyone.
        op.execute(
            f"CREATE TRIGGER {table}_notify AFTER INSERT ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, _channel in NOTIFYING:
        op.execute(f"DROP TRIGGER {table}_notify ON {table}")
        op.execute(f"DROP FUNCTION {table}_notify()")
