"""The API use cases shared by every kind: create, read, list, replace, patch, delete.

Validate, write spec, bump generation, enqueue the key for the worker. No libvirt here; the caller's
transaction commits.
"""

from __future__ import annotations

import re
import secrets
import string
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.clock import utc_now
from app.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    FieldError,
    Invalid,
    NotFound,
    StaleResourceVersion,
)
from app.kinds import Kind
from app.repositories import workqueue
from app.repositories.resources import KEY_COLUMNS, ResourceRepository, to_object
from app.repositories.revisions import current_revision
from app.schemas.common import JsonObject, ObjectMeta
from app.services.selectors import parse_selector
from app.services.shown import ShownObjects, list_json
from app.services.validation import invalid, merge_patch

MAX_LIMIT = 1000
_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


class ResourceService:
    def __init__(self, session: Session, kind: Kind[Any]) -> None:
        self.session = session
        self.kind = kind
        self.repo: ResourceRepository[Any] = ResourceRepository(session, kind)

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, namespace: str, name: str) -> JsonObject:
        return self._shown(self._row(namespace, name))

    def list_json(
        self,
        namespace: str | None,
        label_selector: str | None,
        limit: int | None,
        continue_: str | None,
        shown: ShownObjects,
    ) -> bytes:
        """A page of objects as the API's JSON. Objects whose current version was shown before come from
        `shown` without being read or validated again; only the others are read in full."""
        if limit is not None and not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(
                f"limit must be 1..{MAX_LIMIT}", [FieldError("limit", f"must be 1..{MAX_LIMIT}")]
            )
        keys, more = self.repo.read_page(
            namespace,
            selector=parse_selector(label_selector),
            after=decode_continue(continue_),
            limit=limit,
            columns=KEY_COLUMNS,
        )
        meta: JsonObject = {"resourceVersion": str(current_revision(self.session))}
        if more and keys:
            meta["continue"] = _encode_continue(keys[-1].namespace, keys[-1].name)
        encoded = shown.known(self.kind, [(k.uid, str(k.resource_version)) for k in keys])
        missing = [k.uid for k in keys if k.uid not in encoded]
        if missing:
            for row in self.repo.read_by_uid(missing):  # one gone meanwhile is left out
                encoded[row.uid] = shown.encode(self.kind, self._shown(row))
        envelope = {"apiVersion": self.kind.api_version, "kind": f"{self.kind.kind}List", "metadata": meta}
        return list_json(envelope, [encoded[k.uid] for k in keys if k.uid in encoded])

    # -- writes --------------------------------------------------------------------------------------
    def create(self, namespace: str, body: Any) -> JsonObject:
        return self._settled(self.create_row(namespace, body))

    def create_row(self, namespace: str, body: Any) -> Any:
        """The new row; its resourceVersion comes when the transaction commits (a caller that shows it
        uses `create`)."""
        meta, spec = self._check_body(body, namespace)
        name = meta.name
        if name is None:
            if not meta.generate_name:
                raise Invalid(
                    "metadata.name or metadata.generateName is required",
                    [FieldError("metadata.name", "required")],
                )
            name = self._generated_name(namespace, meta.generate_name)
        row = self.kind.row(
            uid=str(uuid.uuid4()),
            namespace=namespace,
            name=name,
            labels=meta.labels,
            annotations=meta.annotations,
            spec=spec,
            status={},
            generation=1,
        )
        self.prepare_new(row)
        try:
            self.repo.add(row)
        except IntegrityError as exc:  # the (namespace, name) key: cheaper than reading before every create
            raise AlreadyExists(f"{self.kind.kind} {name!r} already exists") from exc
        self._wake(namespace, name)
        return row

    def replace(self, namespace: str, name: str, body: Any, if_match: str | None) -> JsonObject:
        meta, spec = self._check_body(body, namespace)
        if meta.name is None and meta.generate_name is None:
            raise Invalid("metadata.name is required", [FieldError("metadata.name", "required")])
        if meta.name is not None and meta.name != name:
            raise Invalid(
                "metadata.name must match the name in the path",
                [FieldError("metadata.name", f"must be {name!r}")],
            )
        row = self._row(namespace, name, for_update=True)
        _check_version(row.resource_version, if_match, meta.resource_version)
        return self._update(row, meta.labels, meta.annotations, spec)

    def patch(self, namespace: str, name: str, patch: Any, if_match: str | None) -> JsonObject:
        if not isinstance(patch, dict):
            raise BadRequest("a merge patch must be a JSON object", [FieldError("body", "must be an object")])
        row = self._row(namespace, name, for_update=True)
        current = self._shown(row)
        meta_patch = patch.get("metadata")
        sent_version = meta_patch.get("resourceVersion") if isinstance(meta_patch, dict) else None
        if sent_version is not None and not isinstance(sent_version, str):
            raise Invalid(
                "metadata.resourceVersion must be a string",
                [FieldError("metadata.resourceVersion", "must be a string")],
            )
        _check_version(row.resource_version, if_match, sent_version)
        merged = merge_patch({k: v for k, v in current.items() if k != "status"}, patch)
        meta, spec = self._check_body(merged, namespace)
        if meta.name != name:
            raise Invalid("metadata.name cannot be changed", [FieldError("metadata.name", "is immutable")])
        return self._update(row, meta.labels, meta.annotations, spec)

    def delete(self, namespace: str, name: str, if_match: str | None) -> JsonObject:
        """Mark for deletion; the worker tears down what the object owns and then removes the row."""
        row = self._row(namespace, name, for_update=True)
        _check_version(row.resource_version, if_match, None)
        if row.deleted_at is None:
            self.check_deletable(row)
            row.deleted_at = utc_now()
            self.repo.touch(row)
            self._wake(namespace, name)
        return self._settled(row)

    def check_deletable(self, row: Any) -> None:
        """Kinds refuse deletion by overriding this (e.g. a node that still hosts instances)."""

    def prepare_new(self, row: Any) -> None:
        """Kinds fill their own columns of a new row by overriding this."""

    def spec_changed(self, row: Any, old_spec: JsonObject) -> None:
        """Kinds react to a spec change (already stored on `row`) by overriding this."""

    def same_spec(self, stored: JsonObject, new: JsonObject) -> bool:
        """Whether a write changes nothing of the spec (kinds storing specs in another form override this)."""
        return stored == new

    # -- helpers -------------------------------------------------------------------------------------
    def _shown(self, row: Any) -> JsonObject:
        return self.kind.shown(to_object(self.kind, row))

    def _settled(self, row: Any) -> JsonObject:
        """A written row as the API shows it, with the resourceVersion it commits as."""
        return self.kind.shown(self.repo.settled(row))

    def _row(self, namespace: str, name: str, *, for_update: bool = False) -> Any:
        row = self.repo.get(namespace, name, for_update=for_update)
        if row is None:
            where = f" in namespace {namespace!r}" if self.kind.namespaced else ""
            raise NotFound(f"{self.kind.kind} {name!r} not found{where}")
        return row

    def _update(
        self, row: Any, labels: dict[str, str], annotations: dict[str, str], spec: JsonObject
    ) -> JsonObject:
        if row.deleted_at is not None:
            raise Conflict(f"{self.kind.kind} {row.name!r} is being deleted")
        changed = False
        if not self.same_spec(row.spec, spec):
            old_spec, row.spec = row.spec, spec
            row.generation += 1
            self.spec_changed(row, old_spec)
            changed = True
        if labels != row.labels or annotations != row.annotations:
            row.labels, row.annotations = labels, annotations
            changed = True
        if changed:
            self.repo.touch(row)
            self._wake(row.namespace, row.name)
        return self._settled(row)

    def _check_body(self, body: Any, namespace: str) -> tuple[ObjectMeta, JsonObject]:
        """Validate a whole object (from JSON, YAML or a merged patch); returns metadata and stored spec."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be an object", [FieldError("body", "must be an object")])
        try:
            parsed = self.kind.body_model.model_validate(body)
        except ValidationError as exc:
            raise invalid(exc) from exc
        self._check_identity(body)
        meta: ObjectMeta = parsed.metadata  # type: ignore[attr-defined]
        self._check_scope(meta, namespace)
        spec = parsed.spec.model_dump(by_alias=True, mode="json", exclude_none=True)  # type: ignore[attr-defined]
        return meta, spec

    def _check_identity(self, body: JsonObject) -> None:
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version is not None and api_version not in self.kind.api_versions:
            raise Invalid(
                f"apiVersion {api_version!r} is not served for {self.kind.kind}",
                [FieldError("apiVersion", f"must be one of {', '.join(self.kind.api_versions)}")],
            )
        if kind is not None and kind != self.kind.kind:
            raise Invalid(
                f"kind {kind!r} does not belong at this path",
                [FieldError("kind", f"must be {self.kind.kind}")],
            )

    def _check_scope(self, meta: ObjectMeta, namespace: str) -> None:
        expected_ns = namespace if self.kind.namespaced else None
        if meta.namespace is not None and meta.namespace != expected_ns:
            message = (
                f"must be {namespace!r} (the path's)" if self.kind.namespaced else "cluster-scoped: omit it"
            )
            raise Invalid(f"metadata.namespace {message}", [FieldError("metadata.namespace", message)])

    def _generated_name(self, namespace: str, prefix: str) -> str:
        for _ in range(8):
            name = prefix + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))
            if self.repo.get(namespace, name) is None:
                return name
        raise Conflict(f"could not generate a free name from {prefix!r}")

    def _wake(self, namespace: str, name: str) -> None:
        workqueue.enqueue(self.session, self.kind.work_key(namespace, name))


def _check_version(current: int, if_match: str | None, sent: str | None) -> None:
    for source, value in (("If-Match", if_match), ("metadata.resourceVersion", sent)):
        if value is None:
            continue
        wanted = value.strip().removeprefix("W/").strip('"')
        if wanted != str(current):
            raise StaleResourceVersion(
                f"the object has been modified: {source} is {wanted!r}, the current resourceVersion is "
                f"{current}; read it again and retry",
                [FieldError(source, "stale resourceVersion")],
            )


# A continue token is the (namespace, name) key the next page starts after: clients treat it as opaque, and
# any key of this shape is a valid position, so the document can state exactly what the server accepts.
CONTINUE_PATTERN = r"^[a-z0-9-]{0,63}/[a-z0-9.-]{1,253}$"


def _encode_continue(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def decode_continue(token: str | None) -> tuple[str, str] | None:
    if not token:
        return None
    if re.fullmatch(CONTINUE_PATTERN, token) is None:
        raise BadRequest(
            "the continue token is not valid", [FieldError("continue", "not a token this server issued")]
        )
    namespace, name = token.split("/", 1)
    return namespace, name
