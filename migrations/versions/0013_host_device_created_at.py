"""host devices: when each was first seen (metadata.creationTimestamp)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 08:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('host_devices', schema=None) as batch_op:
        batch_op.add_column(sa.Column('created_at', sa.DateTime(timezone=True), nullable=True))
    # Rows already there were first seen no later than their last observed change.
    op.execute("UPDATE host_devices SET created_at = observed_at")
    with op.batch_alter_table('host_devices', schema=None) as batch_op:
        batch_op.alter_column('created_at', existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('host_devices', schema=None) as batch_op:
        batch_op.drop_column('created_at')
