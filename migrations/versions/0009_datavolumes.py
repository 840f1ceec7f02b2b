"""datavolumes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 01:15:47.652136
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('datavolumes',
    sa.Column('node_name', sa.String(length=63), nullable=True),
    sa.Column('progress', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('uid', sa.String(length=36), nullable=False),
    sa.Column('namespace', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('labels', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('annotations', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('spec', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('generation', sa.BigInteger(), nullable=False),
    sa.Column('resource_version', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_datavolumes')),
    sa.UniqueConstraint('namespace', 'name', name='uq_datavolumes_namespace_name'),
    sa.UniqueConstraint('uid', name=op.f('uq_datavolumes_uid'))
    )
    with op.batch_alter_table('datavolumes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_datavolumes_node_name'), ['node_name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('datavolumes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_datavolumes_node_name'))

    op.drop_table('datavolumes')
