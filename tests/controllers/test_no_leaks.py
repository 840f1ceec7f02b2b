"""Nothing leaks when a pass fails or the worker dies between two side effects: the undo stack cleans a failed
definition, and deterministic names let the next pass (or the deletion) find what a dead worker left."""

from __future__ import annotations

from typing import Any

import pytest

from app.controllers.instances import InstanceReconciler
from app.controllers.nodes import NodeReconciler
from app.db import Database
from app.kinds import INSTANCES
from app.repositories.resources import ResourceRepository
from app.services.instances import InstanceService
from app.services.nodes import NodeService
from app.virt.driver import STORAGE_POOL, DomainNotFound, Hypervisor, InvalidDomainConfig
from app.virt.libvirt_driver import connect
from app.worker.connections import NodeConnections
from tests.conftest import IMAGE_DIR


class Faulty:
    """The real test-driver connection, with one method made to fail."""

    def __init__(self, real: Hypervisor, fail: str | None = None, error: Exception | None = None) -> None:
        self.real, self.fail, self.error = real, fail, error

    def __getattr__(self, name: str) -> Any:
        if name == self.fail:

            def boom(*_: Any, **__: Any) -> None:
                raise self.error or RuntimeError(f"{name} failed")

            return boom
        return getattr(self.real, name)


def setup(pg: Database, name: str) -> str:
    with pg.transaction() as session:
        NodeService(session).create("", {"metadata": {"name": "td"}, "spec": {"uri": "test:///default"}})
        uid: str = InstanceService(session).create(
            "default",
            {
                "metadata": {"name": name},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "domain": {"resources": {"requests": {"memory": "128Mi"}}},
                },
            },
        )["metadata"]["uid"]
    pool = NodeConnections(connect)
    NodeReconciler(pg, pool, 10).reconcile("", "td")
    pool.close_all()
    return uid


def reconciler(pg: Database, hv: Any) -> InstanceReconciler:
    return InstanceReconciler(pg, NodeConnections(lambda _uri: hv), IMAGE_DIR)


def row(pg: Database, name: str) -> Any:
    with pg.transaction() as session:
        return ResourceRepository[Any](session, INSTANCES).get("default", name)


def test_a_failed_definition_leaves_no_volume(pg: Database, hv: Hypervisor) -> None:
    uid = setup(pg, "undo")
    faulty = Faulty(hv, "define", InvalidDomainConfig("unsupported configuration: nope"))
    reconciler(pg, faulty).reconcile("default", "undo")
    status = row(pg, "undo").status
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidConfiguration")
    assert hv.volume_path(STORAGE_POOL, f"{uid}-root.qcow2") is None


def test_a_worker_dead_before_define_is_resumed_then_cleaned(pg: Database, hv: Hypervisor) -> None:
    uid = setup(pg, "resume")
    # A worker that died right after creating the overlay: no undo ran, nothing recorded it.
    with pytest.raises(BaseException, match="worker died"):
        reconciler(pg, Faulty(hv, "define", SystemExit("worker died"))).reconcile("default", "resume")
    assert (
        hv.volume_path(STORAGE_POOL, f"{uid}-root.qcow2") is None
    )  # even a dying pass unwinds its undo stack
    hv.ensure_pool(STORAGE_POOL, "/var/lib/corral/instances")
    hv.create_volume(STORAGE_POOL, f"{uid}-root.qcow2", 1 << 26, None)  # what a SIGKILLed worker would leave

    # The next pass finds the volume by its name and carries on.
    reconciler(pg, hv).reconcile("default", "resume")
    assert row(pg, "resume").status["phase"] == "Running"
    domain = f"default.resume.{uid[:8]}"
    assert hv.lookup(domain).uuid == uid

    # A worker dead after define but before recording it: the domain is found by name and uuid.
    with pg.transaction() as session:
        ResourceRepository[Any](session, INSTANCES).get("default", "resume").progress = {}
    reconciler(pg, hv).reconcile("default", "resume")
    assert row(pg, "resume").status["phase"] == "Running"

    with pg.transaction() as session:
        InstanceService(session).delete("default", "resume", None)
    reconciler(pg, hv).reconcile("default", "resume")
    assert row(pg, "resume") is None
    with pytest.raises(DomainNotFound):
        hv.lookup(domain)
    assert hv.volume_path(STORAGE_POOL, f"{uid}-root.qcow2") is None


def test_a_foreign_domain_with_the_same_name_is_never_touched(pg: Database, hv: Hypervisor) -> None:
    uid = setup(pg, "clash")
    from app.virt.domain_xml import DomainConfig, build_domain_xml

    foreign = DomainConfig(
        name=f"default.clash.{uid[:8]}",
        uuid="11111111-2222-4333-8444-555555555555",
        virt_type="test",
        vcpus=1,
        memory_mib=64,
    )
    hv.define(build_domain_xml(foreign))
    try:
        reconciler(pg, hv).reconcile("default", "clash")
        status = row(pg, "clash").status
        assert (status["phase"], status["reason"]) == ("Failed", "DomainNameConflict")
        with pg.transaction() as session:
            InstanceService(session).delete("default", "clash", None)
        reconciler(pg, hv).reconcile("default", "clash")
        assert row(pg, "clash") is None
        assert hv.lookup(foreign.name).uuid == foreign.uuid  # still there, untouched
    finally:
        hv.undefine(foreign.name)
