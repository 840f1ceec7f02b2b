"""What each node's instances hold is kept by triggers on instances (migration 0016): whatever writes the
rows, the counters equal the sums placement used to compute over every placed instance."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from sqlalchemy import create_engine, delete, select, text, update

from app.clock import utc_now
from app.db import Database
from app.migrate import upgrade
from app.models import InstanceRow, NodeAllocationRow
from app.repositories.instances import InstanceRepository
from tests.repositories.test_revisions import new_instance

NODES = ("a", "b", "c", None)
Sums = dict[str, tuple[int, int, int]]


def summed_over_every_instance(db: Database, exclude_uid: str = "") -> Sums:
    """The reference: what placement summed before the counters (node, then migration target)."""
    sums: dict[str, list[int]] = {}
    with db.read() as session:
        for row in session.scalars(select(InstanceRow).where(InstanceRow.uid != exclude_uid)):
            for node in (row.node_name, row.migration_target):
                if node is not None:
                    held = sums.setdefault(node, [0, 0, 0])
                    held[0] += row.vcpus or 0
                    held[1] += row.memory_bytes or 0
                    held[2] += row.vcpus is None
    return {node: (v, m, u) for node, (v, m, u) in sums.items()}


def kept(db: Database) -> Sums:
    with db.read() as session:
        return {
            row.node: (row.vcpus, row.memory_bytes, row.unsized)
            for row in session.scalars(select(NodeAllocationRow))
            if (row.vcpus, row.memory_bytes, row.unsized) != (0, 0, 0)
        }


def placed_instance(name: str, rnd: random.Random) -> InstanceRow:
    row = new_instance(name)
    row.resource_version, row.created_at = 0, utc_now()
    row.node_name, row.migration_target = rnd.choice(NODES), rnd.choice((None, None, "b"))
    row.vcpus, row.memory_bytes = rnd.choice((1, 2, None)), rnd.choice((1 << 30, 2 << 30))
    return row


def test_counters_follow_inserts_moves_resizes_and_deletes(db: Database) -> None:
    rnd = random.Random(20261203)
    for step in range(200):
        with db.transaction() as session:
            ids = list(session.scalars(select(InstanceRow.id)))
            dice = rnd.random()
            if dice < 0.35 or not ids:
                session.add(placed_instance(f"i-{step}", rnd))
            elif dice < 0.55:
                session.execute(delete(InstanceRow).where(InstanceRow.id == rnd.choice(ids)))
            elif dice < 0.75:
                chosen = session.get(InstanceRow, rnd.choice(ids))
                assert chosen is not None
                chosen.node_name = rnd.choice(NODES)  # placed, switched over, or let go
            elif dice < 0.85:
                moved = update(InstanceRow).where(InstanceRow.id == rnd.choice(ids))
                session.execute(moved.values(migration_target=rnd.choice(NODES)))
            elif dice < 0.95:
                resized = update(InstanceRow).where(InstanceRow.id == rnd.choice(ids))
                session.execute(resized.values(vcpus=rnd.choice((1, 4, None)), memory_bytes=5 << 30))
            else:  # a write that moves nothing
                untouched = update(InstanceRow).where(InstanceRow.id == rnd.choice(ids))
                session.execute(untouched.values(status={}))
        assert kept(db) == summed_over_every_instance(db), f"after step {step}"
    assert kept(db), "the run placed nothing: it proved nothing"
    with db.transaction() as session:  # it fills the sums of unsized rows
        some = session.scalars(select(InstanceRow).where(InstanceRow.node_name.is_not(None))).first()
        assert some is not None
        used = InstanceRepository(session).used_by_node(some.uid)
    expected = {node: (v, m) for node, (v, m, _) in summed_over_every_instance(db, some.uid).items()}
    assert {node: held for node, held in used.items() if held != (0, 0)} == {
        node: held for node, held in expected.items() if held != (0, 0)
    }


def test_the_migration_counts_instances_placed_before_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'corral.db'}"
    upgrade(url, "0015")
    engine = create_engine(url)
    with engine.begin() as conn:
        for name, node, target, vcpus in (("x", "a", None, 2), ("y", "a", "b", 4), ("z", "b", None, None)):
            conn.execute(
                text(
                    "INSERT INTO instances (uid, namespace, name, labels, annotations, spec, status,"
                    " generation, resource_version, created_at, intent, progress, guest, node_name,"
                    " migration_target,"
                    " vcpus, memory_bytes) VALUES (:uid, 'default', :name, '{}', '{}', '{}', '{}', 1, 1,"
                    " CURRENT_TIMESTAMP, '{}', '{}', '{}', :node, :target, :vcpus, 1024)"
                ),
                {"uid": str(uuid.uuid4()), "name": name, "node": node, "target": target, "vcpus": vcpus},
            )
    upgrade(url)
    with engine.connect() as conn:
        counted = set(conn.execute(text("SELECT node, vcpus, memory_bytes, unsized FROM node_allocations")))
    engine.dispose()
    assert counted == {("a", 6, 2048, 0), ("b", 4, 2048, 1)}
