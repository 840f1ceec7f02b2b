"""host-device ledger; settings values of any length

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 15:30:43.462409
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('host_devices',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('node', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('capability', sa.String(length=32), nullable=False),
    sa.Column('facts', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('present', sa.Boolean(), nullable=False),
    sa.Column('observed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('holder_uid', sa.String(length=36), nullable=True),
    sa.Column('holder', sa.String(length=127), nullable=True),
    sa.Column('mdevs', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_host_devices')),
    sa.UniqueConstraint('node', 'name', name='uq_host_devices_node_name')
    )
    with op.batch_alter_table('host_devices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_host_devices_holder'), ['holder'], unique=False)
        batch_op.create_index(batch_op.f('ix_host_devices_holder_uid'), ['holder_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_host_devices_node'), ['node'], unique=False)

    with op.batch_alter_table('settings', schema=None) as batch_op:
        batch_op.alter_column('value',
               existing_type=sa.VARCHAR(length=4000),
               type_=sa.Text(),
               existing_nullable=False)



def downgrade() -> None:
    with op.batch_alter_table('settings', schema=None) as batch_op:
        batch_op.alter_column('value',
               existing_type=sa.Text(),
               type_=sa.VARCHAR(length=4000),
               existing_nullable=False)

    with op.batch_alter_table('host_devices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_host_devices_node'))
        batch_op.drop_index(batch_op.f('ix_host_devices_holder_uid'))
        batch_op.drop_index(batch_op.f('ix_host_devices_holder'))

    op.drop_table('host_devices')
