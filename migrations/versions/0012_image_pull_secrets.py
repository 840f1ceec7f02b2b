"""image pull secrets

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 05:01:46.318838
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cached_images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pull_secret', sa.String(length=127), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('cached_images', schema=None) as batch_op:
        batch_op.drop_column('pull_secret')

