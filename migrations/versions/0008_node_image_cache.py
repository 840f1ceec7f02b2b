"""node image cache

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 01:02:35.353322
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('cached_images',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('node', sa.String(length=63), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reference', sa.String(length=400), nullable=True),
    sa.Column('volume', sa.String(length=100), nullable=True),
    sa.Column('path', sa.String(length=1000), nullable=True),
    sa.Column('virtual_size', sa.BigInteger(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('bytes_done', sa.BigInteger(), nullable=False),
    sa.Column('bytes_total', sa.BigInteger(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wanted_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('waiters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_cached_images')),
    sa.UniqueConstraint('node', 'name', name='uq_cached_images_node_name')
    )
    with op.batch_alter_table('cached_images', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cached_images_node'), ['node'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('cached_images', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cached_images_node'))

    op.drop_table('cached_images')
