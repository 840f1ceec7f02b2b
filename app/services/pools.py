"""Pool use cases: the claim, and making or removing members (the pool reconciler's hands)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.errors import AlreadyExists, Conflict, CorralError, FieldError, Invalid
from app.kinds import INSTANCES, POOLS
from app.models import InstanceRow, PoolRow
from app.repositories import workqueue
from app.repositories.instances import InstanceRepository, intent_of, set_intent
from app.schemas.common import JsonObject, name_with_suffix
from app.schemas.instance import InstanceSpec, data_volume_names
from app.schemas.pool import (
    CLAIMED_AT,
    CLAIMED_LABEL,
    POOL_LABEL,
    TEMPLATE_HASH,
    WARM_PAUSED,
    ClaimRequest,
    InstanceTemplate,
    PoolSpec,
    member_state,
)
from app.services.instances import InstanceService
from app.services.resources import ResourceService
from app.services.secrets import check_secrets
from app.services.validation import invalid


def template_hash(template: InstanceTemplate) -> str:
    body = template.model_dump(by_alias=True, mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


class PoolService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, POOLS)
        self.instances = InstanceRepository(session)

    def prepare_new(self, row: Any) -> None:
        self._check_template(row)

    def spec_changed(self, row: Any, old_spec: JsonObject) -> None:
        self._check_template(row)

    def _check_template(self, row: Any) -> None:
        template = PoolSpec.model_validate(row.spec).member_template().spec
        _no_shared_disks(template)
        check_secrets(self.session, row.namespace, template, "spec.template.spec")

    def claim_many(
        self, namespace: str, name: str, bodies: list[Any]
    ) -> list[JsonObject | CorralError | None]:
        """Claims that arrived together, served in one transaction: for each, in order, the member it got,
        None when none was left, or why it was refused. The pool row's lock serializes claims of one pool
        (across processes too), so two claims never get the same member."""
        requests: list[ClaimRequest | CorralError] = []
        for body in bodies:
            try:
                requests.append(ClaimRequest.model_validate(body or {}))
            except ValidationError as exc:
                requests.append(invalid(exc))
        pool = self._row(namespace, name, for_update=True)
        if pool.deleted_at is not None:
            raise Conflict(f"pool {name!r} is being deleted")
        spec = PoolSpec.model_validate(pool.spec)
        available = [
            m
            for m in self.instances.members(pool.uid, for_update=True)
            if m.deleted_at is None
            and member_state(m.status or {}, m.annotations or {}, spec.warm_state) == "available"
        ]
        answers: list[JsonObject | CorralError | None] = []
        handed: list[tuple[int, InstanceRow]] = []
        names = {r.name for r in requests if isinstance(r, ClaimRequest) and r.name is not None}
        taken_names = {row.name for row in self.instances.named(namespace, sorted(names))}
        for request in requests:
            if isinstance(request, CorralError):
                answers.append(request)
            elif request.name is not None and request.name in taken_names:
                answers.append(AlreadyExists(f"VirtualMachineInstance {request.name!r} already exists"))
            elif not available:
                answers.append(None)
            else:
                if request.name is not None:
                    taken_names.add(request.name)
                handed.append((len(answers), self._hand_over(name, spec, available.pop(0), request)))
                answers.append(None)  # filled in once the batch has its resourceVersions
        if handed:
            workqueue.enqueue(self.session, POOLS.work_key(namespace, name))
            for index, member in handed:
                answers[index] = self.instances.settled(member)
        return answers

    def _hand_over(
        self, pool_name: str, spec: PoolSpec, member: InstanceRow, request: ClaimRequest
    ) -> InstanceRow:
        member.pool_uid = None
        template_labels = {k: v for k, v in (member.labels or {}).items() if k != POOL_LABEL}
        member.labels = {**template_labels, CLAIMED_LABEL: pool_name, **request.labels}
        kept = {k: v for k, v in (member.annotations or {}).items() if k not in (TEMPLATE_HASH, WARM_PAUSED)}
        member.annotations = {**kept, **request.annotations, CLAIMED_AT: utc_now().isoformat()}
        if spec.warm_state == "Paused":
            # Resume at once: the worker acts on the unpause request this write carries.
            set_intent(member, intent_of(member).pause_requested(False, utc_now()))
        if request.name is not None and request.name != member.name:
            self.instances.rename(member, request.name)
        else:
            self.instances.touch(member)
        workqueue.enqueue(self.session, INSTANCES.work_key(member.namespace, member.name))
        return member

    def add_member(self, pool: PoolRow, template: InstanceTemplate, digest: str, taken: set[str]) -> str:
        index = 0
        while (member_name := name_with_suffix(pool.name, f"-{index}")) in taken:
            index += 1
        spec = template.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
        body = {
            "metadata": {
                "name": member_name,
                "labels": {**template.metadata.labels, POOL_LABEL: pool.name},
                "annotations": {**template.metadata.annotations, TEMPLATE_HASH: digest},
            },
            "spec": spec,
        }
        row = InstanceService(self.session).create_row(pool.namespace, body)
        row.pool_uid = pool.uid
        taken.add(member_name)
        return member_name

    def remove_member(self, member: InstanceRow) -> None:
        if member.deleted_at is None:
            InstanceService(self.session).delete(member.namespace, member.name, None)

    def request_pause(self, member: InstanceRow, paused: bool) -> None:
        """Pause a warm member (its guest agent answered) or resume it; marks it so claims know."""
        set_intent(member, intent_of(member).pause_requested(paused, utc_now()))
        annotations = dict(member.annotations or {})
        if paused:
            annotations[WARM_PAUSED] = "true"
        else:
            annotations.pop(WARM_PAUSED, None)
        member.annotations = annotations
        self.instances.touch(member)
        workqueue.enqueue(self.session, INSTANCES.work_key(member.namespace, member.name))

    def claimed(self, namespace: str, name: str) -> list[InstanceRow]:
        """Instances claimed from the pool that still exist."""
        rows, _ = self.instances.page(namespace, selector=lambda labels: labels.get(CLAIMED_LABEL) == name)
        return rows


def _no_shared_disks(template: InstanceSpec) -> None:
    """Every member would attach the same disk, and a disk has one instance at a time."""
    if data_volume_names(template):
        raise Invalid(
            "pool members cannot attach DataVolumes: a disk has one instance at a time",
            [FieldError("spec.template.spec.volumes", "dataVolume/persistentVolumeClaim in a pool template")],
        )
