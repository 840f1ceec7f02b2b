"""The pool reconciler: keep `size` warm members, replace failed ones, roll template changes through without
dropping below minAvailable, pause warm members when asked, and count everything. The decisions are pure
functions in app.controllers.pool_decisions.

It never calls libvirt: members are ordinary instances, driven by the instance reconciler. A pass is one
short transaction with the pool row locked, so it cannot race a claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.orm import Session

from app.clock import Clock, utc_now
from app.controllers.base import NodeEvent, Result
from app.controllers.pool_decisions import Bookkeeping, Member, decide, pool_status
from app.db import Database
from app.kinds import POOLS
from app.models import InstanceRow, PoolRow
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject, parse_time
from app.schemas.pool import CLAIMED_AT, TEMPLATE_HASH, WARM_PAUSED, PoolSpec, member_state
from app.services.pools import PoolService, template_hash


class PoolReconciler:
    kind = POOLS.kind

    def __init__(self, db: Database, burst: int = 2, clock: Clock = utc_now) -> None:
        self.db = db
        self.burst = burst  # members created per pass, and warming at once (TCG boots are CPU-bound)
        self.clock = clock

    def keys_for_events(self, session: Session, events: Sequence[NodeEvent]) -> list[str]:
        return []  # members wake their pool when their status changes

    def reconcile(self, namespace: str, name: str) -> Result:
        with self.db.transaction() as session:
            service = PoolService(session)
            repo = ResourceRepository[PoolRow](session, POOLS)
            pool = repo.get(namespace, name, for_update=True)
            if pool is None:
                return Result()
            members = list(service.instances.members(pool.uid, for_update=True))
            if pool.deleted_at is not None:
                for member in members:
                    service.remove_member(member)  # claimed instances are no longer members: untouched
                if not members:
                    repo.remove(pool)
                    return Result()
                return Result(requeue_after=2.0)
            status, requeue = self._converge(service, pool, members)
            if status != pool.status:
                pool.status = status
                repo.touch(pool)
            return Result(requeue_after=requeue)

    def _converge(
        self, service: PoolService, pool: PoolRow, rows: list[InstanceRow]
    ) -> tuple[JsonObject, float | None]:
        """Decide over the members' views, carry the plan out through the pool service, report."""
        now, spec = self.clock(), PoolSpec.model_validate(pool.spec)
        template = spec.member_template()
        digest = template_hash(template)
        live = {row.name: row for row in rows if row.deleted_at is None}
        members = [_member(row, spec, digest) for row in live.values()]
        claimed = service.claimed(pool.namespace, pool.name)
        stamps = [parse_time((c.annotations or {}).get(CLAIMED_AT)) for c in claimed]
        last_claim = max((t or now - timedelta(days=1) for t in stamps), default=None)
        previous = pool.status or {}
        book = Bookkeeping(int(previous.get("failures", 0)), parse_time(previous.get("retryAfter")))
        plan = decide(spec, members, book, last_claim, now, self.burst)
        for member_name in plan.pause:
            service.request_pause(live[member_name], paused=True)
        for member_name in plan.resume:
            service.request_pause(live[member_name], paused=False)
        for member_name in plan.remove:
            service.remove_member(live[member_name])
        if plan.create:
            taken = {r.name for r in rows} | {r.name for r in service.instances.page(pool.namespace)[0]}
            for _ in range(plan.create):
                service.add_member(pool, template, digest, taken)
        failed = sum(m.state == "failed" for m in members)
        return pool_status(previous, spec, pool.generation, plan, failed, len(claimed), now), plan.requeue


def _member(row: InstanceRow, spec: PoolSpec, digest: str) -> Member:
    status, annotations = row.status or {}, row.annotations or {}
    return Member(
        name=row.name,
        order=row.id,
        state=member_state(status, annotations, spec.warm_state),
        up=status.get("phase") in ("Running", "Paused"),
        phase=str(status.get("phase") or ""),
        agent_ready=member_state(status, {}, "Running") == "available",
        warm_paused=annotations.get(WARM_PAUSED) == "true",
        current=annotations.get(TEMPLATE_HASH) == digest,
        failure=f"{status.get('reason')}: {status.get('message', '')}",
    )
