"""The node reconciler, the local node's registration, and the libvirt event bridge."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, update
from sqlalchemy import event as sqlalchemy_event

from app.clock import utc_now
from app.config import Settings
from app.controllers.instances import InstanceReconciler
from app.controllers.nodes import NodeReconciler
from app.db import Database
from app.errors import Conflict
from app.kinds import INSTANCES, NODES
from app.models import WorkItemRow
from app.repositories import revisions, workqueue
from app.repositories.resources import ResourceRepository
from app.services.nodes import NodeService
from app.services.resources import ResourceService
from app.virt.domain_xml import DomainConfig, build_domain_xml
from app.virt.driver import EventKind, HypervisorEvent
from app.virt.libvirt_driver import connect
from app.worker.connections import NodeConnections
from app.worker.events import EventBridge
from app.worker.main import register_local_node
from tests.conftest import vmi


def add_node(db: Database, name: str, uri: str, **spec: Any) -> None:
    with db.transaction() as session:
        NodeService(session).create("", {"metadata": {"name": name}, "spec": {"uri": uri, **spec}})


def node(db: Database, name: str) -> Any:
    with db.transaction() as session:
        return ResourceRepository[Any](session, NODES).get("", name)


@pytest.fixture
def connections() -> Any:
    pool = NodeConnections(connect)
    yield pool
    pool.close_all()


@pytest.mark.parametrize("uri", ["test:///default", "qemu:///system"])
def test_ready_node_reports_capacity_versions_and_virt_type(db: Database, connections: Any, uri: str) -> None:
    add_node(db, "n1", uri)
    result = NodeReconciler(db, connections, heartbeat_seconds=10).reconcile("", "n1")
    assert result.requeue_after == 10
    row = node(db, "n1")
    status = row.status
    assert status["phase"] == "Ready" and status["observedGeneration"] == 1
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "HeartbeatOK")
    assert int(status["capacity"]["cpu"]) >= 1 and status["capacity"]["memory"].endswith("Mi")
    assert status["nodeInfo"]["libvirtVersion"].startswith("11.")
    # Neither node can run KVM guests: the test driver runs none, this host's KVM is paravirtual.
    assert status["virtType"] == "qemu" and status["virtTypeReason"]
    if uri.startswith("qemu"):
        assert status["nodeInfo"]["hypervisorType"] == "QEMU"


def test_steady_state_writes_nothing(db: Database, connections: Any) -> None:
    add_node(db, "n1", "test:///default")
    reconciler = NodeReconciler(db, connections, heartbeat_seconds=10)
    reconciler.reconcile("", "n1")
    before = node(db, "n1").resource_version
    reconciler.reconcile("", "n1")
    assert node(db, "n1").resource_version == before


def test_spec_virt_type_wins_and_unreachable_node_is_not_ready(db: Database, connections: Any) -> None:
    add_node(db, "forced", "test:///default", virtType="kvm")
    add_node(db, "gone", "qemu+tcp://127.0.0.1:1/system")
    reconciler = NodeReconciler(db, connections, heartbeat_seconds=10)
    reconciler.reconcile("", "forced")
    assert node(db, "forced").status["virtType"] == "kvm"
    assert reconciler.reconcile("", "gone").requeue_after == 10
    status = node(db, "gone").status
    ready = status["conditions"][0]
    assert status["phase"] == "NotReady" and (ready["status"], ready["reason"]) == ("False", "Unreachable")
    assert "127.0.0.1" in ready["message"] or "connect" in ready["message"].lower()


def test_node_deletion_is_finalized_by_the_worker_and_refused_while_hosting(
    db: Database, connections: Any
) -> None:
    add_node(db, "n1", "test:///default")
    with db.transaction() as session:
        ResourceService(session, INSTANCES).create("default", vmi("guest"))
        ResourceRepository[Any](session, INSTANCES).get("default", "guest").node_name = "n1"
    with db.transaction() as session, pytest.raises(Conflict, match="still hosts"):
        NodeService(session).delete("", "n1", None)
    with db.transaction() as session:
        ResourceRepository[Any](session, INSTANCES).get("default", "guest").node_name = None
        NodeService(session).delete("", "n1", None)
    assert node(db, "n1").deleted_at is not None
    NodeReconciler(db, connections, heartbeat_seconds=10).reconcile("", "n1")
    assert node(db, "n1") is None
    with db.transaction() as session:
        last = revisions.events_after(session, "Node", None, 0)[-1]
    assert (last.type, orjson.loads(last.stored)["metadata"]["name"]) == ("DELETED", "n1")


def test_local_node_is_registered_once(db: Database) -> None:
    settings = Settings(libvirt_uri="test:///default")
    register_local_node(db, settings)
    assert node(db, "local").spec == {"uri": "test:///default", "unschedulable": False}
    with db.transaction() as session:
        NodeService(session).delete("", "local", None)
        ResourceRepository[Any](session, NODES).remove(
            ResourceRepository[Any](session, NODES).get("", "local")
        )
    register_local_node(db, settings)  # an admin deleted it: it stays deleted
    assert node(db, "local") is None


def test_libvirt_events_wake_the_owning_instance(db: Database) -> None:
    with db.transaction() as session:
        uid = ResourceService(session, INSTANCES).create("default", vmi("evented"))["metadata"]["uid"]
    with (
        db.transaction() as session
    ):  # the create's wake-up is written at its commit: only events count below
        session.execute(delete(WorkItemRow))
    bridge = EventBridge(db, [InstanceReconciler(db, NodeConnections(connect), Path("/nonexistent"))])
    bridge.start()
    pool = NodeConnections(connect, bridge)
    hv = pool.get("n1", "test:///default")
    name = f"evented-{uid[:8]}"
    try:
        hv.define(
            build_domain_xml(DomainConfig(name=name, uuid=uid, virt_type="test", vcpus=1, memory_mib=64))
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with db.transaction() as session:
                if workqueue.depth(session):
                    break
            time.sleep(0.02)
        with db.transaction() as session:
            taken = workqueue.lease(session, "t", 10, 30)
        assert [t.key for t in taken] == [INSTANCES.work_key("default", "evented")]
    finally:
        hv.undefine(name)
        pool.close_all()
        bridge.stop()


def test_an_event_for_an_instance_another_workers_pass_holds_is_left_to_that_worker(db: Database) -> None:
    """Every worker connected to a node gets each of its events. The worker whose pass holds the instance
    knows whether its own action caused the event; another worker waking a pass for it would double the
    passes of every action."""
    with db.transaction() as session:
        uid = ResourceService(session, INSTANCES).create("default", vmi("held"))["metadata"]["uid"]
        session.execute(delete(WorkItemRow))
    key = INSTANCES.work_key("default", "held")
    reconciler = InstanceReconciler(db, NodeConnections(connect), Path("/nonexistent"), worker="me")
    started = HypervisorEvent("test:///default", EventKind.LIFECYCLE, "Started", "0", "d", uid)

    def woken(event: HypervisorEvent) -> list[str]:
        with db.read() as session:
            return reconciler.keys_for_events(session, [("n1", event)])

    assert woken(started) == [key]  # nobody's pass holds it
    with db.transaction() as session:
        workqueue.enqueue(session, key)
    with db.transaction() as session:
        assert len(workqueue.lease(session, "other", 1, 30)) == 1
    assert woken(started) == []
    with db.transaction() as session:  # the holder's death: its lease runs out
        session.execute(update(WorkItemRow).values(lease_until=utc_now() - timedelta(seconds=1)))
    assert woken(started) == [key]
    with db.transaction() as session:
        assert len(workqueue.lease(session, "me", 1, 30)) == 1
    assert woken(started) == [key]  # this worker's own pass may have looked before the event


def test_a_burst_of_events_is_looked_up_in_two_statements(db: Database) -> None:
    """A thousand domains starting send two events each to every worker on the node: the keys they wake are
    found in one statement and the leases of other workers in one more, however many events came at once."""
    uids = {}
    with db.transaction() as session:
        for name in ("burst-a", "burst-b", "burst-c"):
            uids[name] = ResourceService(session, INSTANCES).create("default", vmi(name))["metadata"]["uid"]
        session.execute(delete(WorkItemRow))
    with db.transaction() as session:
        workqueue.enqueue(session, INSTANCES.work_key("default", "burst-b"))
    with db.transaction() as session:
        assert len(workqueue.lease(session, "other", 1, 30)) == 1
    reconciler = InstanceReconciler(db, NodeConnections(connect), Path("/nonexistent"), worker="me")
    events = [
        ("n1", HypervisorEvent("test:///default", EventKind.LIFECYCLE, event, "0", "d", uid))
        for uid in [*uids.values(), "00000000-0000-0000-0000-000000000000"]
        for event in ("Defined", "Started")
    ]
    statements: list[str] = []

    def count(*args: Any) -> None:
        if not args[2].startswith("BEGIN"):  # SQLite's read opens its snapshot with one
            statements.append(args[2])

    sqlalchemy_event.listen(db.engine, "before_cursor_execute", count)
    try:
        with db.read() as session:
            keys = reconciler.keys_for_events(session, events)
    finally:
        sqlalchemy_event.remove(db.engine, "before_cursor_execute", count)
    assert sorted(keys) == [INSTANCES.work_key("default", n) for n in ("burst-a", "burst-c")]
    assert len(statements) == 2, statements
