"""Reading what the guest agent reported, and asking for a fresh report."""

from __future__ import annotations

from app.clock import utc_now
from app.errors import Conflict, FieldError
from app.kinds import INSTANCES
from app.repositories import workqueue
from app.repositories.instances import intent_of, set_intent
from app.schemas.common import JsonObject
from app.schemas.conditions import find_condition
from app.services.instances import InstanceService


class GuestService(InstanceService):
    def report(self, namespace: str, name: str) -> JsonObject:
        """The stored report; 409 while the agent is not connected (its data would be stale)."""
        row = self._row(namespace, name)
        connected = find_condition(row.status or {}, "AgentConnected") or {}
        if connected.get("status") != "True":
            reason = connected.get("reason") or "AgentNotConnected"
            state = connected.get("status", "False")
            raise Conflict(
                f"the guest agent of {name!r} is not connected (AgentConnected={state}, reason {reason}); "
                "start qemu-guest-agent in the guest",
                [FieldError("status.conditions[AgentConnected]", reason)],
            )
        return dict(row.guest or {})

    def request_refresh(self, namespace: str, name: str) -> str | None:
        """Ask the worker for a fresh report; returns the observedAt to wait past."""
        self.report(namespace, name)  # 409 when there is no agent to ask
        row = self._row(namespace, name, for_update=True)
        intent = intent_of(row)
        set_intent(row, intent.but(guest_refresh=intent.guest_refresh + 1, requested_at=utc_now()))
        workqueue.enqueue(self.session, INSTANCES.work_key(namespace, name))
        return (row.guest or {}).get("observedAt")
