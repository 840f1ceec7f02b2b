"""The reconcilers against the strict in-memory hypervisor and the embedded database: each drives its object
to the desired state, and once there, a pass writes nothing and changes nothing in the hypervisor."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.controllers.instances import InstanceReconciler
from app.controllers.migration_policy import Policy
from app.controllers.migrations import MigrationReconciler
from app.controllers.nodes import NodeReconciler
from app.controllers.pools import PoolReconciler
from app.db import Database
from app.kinds import INSTANCES, MIGRATIONS, NODES, POOLS
from app.repositories.resources import ResourceRepository
from app.repositories.revisions import current_revision
from app.schemas.phases import Action
from app.services.instances import InstanceService
from app.services.migrations import MigrationService
from app.services.pools import PoolService
from app.services.resources import ResourceService
from app.virt.driver import STORAGE_POOL, DomainState
from tests.conftest import reset
from tests.fakes import FakeHypervisor, FakeNodes

NS = "steady"
START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class Rig:
    """The node, instance, pool and migration reconcilers on one fake node and SQLite."""

    def __init__(self, db: Database, image_dir: Path) -> None:
        self.db = db
        self.clock = Clock()
        self.nodes = FakeNodes()
        self.node_reconciler = NodeReconciler(db, self.nodes, heartbeat_seconds=30)
        self.instances = InstanceReconciler(db, self.nodes, image_dir, clock=self.clock)
        self.pools = PoolReconciler(db, clock=self.clock)
        self.migrations = MigrationReconciler(
            db, self.nodes, Policy(), image_dir, per_node=0, clock=self.clock
        )
        with db.transaction() as session:
            ResourceService(session, NODES).create(
                "", {"metadata": {"name": "n1"}, "spec": {"uri": "qemu+tcp://n1/system"}}
            )
        self.node_reconciler.reconcile("", "n1")

    @property
    def hv(self) -> FakeHypervisor:
        return self.nodes.nodes["n1"]

    def revision(self) -> int:
        with self.db.read() as session:
            return current_revision(session)

    def instance(self, name: str) -> dict[str, Any]:
        with self.db.read() as session:
            row = ResourceRepository[Any](session, INSTANCES).get(NS, name)
            assert row is not None
            return {"uid": row.uid, "status": dict(row.status), "progress": dict(row.progress)}

    def converge(self, name: str, passes: int = 5) -> None:
        for _ in range(passes):
            self.instances.reconcile(NS, name)

    def assert_steady(self, reconcile: Any, namespace: str, name: str) -> None:
        """One more pass writes no row and changes nothing on the node."""
        revision, changes = self.revision(), len(self.hv.changes)
        reconcile(namespace, name)
        assert self.revision() == revision, "a pass over a converged object wrote to the database"
        assert self.hv.changes[changes:] == [], "a pass over a converged object changed the hypervisor"


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    bundle = tmp_path / "corral" / "tiny" / "latest"
    bundle.mkdir(parents=True)
    (bundle / "vmlinuz").write_bytes(b"kernel")
    (tmp_path / "default").symlink_to("corral/tiny/latest")
    return tmp_path


@pytest.fixture
def rig(sqlite_db: Database, image_dir: Path) -> Iterator[Rig]:
    reset(sqlite_db)
    yield Rig(sqlite_db, image_dir)


def create_instance(rig: Rig, name: str, **spec: Any) -> None:
    body = {"metadata": {"name": name}, "spec": {"terminationGracePeriodSeconds": 30, **spec}}
    body["spec"].setdefault("volumes", [{"name": "scratch", "emptyDisk": {"capacity": "1Gi"}}])
    with rig.db.transaction() as session:
        InstanceService(session).create(NS, body)


def act(rig: Rig, name: str, action: Action) -> None:
    with rig.db.transaction() as session:
        InstanceService(session).act(NS, name, action, None, "test", None, f"POST {action}")


def test_an_instance_runs_and_a_converged_pass_does_nothing(rig: Rig) -> None:
    create_instance(rig, "vm")
    rig.converge("vm")
    seen = rig.instance("vm")
    assert seen["status"]["phase"] == "Running" and seen["progress"]["everStarted"]
    domain = seen["progress"]["domain"]
    assert rig.hv.domains[domain].info.state is DomainState.RUNNING
    assert set(rig.hv.volumes[STORAGE_POOL]) == {f"{seen['uid']}-scratch.qcow2"}  # the kernel boots no disk
    assert ("start", domain) in rig.hv.changes
    rig.assert_steady(rig.instances.reconcile, NS, "vm")


def test_a_stopped_and_a_paused_instance_are_steady_too(rig: Rig) -> None:
    create_instance(rig, "halted", runStrategy="Halted")
    rig.converge("halted")
    assert rig.instance("halted")["status"]["phase"] == "Scheduled"
    rig.assert_steady(rig.instances.reconcile, NS, "halted")
    create_instance(rig, "vm")
    rig.converge("vm")
    act(rig, "vm", Action.PAUSE)
    rig.converge("vm")
    assert rig.instance("vm")["status"]["phase"] == "Paused"
    rig.assert_steady(rig.instances.reconcile, NS, "vm")


def test_stop_waits_for_the_guest_then_powers_off_when_the_clock_says_so(rig: Rig) -> None:
    create_instance(rig, "vm")
    rig.converge("vm")
    domain = rig.instance("vm")["progress"]["domain"]
    act(rig, "vm", Action.STOP)
    rig.converge("vm", passes=3)
    assert rig.instance("vm")["status"]["phase"] == "Stopping"  # the fake guest ignores the power button
    assert [c for c in rig.hv.changes if c[0] in ("shutdown", "destroy")] == [("shutdown", domain)]
    rig.clock.advance(31)
    rig.converge("vm", passes=2)
    assert rig.instance("vm")["status"]["phase"] == "Stopped"
    assert rig.hv.changes[-1] == ("destroy", domain)
    rig.assert_steady(rig.instances.reconcile, NS, "vm")


def test_delete_removes_domain_and_volumes(rig: Rig) -> None:
    create_instance(rig, "vm", terminationGracePeriodSeconds=0)
    rig.converge("vm")
    with rig.db.transaction() as session:
        InstanceService(session).delete(NS, "vm", None)
    rig.converge("vm", passes=2)
    assert rig.hv.domains == {} and rig.hv.volumes[STORAGE_POOL] == {}
    with rig.db.read() as session:
        assert ResourceRepository[Any](session, INSTANCES).get(NS, "vm") is None


def test_a_full_pool_is_steady(rig: Rig) -> None:
    with rig.db.transaction() as session:
        template = {"spec": {"terminationGracePeriodSeconds": 0}}
        ResourceService(session, POOLS).create(
            NS, {"metadata": {"name": "warm"}, "spec": {"size": 2, "template": template}}
        )
    for _ in range(3):
        rig.pools.reconcile(NS, "warm")
        for member in ("warm-0", "warm-1"):
            with rig.db.read() as session:
                exists = ResourceRepository[Any](session, INSTANCES).get(NS, member) is not None
            if exists:
                rig.converge(member)
    with rig.db.read() as session:
        pool = ResourceRepository[Any](session, POOLS).get(NS, "warm")
        assert pool is not None and pool.status["availableReplicas"] == 2
    rig.assert_steady(rig.pools.reconcile, NS, "warm")
    rig.assert_steady(rig.instances.reconcile, NS, "warm-0")
    with rig.db.transaction() as session:
        (claimed,) = PoolService(session).claim_many(NS, "warm", [{"name": "mine"}])
    assert isinstance(claimed, dict) and claimed["metadata"]["name"] == "mine"


def test_a_waiting_and_a_finished_migration_are_steady(rig: Rig) -> None:
    create_instance(rig, "vm")
    rig.converge("vm")
    with rig.db.transaction() as session:
        MigrationService(session).create(NS, {"metadata": {"name": "move"}, "spec": {"vmiName": "vm"}})
    rig.migrations.reconcile(NS, "move")  # per_node=0: waits for room
    with rig.db.read() as session:
        row = ResourceRepository[Any](session, MIGRATIONS).get(NS, "move")
        assert row is not None and row.status["reason"] == "WaitingForNode"
    rig.assert_steady(rig.migrations.reconcile, NS, "move")
    with rig.db.transaction() as session:
        MigrationService(session).cancel(NS, "move")
    rig.migrations.reconcile(NS, "move")
    with rig.db.read() as session:
        row = ResourceRepository[Any](session, MIGRATIONS).get(NS, "move")
        assert row is not None and row.status["phase"] == "Failed"
    rig.assert_steady(rig.migrations.reconcile, NS, "move")
    rig.assert_steady(rig.instances.reconcile, NS, "vm")


def test_a_node_heartbeat_within_its_interval_writes_nothing(rig: Rig) -> None:
    rig.assert_steady(rig.node_reconciler.reconcile, "", "n1")
