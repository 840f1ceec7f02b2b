"""guest operations

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 14:23:02.031793
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('guest_operations',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('instance_uid', sa.String(length=36), nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('instance', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('request', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('requested_by', sa.String(length=63), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error_status', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=2000), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_guest_operations'))
    )
    with op.batch_alter_table('guest_operations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_guest_operations_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_guest_operations_instance_uid'), ['instance_uid'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('guest_operations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_guest_operations_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_guest_operations_created_at'))

    op.drop_table('guest_operations')
