"""Node use cases beyond the generic ones."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.errors import Conflict
from app.kinds import INSTANCES, NODES
from app.models import InstanceRow
from app.repositories.resources import ResourceRepository
from app.repositories.settings import get_setting, set_setting
from app.schemas.common import JsonObject, parse_time
from app.schemas.conditions import find_condition, set_condition
from app.services.resources import ResourceService

LOCAL_NODE = "local"
_REGISTERED = "local-node-registered"


class NodeService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, NODES)

    def check_deletable(self, row: Any) -> None:
        hosted, _ = ResourceRepository[InstanceRow](self.session, INSTANCES).page(
            None, limit=1, node_name=row.name
        )
        if hosted:
            raise Conflict(
                f"node {row.name!r} still hosts instances (e.g. {hosted[0].namespace}/{hosted[0].name}); "
                "drain it or delete them first"
            )

    def register_local(self, uri: str, virt_type: str | None) -> bool:
        """Register the local libvirt as node `local`, once per installation (an admin may delete it)."""
        if get_setting(self.session, _REGISTERED) is not None:
            return False
        spec: JsonObject = {"uri": uri}
        if virt_type:
            spec["virtType"] = virt_type
        if self.repo.get("", LOCAL_NODE) is None:
            self.create(
                "", {"metadata": {"name": LOCAL_NODE, "labels": {"corral.dev/local": "true"}}, "spec": spec}
            )
        set_setting(self.session, _REGISTERED, uri)
        return True


def _silent_for(status: JsonObject, at: datetime) -> timedelta | None:
    """How long no worker has reported the node; None when none ever did or it is already Unknown."""
    last = parse_time(status.get("lastHeartbeatTime"))
    if last is None or (find_condition(status, "Ready") or {}).get("status") == "Unknown":
        return None
    return at - last


def unreported(session: Session, grace_seconds: float, at: datetime) -> list[str]:
    """Nodes no worker has reported for `grace_seconds` (a read: most rounds find none)."""
    rows = ResourceRepository[Any](session, NODES).page(None)[0]
    grace = timedelta(seconds=grace_seconds)
    return [row.name for row in rows if (silent := _silent_for(row.status or {}, at)) and silent >= grace]


def mark_unreported(session: Session, names: list[str], grace_seconds: float, at: datetime) -> list[str]:
    """Kubernetes' node lifecycle rule: a node no worker has reported for `grace_seconds` has Ready=Unknown
    (nobody knows) until a worker's heartbeat says otherwise. Checked again under the row lock."""
    repo = ResourceRepository[Any](session, NODES)
    marked = []
    for name in names:
        row = repo.get("", name, for_update=True)
        status = dict(row.status or {}) if row is not None else {}
        silent = _silent_for(status, at)
        if row is None or silent is None or silent < timedelta(seconds=grace_seconds):
            continue
        status["conditions"] = [dict(c) for c in status.get("conditions", [])]
        message = f"no worker has reported this node for {silent.total_seconds():.0f}s"
        set_condition(status, "Ready", "Unknown", "NodeStatusUnknown", message, at)
        status["phase"] = "NotReady"
        row.status = status
        repo.touch(row)
        marked.append(name)
    return marked
