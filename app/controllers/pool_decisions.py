"""The pool reconciler's decisions, as pure functions: which members to replace, pause, resume or remove, how
many to create, and the pool's status. No I/O here: the reconciler reads the members, calls `decide` and
carries the plan out through the pool service."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from app.clock import rfc3339
from app.schemas.common import JsonObject
from app.schemas.conditions import set_condition
from app.schemas.instance import IMAGE_PULL_FAILURES
from app.schemas.pool import PoolSpec, PoolStatus

# A replacement starts this long after a claim: the claimed guest's first moments (its owner's first
# requests) are not shared with a boot on the same host.
REPLENISH_DELAY = 1.0
FAILURE_BACKOFF_BASE = 5.0
FAILURE_BACKOFF_MAX = 300.0
WARMING_RECHECK = 5.0


@dataclass(frozen=True)
class Member:
    """A live (not terminating) member as the decisions see it."""

    name: str
    order: int  # creation order
    state: str  # available, warming or failed (app.schemas.pool.member_state)
    up: bool  # phase Running or Paused
    agent_ready: bool  # Running with its guest agent answering: what a Running-state pool hands out
    warm_paused: bool  # the pool paused it (warmState Paused)
    current: bool  # made from the current template
    failure: str = ""  # "reason: message" of a failed member
    phase: str = ""  # the instance's phase


@dataclass(frozen=True)
class Bookkeeping:
    """What the pool remembers between passes, kept in its status: failures in a row and the backoff."""

    failures: int = 0
    retry_after: datetime | None = None


@dataclass(frozen=True)
class PoolPlan:
    remove: tuple[str, ...] = ()
    pause: tuple[str, ...] = ()
    resume: tuple[str, ...] = ()
    create: int = 0
    requeue: float | None = None
    bookkeeping: Bookkeeping = field(default_factory=Bookkeeping)
    failure_message: str | None = None  # the newest member failure this pass replaced
    kept: tuple[Member, ...] = ()  # the members that stay


def failure_backoff(failures: int) -> float:
    return float(min(FAILURE_BACKOFF_BASE * 2 ** max(failures - 1, 0), FAILURE_BACKOFF_MAX))


def decide(
    spec: PoolSpec,
    members: list[Member],
    book: Bookkeeping,
    last_claim: datetime | None,
    now: datetime,
    burst: int,
) -> PoolPlan:
    """Replace failed members (backing off), pause or resume warm members, scale down, roll one outdated
    member at a time without dropping below minAvailable, and scale up in small batches."""
    if spec.paused:
        return PoolPlan(bookkeeping=book, kept=tuple(members))
    failed = [m for m in members if m.state == "failed"]
    live = [m for m in members if m.state != "failed"]
    failures, retry_after, failure_message = book.failures, book.retry_after, None
    for member in failed:
        failures += 1
        retry_after = now + timedelta(seconds=failure_backoff(failures))
        failure_message = f"member {member.name} failed: {member.failure}"[:500]
    if any(m.state == "available" for m in live):
        failures = 0
    pause = tuple(m.name for m in live if spec.warm_state == "Paused" and not m.warm_paused and m.agent_ready)
    resume = tuple(m.name for m in live if spec.warm_state == "Running" and m.warm_paused)
    outdated = any(not m.current for m in live)
    removed, live, target = _shrink_or_roll(spec, live)
    create, requeue = _grow(live, target, Bookkeeping(failures, retry_after), last_claim, now, burst)
    if any(m.state == "warming" for m in live) or len(live) < target or outdated:
        requeue = requeue or WARMING_RECHECK
    return PoolPlan(
        remove=tuple(m.name for m in failed) + removed,
        pause=pause,
        resume=resume,
        create=create,
        requeue=requeue,
        bookkeeping=Bookkeeping(failures, retry_after),
        failure_message=failure_message,
        kept=tuple(live),
    )


def _shrink_or_roll(spec: PoolSpec, live: list[Member]) -> tuple[tuple[str, ...], list[Member], int]:
    """(members to remove, those left, the target count). While a template change rolls, one extra member
    may exist (a surge), so an old member goes only once a new one is available."""
    outdated = [m for m in live if not m.current]
    size = spec.desired_size()
    target = size + (1 if outdated and size else 0)
    extra = len(live) - target
    if extra > 0:  # the least useful go: outdated, then warming, newest first
        ranked = sorted(live, key=lambda m: (m.current, m.state == "available", -m.order))
        return tuple(m.name for m in ranked[:extra]), [m for m in live if m not in ranked[:extra]], target
    if outdated and not any(m.state == "warming" and m.current for m in live):
        victim = sorted(outdated, key=lambda m: (m.state == "available", m.order))[0]
        available = sum(m.state == "available" for m in live)
        if victim.state != "available" or available - 1 >= spec.min_available:
            return (victim.name,), [m for m in live if m is not victim], target
    return (), live, target


def _grow(
    live: list[Member],
    target: int,
    book: Bookkeeping,
    last_claim: datetime | None,
    now: datetime,
    burst: int,
) -> tuple[int, float | None]:
    """(members to create, when to look again): after a failure's backoff and a claim's short delay, at
    most `burst` warming at once."""
    missing = target - len(live)
    if missing <= 0:
        return 0, None
    if book.retry_after is not None and book.retry_after > now:
        return 0, (book.retry_after - now).total_seconds()
    if last_claim is not None and (now - last_claim).total_seconds() < REPLENISH_DELAY:
        return 0, REPLENISH_DELAY - (now - last_claim).total_seconds()
    warming = sum(m.state == "warming" for m in live)
    return max(0, min(missing, burst - warming)), None


def _in_warm_state(member: Member, warm_state: str) -> bool:
    """Made from the current template and there: paused by the pool and Paused, or Running and not."""
    paused = warm_state == "Paused"
    return member.current and member.warm_paused == paused and member.phase == warm_state


def pool_status(
    previous: JsonObject,
    spec: PoolSpec,
    generation: int,
    plan: PoolPlan,
    failed: int,
    claimed: int,
    now: datetime,
) -> JsonObject:
    """The pool's status object (the API's shape, checked against PoolStatus)."""
    kept = plan.kept
    available = sum(m.state == "available" for m in kept)
    status: JsonObject = {
        "observedGeneration": generation,
        "replicas": len(kept),
        "readyReplicas": sum(m.up and m.state != "failed" for m in kept),
        "availableReplicas": available,
        "warming": sum(m.state == "warming" for m in kept),
        "updatedReplicas": sum(_in_warm_state(m, spec.warm_state) for m in kept),
        "claimed": claimed,
        "failed": failed,
        "conditions": [dict(c) for c in previous.get("conditions", [])],
    }
    below = available < spec.min_available
    message = f"{available} available, minAvailable {spec.min_available}"
    reason = "BelowMinAvailable" if below else "EnoughAvailable"
    set_condition(status, "BelowMinAvailable", "True" if below else "False", reason, message, now)
    book = plan.bookkeeping
    pulling = next((m for m in kept if m.failure.partition(":")[0] in IMAGE_PULL_FAILURES), None)
    if plan.failure_message is not None:
        set_condition(status, "ReplicaFailure", "True", "MemberFailed", plan.failure_message, now)
    elif pulling is not None:  # replacing it would pull again: it waits, and the pool says why
        reason = pulling.failure.partition(":")[0]
        set_condition(
            status, "ReplicaFailure", "True", reason, f"member {pulling.name}: {pulling.failure}", now
        )
    elif book.failures == 0:
        set_condition(status, "ReplicaFailure", "False", "NoFailures", "", now)
    if spec.paused:
        set_condition(status, "Paused", "True", "PausedByUser", "spec.paused: not reconciling", now)
    else:
        set_condition(status, "Paused", "False", "Reconciling", "", now)
    if book.failures:
        status["failures"] = book.failures
    if book.retry_after is not None and book.retry_after > now:
        status["retryAfter"] = rfc3339(book.retry_after)
    PoolStatus.model_validate(status)  # the shape the API promises
    return status
