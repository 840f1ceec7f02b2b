"""Readiness and the gauges computed from the database on each scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy import text

from app import migrate
from app.db import Database
from app.kinds import KINDS, NODES, POOLS
from app.repositories import workqueue
from app.repositories.resources import ResourceRepository
from app.schemas.conditions import condition_true

# Series labelled with tenants' namespaces and names: shown to callers who may see every namespace, or to
# anyone when CORRAL_METRICS_TENANT_LABELS is set (a scraper behind its own access control).
TENANT_REGISTRY = CollectorRegistry()
WORK_DEPTH = Gauge("corral_workqueue_depth", "Keys waiting for or in a reconcile pass")
OBJECTS = Gauge("corral_objects", "Stored objects by kind", ["kind"])
POOL_MEMBERS = Gauge(
    "corral_pool_members", "Pool members by state", ["namespace", "pool", "state"], registry=TENANT_REGISTRY
)
POOL_STATES = {
    "available": "availableReplicas",
    "warming": "warming",
    "failed": "failed",
    "claimed": "claimed",
}
NODES_READY = Gauge("corral_nodes_ready", "Nodes whose Ready condition is True")


def readiness(db: Database) -> list[str]:
    try:
        with db.transaction() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return [f"database: {exc.__class__.__name__}: {exc}"[:300]]
    current, head = migrate.current_revision(db.engine), migrate.head_revision()
    if current != head:
        return [f"schema at revision {current}, expected {head}: run `corral migrate`"]
    return []


def refresh_gauges(db: Database) -> None:
    with db.transaction() as session:
        WORK_DEPTH.set(workqueue.depth(session))
        for kind in KINDS.values():
            OBJECTS.labels(kind.kind).set(ResourceRepository[Any](session, kind).count())
        statuses = ResourceRepository[Any](session, NODES).statuses()
        NODES_READY.set(sum(condition_true(s, "Ready") for s in statuses))
        POOL_MEMBERS.clear()
        pools, _ = ResourceRepository[Any](session, POOLS).page(None)
        for pool in pools:
            for state, field in POOL_STATES.items():
                POOL_MEMBERS.labels(pool.namespace, pool.name, state).set((pool.status or {}).get(field, 0))
