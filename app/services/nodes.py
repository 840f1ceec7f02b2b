"""Node use cases beyond the generic ones."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.errors import Conflict
from app.models import InstanceRow
from app.repositories.resources import ResourceRepository
from app.repositories.settings import get_setting, set_setting
from app.schemas.common import parse_time
from app.schemas.conditions import find_condition, set_condition
from app.services.kinds import INSTANCES, NODES
from app.services.resources import ResourceService

LOCAL_NODE = "local"
_REGISTERED = "local-node-registered"


class NodeService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, NODES)

    def check_deletable(self, row: Any) -> None:
        hosted, _ = ResourceRepository[InstanceRow](self.session, INSTANCES.info).page(
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
        spec: dict[str, Any] = {"uri": uri}
        if virt_type:
            spec["virtType"] = virt_type
        if self.repo.get("", LOCAL_NODE) is None:
            self.create(
                "", {"metadata": {"name": LOCAL_NODE, "labels": {"corral.dev/local": "true"}}, "spec": spec}
            )
        set_setting(self.session, _REGISTERED, uri)
        return True


def mark_unreported(session: Session, grace_seconds: float, at: datetime) -> list[str]:
    """Kubernetes' node lifecycle rule: a node no worker has reported for `grace_seconds` has Ready=Unknown
    (nobody knows), until a worker's heartbeat says otherwise. Nodes never reported are left alone."""
    repo = ResourceRepository[Any](session, NODES.info)
    grace = timedelta(seconds=grace_seconds)
    marked = []
    for name in [row.name for row in repo.page(None)[0]]:
        row = repo.get("", name, for_update=True)
        status = dict(row.status or {}) if row is not None else {}
        last = parse_time(status.get("lastHeartbeatTime"))
        ready = find_condition(status, "Ready") or {}
        if row is None or last is None or ready.get("status") == "Unknown" or at - last < grace:
            continue
        silent = at - last
        status["conditions"] = [dict(c) for c in status.get("conditions", [])]
        message = f"no worker has reported this node for {silent.total_seconds():.0f}s"
        set_condition(status, "Ready", "Unknown", "NodeStatusUnknown", message, at)
        status["phase"] = "NotReady"
        row.status = status
        repo.touch(row)
        marked.append(name)
    return marked
