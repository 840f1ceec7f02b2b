"""Instance use cases: desired power state on create and on runStrategy changes, and the actions."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.errors import BadRequest, Conflict, FieldError
from app.kinds import INSTANCES
from app.repositories import idempotency
from app.repositories.resources import to_object
from app.schemas.instance import InstanceSpec, StopOptions
from app.schemas.phases import Action, legal_actions
from app.services.devices import DeviceService
from app.services.resources import ResourceService
from app.services.validation import invalid

RUN_AT_CREATE = {"Always", "RerunOnFailure", "Once"}
POWER_BY_ACTION = {Action.START: "Running", Action.STOP: "Stopped"}
# One-shot requests: the worker acts once per increment (pause too: a guest paused or resumed from outside
# Corral is reported as it is, not fought).
COUNTER_BY_ACTION = {
    Action.RESTART: "restart",
    Action.SOFTREBOOT: "softReboot",
    Action.PAUSE: "pause",
    Action.UNPAUSE: "pause",
}
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
        DeviceService(self.session).check_requests(InstanceSpec.model_validate(row.spec))
        power = "Running" if row.spec.get("runStrategy", "Always") in RUN_AT_CREATE else "Stopped"
        row.intent = {"power": power, "restart": 0, "softReboot": 0}
        row.progress = {}

    def spec_changed(self, row: Any, old_spec: dict[str, Any]) -> None:
        DeviceService(self.session).check_requests(InstanceSpec.model_validate(row.spec))
        strategy = row.spec.get("runStrategy")
        if strategy == old_spec.get("runStrategy"):
            return
        # Halted means stopped and Always means running, whatever the last action said (KubeVirt's VM).
        if strategy == "Halted":
            row.intent = {**row.intent, "power": "Stopped"}
        elif strategy == "Always":
            row.intent = {**row.intent, "power": "Running", "force": False}

    def act(
        self,
        namespace: str,
        name: str,
        action: Action,
        body: Any,
        principal: str,
        idempotency_key: str | None,
        request: str,
    ) -> tuple[int, dict[str, Any]]:
        """Record an action as desired state and wake the worker; (status code, instance) for the API."""
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255 or not idempotency_key.isprintable():
                raise BadRequest(
                    "Idempotency-Key must be 1-255 printable characters",
                    [FieldError("Idempotency-Key", "invalid")],
                )
            earlier = idempotency.find(self.session, principal, idempotency_key)
            if earlier is not None:
                if earlier.request != request:
                    raise Conflict(
                        f"Idempotency-Key {idempotency_key!r} was used for {earlier.request}",
                        [FieldError("Idempotency-Key", "reused for another request")],
                    )
                return earlier.status_code, earlier.body
        options = self._options(action, body)
        row = self._row(namespace, name, for_update=True)
        phase = "Terminating" if row.deleted_at is not None else (row.status or {}).get("phase", "Pending")
        allowed = legal_actions(phase)
        if action not in allowed:
            names = ", ".join(a.value for a in allowed) or "none"
            raise Conflict(
                f"cannot {action.value} instance {name!r} in phase {phase}; legal actions: {names}",
                [FieldError("status.phase", phase)],
            )
        intent = dict(row.intent or {})
        if action in POWER_BY_ACTION:
            intent["power"] = POWER_BY_ACTION[action]
        if action in COUNTER_BY_ACTION:
            counter = COUNTER_BY_ACTION[action]
            intent[counter] = int(intent.get(counter, 0)) + 1
            intent["paused"] = action is Action.PAUSE
        if action is Action.STOP:
            # A second stop while Stopping escalates to a forced power-off.
            intent["force"] = options.force or phase == "Stopping"
            intent["gracePeriodSeconds"] = options.grace_period_seconds
        if action is Action.START:
            intent["force"] = False
            intent["retry"] = int(intent.get("retry", 0)) + 1  # a start clears a crash-loop backoff
        intent["requestedAt"] = utc_now().isoformat()
        row.intent = intent
        self.repo.touch(row)
        self._wake(namespace, name)
        answer = to_object(INSTANCES, row)
        if idempotency_key is not None:
            idempotency.remember(self.session, principal, idempotency_key, request, 202, answer)
        return 202, answer

    @staticmethod
    def _options(action: Action, body: Any) -> StopOptions:
        if body in (None, {}, b"", ""):
            return StopOptions()
        if action is not Action.STOP:
            raise BadRequest(f"{action.value} takes no body", [FieldError("body", "must be empty")])
        try:
            return StopOptions.model_validate(body)
        except ValidationError as exc:
            raise invalid(exc) from exc


def request_fingerprint(method: str, path: str, body: Any) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{method} {path} {digest}"
