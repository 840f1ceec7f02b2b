"""Node use cases beyond the generic ones."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.errors import Conflict
from app.models import InstanceRow
from app.repositories.resources import ResourceRepository
from app.repositories.settings import get_setting, set_setting
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
