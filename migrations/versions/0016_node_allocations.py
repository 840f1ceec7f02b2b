"""node_allocations: what each node's instances hold, kept by triggers on instances, so placement reads one
row per node instead of summing every placed instance (a cost that grew with the number of instances)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 10:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None

# An instance holds its vCPUs and memory on its node and, while it migrates, on its target as well; one
# with NULL requests (stored before 0014) is counted as unsized until placement fills them in.
HELD = ('node_name', 'migration_target')
MOVES = ('node_name', 'migration_target', 'vcpus', 'memory_bytes')


def _deltas(pseudo: str, sign: str) -> list[str]:
    return [
        f"SELECT {pseudo}.{column} AS node, {sign}coalesce({pseudo}.vcpus, 0) AS vcpus, "
        f"{sign}coalesce({pseudo}.memory_bytes, 0) AS memory_bytes, "
        f"{sign}(CASE WHEN {pseudo}.vcpus IS NULL THEN 1 ELSE 0 END) AS unsized"
        for column in HELD
    ]


def _apply(rows: list[str]) -> str:
    """One upsert of the summed deltas, in node order (two writers touching the same nodes lock them in the
    same order)."""
    return (
        "INSERT INTO node_allocations (node, vcpus, memory_bytes, unsized) "
        "SELECT node, sum(vcpus), sum(memory_bytes), sum(unsized) "
        f"FROM ({' UNION ALL '.join(rows)}) AS d WHERE node IS NOT NULL GROUP BY node ORDER BY node "
        "ON CONFLICT (node) DO UPDATE SET vcpus = node_allocations.vcpus + excluded.vcpus, "
        "memory_bytes = node_allocations.memory_bytes + excluded.memory_bytes, "
        "unsized = node_allocations.unsized + excluded.unsized"
    )


def _placed(pseudo: str) -> str:
    return ' OR '.join(f"{pseudo}.{column} IS NOT NULL" for column in HELD)


def _moved() -> str:
    return ' OR '.join(f"OLD.{column} IS DISTINCT FROM NEW.{column}" for column in MOVES)


def upgrade() -> None:
    op.create_table(
        'node_allocations',
        sa.Column('node', sa.String(length=63), nullable=False),
        sa.Column('vcpus', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('memory_bytes', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('unsized', sa.Integer(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('node', name=op.f('pk_node_allocations')),
    )
    # The instances already placed. SQLite's parser needs the WHERE to tell the upsert from a join's ON.
    op.execute(_apply([row.replace('NEW.', 'instances.') + ' FROM instances' for row in _deltas('NEW', '')]))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            "CREATE FUNCTION instances_allocate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            # OLD is NULL on an INSERT and NEW on a DELETE (PostgreSQL 11+): their rows drop out as NULL nodes.
            f"{_apply(_deltas('OLD', '-') + _deltas('NEW', ''))}; RETURN NULL; END $$"
        )
        op.execute(
            "CREATE TRIGGER instances_allocate_insert AFTER INSERT ON instances FOR EACH ROW "
            f"WHEN ({_placed('NEW')}) EXECUTE FUNCTION instances_allocate()"
        )
        op.execute(
            "CREATE TRIGGER instances_allocate_delete AFTER DELETE ON instances FOR EACH ROW "
            f"WHEN ({_placed('OLD')}) EXECUTE FUNCTION instances_allocate()"
        )
        op.execute(
            f"CREATE TRIGGER instances_allocate_update AFTER UPDATE OF {', '.join(MOVES)} ON instances "
            f"FOR EACH ROW WHEN ({_moved()}) EXECUTE FUNCTION instances_allocate()"
        )
        return
    for event, rows, when in (
        ('INSERT', _deltas('NEW', ''), _placed('NEW')),
        ('DELETE', _deltas('OLD', '-'), _placed('OLD')),
        (f"UPDATE OF {', '.join(MOVES)}", _deltas('OLD', '-') + _deltas('NEW', ''), _moved()),
    ):
        name = f"instances_allocate_{event.split()[0].lower()}"
        op.execute(f"CREATE TRIGGER {name} AFTER {event} ON instances FOR EACH ROW WHEN {when} BEGIN {_apply(rows)}; END")


def downgrade() -> None:
    for event in ('insert', 'delete', 'update'):
        op.execute(f"DROP TRIGGER instances_allocate_{event}" + (' ON instances' if op.get_bind().dialect.name == 'postgresql' else ''))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION instances_allocate()")
    op.drop_table('node_allocations')
