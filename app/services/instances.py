"""Instance use cases: desired power state on create and on runStrategy changes, and the actions."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.errors import BadRequest, Conflict, FieldError, NotFound
from app.kinds import INSTANCES, NODES
from app.repositories import idempotency
from app.repositories.instances import InstanceRepository, intent_of, set_intent, set_progress, set_requests
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject
from app.schemas.instance import InstanceSpec, StopOptions
from app.schemas.phases import Action, legal_actions
from app.schemas.records import InstanceIntent, InstanceProgress
from app.services.datavolumes import check_single_writer
from app.services.devices import DeviceService
from app.services.networks import check_networks
from app.services.resources import ResourceService
from app.services.secrets import check_secrets
from app.services.validation import invalid

INSTANCE_ACTIONS = (
    Action.START,
    Action.STOP,
    Action.RESTART,
    Action.SOFTREBOOT,
    Action.PAUSE,
    Action.UNPAUSE,
)


class InstanceService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, INSTANCES)

    def prepare_new(self, row: Any) -> None:
        spec = InstanceSpec.model_validate(row.spec)
        DeviceService(self.session).check_requests(spec)
        check_single_writer(self.session, row.namespace, row.name, spec)
        check_networks(self.session, row.namespace, row.name, spec)
        check_secrets(self.session, row.namespace, spec)
        set_requests(row, spec)
        set_intent(row, InstanceIntent.at_create(row.spec.get("runStrategy", "Always")))
        set_progress(row, InstanceProgress())

    def spec_changed(self, row: Any, old_spec: JsonObject) -> None:
        spec = InstanceSpec.model_validate(row.spec)
        DeviceService(self.session).check_requests(spec)
        check_single_writer(self.session, row.namespace, row.name, spec)
        check_networks(self.session, row.namespace, row.name, spec)
        check_secrets(self.session, row.namespace, spec)
        set_requests(row, spec)
        strategy = row.spec.get("runStrategy")
        if strategy is not None and strategy != old_spec.get("runStrategy"):
            set_intent(row, intent_of(row).for_run_strategy(strategy))

    def act(
        self,
        namespace: str,
        name: str,
        action: Action,
        body: Any,
        principal: str,
        idempotency_key: str | None,
        request: str,
    ) -> tuple[int, JsonObject]:
        """Record an action as desired state and wake the worker; (status code, instance) for the API."""
        if idempotency_key is not None:
            earlier = self._replay(principal, idempotency_key, request)
            if earlier is not None:
                return earlier
        options = self._options(action, body)
        row = self._row(namespace, name, for_update=True)
        phase = "Terminating" if row.deleted_at is not None else phase_for_actions(row)
        allowed = legal_actions(phase)
        if action not in allowed:
            names = ", ".join(a.value for a in allowed) or "none"
            raise Conflict(
                f"cannot {action.value} instance {name!r} in phase {phase}; legal actions: {names}",
                [FieldError("status.phase", phase)],
            )
        set_intent(row, requested(intent_of(row), action, options, phase))
        self.repo.touch(row)
        self._wake(namespace, name)
        # The stored answer commits with the action: a retry never repeats an action it cannot replay.
        answer = self.repo.settled(row, commit=idempotency_key is None)
        if idempotency_key is not None:
            idempotency.remember(self.session, principal, idempotency_key, request, 202, answer)
        return 202, answer

    def _replay(self, principal: str, key: str, request: str) -> tuple[int, JsonObject] | None:
        """The stored answer to an earlier request with this Idempotency-Key; 409 for another request."""
        if not 1 <= len(key) <= 255 or not key.isascii() or not key.isprintable():
            raise BadRequest(
                "Idempotency-Key must be 1-255 printable characters",
                [FieldError("Idempotency-Key", "invalid")],
            )
        earlier = idempotency.find(self.session, principal, key)
        if earlier is None:
            return None
        if earlier.request != request:
            raise Conflict(
                f"Idempotency-Key {key!r} was used for {earlier.request}",
                [FieldError("Idempotency-Key", "reused for another request")],
            )
        return earlier.status_code, earlier.body

    @staticmethod
    def _options(action: Action, body: Any) -> StopOptions:
        if body is None or body == {}:  # no body, or an empty object
            return StopOptions()
        if action is not Action.STOP:
            raise BadRequest(f"{action.value} takes no body", [FieldError("body", "must be empty")])
        try:
            return StopOptions.model_validate(body)
        except ValidationError as exc:
            raise invalid(exc) from exc


def phase_for_actions(row: Any) -> str:
    """The phase an action is judged in: a stop the worker has not carried out yet already counts as
    Stopping, so a pause, unpause, restart or migration accepted behind it cannot be silently lost."""
    phase = str((row.status or {}).get("phase", "Pending"))
    if intent_of(row).power == "Stopped" and phase in ("Starting", "Running", "Paused"):
        return "Stopping"
    return phase


def requested(intent: InstanceIntent, action: Action, options: StopOptions, phase: str) -> InstanceIntent:
    """The intent after an action: power actions set the power state, the others bump their counter."""
    at = utc_now()
    if action is Action.START:
        return intent.but(power="Running", force=False, retry=intent.retry + 1, requested_at=at)
    if action is Action.STOP:
        # A second stop while Stopping escalates to a forced power-off.
        force = options.force or phase == "Stopping"
        return intent.but(
            power="Stopped", force=force, grace_period_seconds=options.grace_period_seconds, requested_at=at
        )
    if action in (Action.PAUSE, Action.UNPAUSE):
        return intent.pause_requested(action is Action.PAUSE, at)
    if action is Action.RESTART:
        return intent.but(restart=intent.restart + 1, requested_at=at)
    return intent.but(soft_reboot=intent.soft_reboot + 1, requested_at=at)


def request_fingerprint(method: str, path: str, body: Any) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{method} {path} {digest}"


def console_target(session: Session, namespace: str, name: str) -> tuple[str, str]:
    """(node URI, domain) of an instance whose guest runs; 404 or 409 (naming the phase) otherwise."""
    row = InstanceRepository(session).get(namespace, name)
    if row is None:
        raise NotFound(f"instance {name!r} not found in namespace {namespace!r}")
    phase = (row.status or {}).get("phase", "Pending")
    domain = (row.status or {}).get("domainName")
    if phase not in ("Running", "Paused") or row.node_name is None or not domain:
        raise Conflict(f"instance {name!r} is {phase}: no guest runs", [FieldError("status.phase", phase)])
    node = ResourceRepository[Any](session, NODES).get("", row.node_name)
    if node is None:
        raise Conflict(f"the node {row.node_name!r} running instance {name!r} no longer exists")
    return str(node.spec["uri"]), str(domain)
