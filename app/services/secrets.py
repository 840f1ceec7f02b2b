"""Secret use cases: values sealed on the way in, an immutable Secret stays as it is, and the instances that
use a Secret are woken when it changes (SSH keys propagated through the guest agent follow it)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import BadRequest, FieldError, Invalid
from app.kinds import INSTANCES, SECRETS
from app.models import InstanceRow
from app.repositories import workqueue
from app.repositories.resources import ResourceRepository
from app.schemas.common import JsonObject, ObjectMeta
from app.schemas.instance import InstanceSpec
from app.schemas.secret import SecretBody
from app.sealing import sealer, unsealed
from app.services.resources import ResourceService
from app.services.validation import invalid


def check_secrets(session: Session, namespace: str, spec: InstanceSpec, prefix: str = "spec") -> None:
    """422 naming the field for a Secret the spec uses and the namespace does not have."""
    references = [
        (
            f"{prefix}.accessCredentials[{i}].sshPublicKey.source.secret.secretName",
            c.ssh_public_key.source.secret.secret_name,
        )
        for i, c in enumerate(spec.access_credentials)
    ]
    for i, volume in enumerate(spec.volumes):
        if volume.container_disk is not None and volume.container_disk.image_pull_secret:
            field = f"{prefix}.volumes[{i}].containerDisk.imagePullSecret"
            references.append((field, volume.container_disk.image_pull_secret))
        source = volume.cloud_init
        if source is None:
            continue
        kind = "cloudInitNoCloud" if volume.cloud_init_no_cloud else "cloudInitConfigDrive"
        where = f"{prefix}.volumes[{i}].{kind}"
        references += [
            (f"{where}.{field}.name", ref.name)
            for field, ref in (
                ("userDataSecretRef", source.user_data_secret_ref),
                ("networkDataSecretRef", source.network_data_secret_ref),
            )
            if ref is not None
        ]
    check_exist(session, namespace, references)


def check_exist(session: Session, namespace: str, references: list[tuple[str, str]]) -> None:
    """422 naming the field of the first (field, Secret name) the namespace does not have."""
    repo = ResourceRepository[Any](session, SECRETS)
    for field, name in references:
        if repo.get(namespace, name) is None:  # a deleted Secret is gone at once
            raise Invalid(
                f"no Secret named {name!r} in namespace {namespace!r}", [FieldError(field, "no such Secret")]
            )


def users_of(session: Session, namespace: str, secret: str) -> list[str]:
    """Names of the namespace's instances whose spec names the Secret."""
    rows = session.scalars(select(InstanceRow).where(InstanceRow.namespace == namespace))
    return sorted(
        row.name for row in rows if secret in InstanceSpec.model_validate(row.spec or {}).secret_names()
    )


class SecretService(ResourceService):
    def __init__(self, session: Session) -> None:
        super().__init__(session, SECRETS)

    def _check_body(self, body: Any, namespace: str) -> tuple[ObjectMeta, JsonObject]:
        if not isinstance(body, dict):
            raise BadRequest("the body must be an object", [FieldError("body", "must be an object")])
        self._check_identity(body)
        try:
            parsed = SecretBody.model_validate(body)
        except ValidationError as exc:
            raise invalid(exc) from exc
        problem = parsed.problem()
        if problem is not None:
            raise Invalid(f"{problem[0]}: {problem[1]}", [FieldError(*problem)])
        self._check_scope(parsed.metadata, namespace)
        spec: JsonObject = {"type": parsed.type, "sealedData": sealer().seal(parsed.values())}
        if parsed.immutable is not None:
            spec["immutable"] = parsed.immutable
        return parsed.metadata, spec

    def same_spec(self, stored: JsonObject, new: JsonObject) -> bool:
        # Sealing is randomized: compare what the sealed values say.
        return {k: v for k, v in stored.items() if k != "sealedData"} == {
            k: v for k, v in new.items() if k != "sealedData"
        } and unsealed(stored) == unsealed(new)

    def spec_changed(self, row: Any, old_spec: JsonObject) -> None:
        if old_spec.get("immutable"):
            raise Invalid(
                f"Secret {row.name!r} is immutable: delete it and create it again",
                [FieldError("immutable", "the Secret is immutable")],
            )

    def delete(self, namespace: str, name: str, if_match: str | None) -> JsonObject:
        """A Secret owns nothing to tear down: it is gone at once (instances using it keep what they got)."""
        obj = super().delete(namespace, name, if_match)
        self.repo.remove(self._row(namespace, name))
        return obj

    def _wake(self, namespace: str, name: str) -> None:
        for instance in users_of(self.session, namespace, name):
            workqueue.enqueue(self.session, INSTANCES.work_key(namespace, instance))
