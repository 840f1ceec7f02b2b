"""instances: vCPUs, memory and migration target as columns (placement sums them in SQL)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Left empty for rows already there: the first placement fills them from each spec.
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.add_column(sa.Column('vcpus', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('memory_bytes', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('migration_target', sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_column('migration_target')
        batch_op.drop_column('memory_bytes')
        batch_op.drop_column('vcpus')
