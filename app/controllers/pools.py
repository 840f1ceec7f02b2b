"""The pool reconciler: keep `size` warm members, replace failed ones, roll template changes through without
dropping below minAvailable, pause warm members when asked, and count everything.

It never calls libvirt: members are ordinary instances, driven by the instance reconciler. A pass is one
short transaction with the pool row locked, so it cannot race a claim.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.clock import utc_now
from app.controllers.base import Result
from app.db import Database
from app.kinds import POOLS
from app.repositories.resources import ResourceRepository
from app.schemas.common import parse_time
from app.schemas.conditions import set_condition
from app.schemas.pool import CLAIMED_AT, TEMPLATE_HASH, WARM_PAUSED, PoolSpec, PoolStatus, member_state
from app.services.pools import PoolService, template_hash
from app.virt.driver import HypervisorEvent

# A replacement starts this long after a claim: the claimed guest's first moments (its owner's first
# requests) are not shared with a boot on the same host.
REPLENISH_DELAY = 1.0
FAILURE_BACKOFF_BASE = 5.0
FAILURE_BACKOFF_MAX = 300.0
WARMING_RECHECK = 5.0


def failure_backoff(failures: int) -> float:
    return float(min(FAILURE_BACKOFF_BASE * 2 ** max(failures - 1, 0), FAILURE_BACKOFF_MAX))


class PoolReconciler:
    kind = POOLS.kind

    def __init__(self, db: Database, burst: int = 2) -> None:
        self.db = db
        self.burst = burst  # members created per pass, and warming at once (TCG boots are CPU-bound)

    def keys_for_event(self, session: Session, node: str, event: HypervisorEvent) -> list[str]:
        return []  # members wake their pool when their status changes

    def reconcile(self, namespace: str, name: str) -> Result:
        with self.db.transaction() as session:
            service = PoolService(session)
            repo = ResourceRepository[Any](session, POOLS)
            pool = repo.get(namespace, name, for_update=True)
            if pool is None:
                return Result()
            members = service.instances.members(pool.uid, for_update=True)
            if pool.deleted_at is not None:
                for member in members:
                    service.remove_member(member)  # claimed instances are no longer members: untouched
                if not members:
                    repo.remove(pool)
                    return Result()
                return Result(requeue_after=2.0)
            spec = PoolSpec.model_validate(pool.spec)
            status, requeue = self._converge(service, pool, spec, members)
            if status != pool.status:
                pool.status = status
                repo.touch(pool)
            return Result(requeue_after=requeue)

    def _converge(
        self, service: PoolService, pool: Any, spec: PoolSpec, members: list[Any]
    ) -> tuple[dict[str, Any], float | None]:
        at = utc_now()
        previous = dict(pool.status or {})
        template = spec.member_template()
        digest = template_hash(template)
        live = [m for m in members if m.deleted_at is None]
        states = {m.name: member_state(m.status or {}, m.annotations or {}, spec.warm_state) for m in live}
        failed = [m for m in live if states[m.name] == "failed"]
        retry_after = parse_time(previous.get("retryAfter"))
        failures = int(previous.get("failures", 0))
        failure_message = None
        requeue: float | None = None
        claimed = service.claimed(pool.namespace, pool.name)
        last_claim = max(
            (parse_time((c.annotations or {}).get(CLAIMED_AT)) or at - timedelta(days=1) for c in claimed),
            default=None,
        )

        if not spec.paused:
            for member in failed:  # replace, with backoff before the next create
                failure_message = (
                    f"member {member.name} failed: {(member.status or {}).get('reason')}: "
                    f"{(member.status or {}).get('message', '')}"
                )[:500]
                service.remove_member(member)
                failures += 1
                retry_after = at + timedelta(seconds=failure_backoff(failures))
            live = [m for m in live if m not in failed]
            if any(states[m.name] == "available" for m in live):
                failures = 0

            # Warm members pause once their guest agent answered (warmState Paused), or resume.
            for member in live:
                paused_mark = (member.annotations or {}).get(WARM_PAUSED) == "true"
                # Running with its agent answering: what a Running-state pool would hand out.
                ready = member_state(member.status or {}, {}, "Running") == "available"
                if spec.warm_state == "Paused" and not paused_mark and ready:
                    service.request_pause(member, paused=True)
                elif spec.warm_state == "Running" and paused_mark:
                    service.request_pause(member, paused=False)

            outdated = [m for m in live if (m.annotations or {}).get(TEMPLATE_HASH) != digest]
            current = [m for m in live if m not in outdated]
            warming = [m for m in live if states[m.name] == "warming"]
            available = [m for m in live if states[m.name] == "available"]
            size = spec.desired_size()
            # While a template change rolls, one extra member may exist (a surge), so an old member goes
            # only once a new one is available and the pool never drops below minAvailable.
            target = size + (1 if outdated and size else 0)

            # Scale down first: the least useful go (outdated, then warming, newest first).
            extra = len(live) - target
            if extra > 0:
                ranked = sorted(live, key=lambda m: (m in current, states[m.name] == "available", -m.id))
                for member in ranked[:extra]:
                    service.remove_member(member)
                live = [m for m in live if m not in ranked[:extra]]
            # Roll template changes: one outdated member at a time, never below minAvailable.
            elif outdated and not [m for m in warming if m in current]:
                victim = sorted(outdated, key=lambda m: (states[m.name] == "available", m.id))[0]
                if states[victim.name] != "available" or len(available) - 1 >= spec.min_available:
                    service.remove_member(victim)
                    live.remove(victim)

            # Scale up in small batches, once a failure's backoff has passed.
            missing = target - len(live)
            if missing > 0:
                if retry_after is not None and retry_after > at:
                    requeue = (retry_after - at).total_seconds()
                elif last_claim is not None and (at - last_claim).total_seconds() < REPLENISH_DELAY:
                    requeue = REPLENISH_DELAY - (at - last_claim).total_seconds()
                else:
                    warming_now = sum(states.get(m.name) == "warming" for m in live)
                    taken = {m.name for m in members} | {
                        m.name for m in service.instances.page(pool.namespace)[0]
                    }
                    for _ in range(max(0, min(missing, self.burst - warming_now))):
                        service.add_member(pool, template, digest, taken)
            if any(states.get(m.name) == "warming" for m in live) or len(live) < target or outdated:
                requeue = requeue or WARMING_RECHECK

        counts = {state: sum(states.get(m.name) == state for m in live) for state in ("available", "warming")}
        ready_count = sum(
            1
            for m in live
            if (m.status or {}).get("phase") in ("Running", "Paused") and states[m.name] != "failed"
        )
        status: dict[str, Any] = {
            "observedGeneration": pool.generation,
            "replicas": len(live),
            "readyReplicas": ready_count,
            "availableReplicas": counts["available"],
            "warming": counts["warming"],
            "claimed": len(claimed),
            "failed": len(failed),
            "conditions": [dict(c) for c in previous.get("conditions", [])],
        }
        below = counts["available"] < spec.min_available
        set_condition(
            status,
            "BelowMinAvailable",
            "True" if below else "False",
            "BelowMinAvailable" if below else "EnoughAvailable",
            f"{counts['available']} available, minAvailable {spec.min_available}",
            at,
        )
        if failure_message is not None:
            set_condition(status, "ReplicaFailure", "True", "MemberFailed", failure_message, at)
        elif failures == 0:
            set_condition(status, "ReplicaFailure", "False", "NoFailures", "", at)
        if spec.paused:
            set_condition(status, "Paused", "True", "PausedByUser", "spec.paused: not reconciling", at)
        else:
            set_condition(status, "Paused", "False", "Reconciling", "", at)
        if failures:
            status["failures"] = failures
        if retry_after is not None and retry_after > at:
            status["retryAfter"] = retry_after.isoformat().replace("+00:00", "Z")
        PoolStatus.model_validate(status)  # the shape the API promises
        return status, requeue
