"""The instance reconciler. This first version finalizes deletion; the state machine builds on it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.controllers.base import Result
from app.db import Database
from app.repositories.resources import ResourceRepository
from app.services.kinds import INSTANCES
from app.virt.driver import HypervisorEvent, HypervisorPool


class InstanceReconciler:
    kind = INSTANCES.kind

    def __init__(self, db: Database, hypervisors: HypervisorPool) -> None:
        self.db = db
        self.hypervisors = hypervisors

    def reconcile(self, namespace: str, name: str) -> Result:
        with self.db.transaction() as session:
            repo = ResourceRepository[Any](session, INSTANCES.info)
            row = repo.get(namespace, name, for_update=True)
            if row is not None and row.deleted_at is not None and row.node_name is None:
                repo.remove(row)
        return Result()

    def keys_for_event(self, session: Session, node: str, event: HypervisorEvent) -> list[str]:
        if event.domain_uuid is None:
            return []
        row = ResourceRepository[Any](session, INSTANCES.info).get_by_uid(event.domain_uuid)
        return [INSTANCES.work_key(row.namespace, row.name)] if row is not None else []
