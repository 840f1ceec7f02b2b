"""Secret (Kubernetes core v1 shape): named values instances use (cloud-init user data, SSH public keys).
Stored sealed (app.sealing); readable by operators and admins only."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints
from pydantic.config import JsonDict

from app.schemas.common import BASE64_PATTERN, ApiModel, ListMeta, ObjectMeta, ObjectMetaOut

SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
SecretKey = Annotated[str, StringConstraints(max_length=253, pattern=SECRET_KEY_PATTERN)]


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    return value


Base64Value = Annotated[
    str, AfterValidator(_base64), Field(json_schema_extra={"format": "byte", "pattern": BASE64_PATTERN})
]
_KEYS: JsonDict = {"propertyNames": {"pattern": SECRET_KEY_PATTERN, "maxLength": 253}}
MAX_SECRET_BYTES = 1 << 20  # Kubernetes' limit on a Secret's values
# Types whose required keys Kubernetes checks; others (Opaque, anything user-defined) hold any keys.
REQUIRED_KEYS = {
    "kubernetes.io/dockerconfigjson": ".dockerconfigjson",
    "kubernetes.io/ssh-auth": "ssh-privatekey",
}


class SecretBody(ApiModel):
    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta
    type: str = Field(default="Opaque", min_length=1, max_length=253)
    data: dict[SecretKey, Base64Value] = Field(
        default_factory=dict, description="Values, base64-encoded.", json_schema_extra=_KEYS
    )
    string_data: dict[SecretKey, str] = Field(
        default_factory=dict,
        description="Values as text, write-only: merged into `data` (and winning).",
        json_schema_extra=_KEYS,
    )
    immutable: bool | None = Field(default=None, description="Once true, neither values nor type may change.")

    def values(self) -> dict[str, bytes]:
        """`data` decoded, with `stringData` over it."""
        values = {key: base64.b64decode(encoded) for key, encoded in self.data.items()}
        values.update({key: text.encode() for key, text in self.string_data.items()})
        return values

    def problem(self) -> tuple[str, str] | None:
        """(field, message) of what makes these values wrong for the Secret, or None."""
        values = self.values()
        if sum(len(k) + len(v) for k, v in values.items()) > MAX_SECRET_BYTES:
            return "data", f"a Secret holds at most {MAX_SECRET_BYTES} bytes"
        required = REQUIRED_KEYS.get(self.type)
        if required is not None and required not in values:
            return "data", f"a {self.type} Secret needs the key {required!r}"
        if self.type == "kubernetes.io/dockerconfigjson":
            try:
                json.loads(values[".dockerconfigjson"])
            except ValueError:
                return "data[.dockerconfigjson]", "not JSON"
        return None


class SecretObject(ApiModel):
    api_version: str = "v1"
    kind: str = "Secret"
    metadata: ObjectMetaOut
    type: str
    data: dict[str, str] = Field(default_factory=dict, description="Values, base64-encoded.")
    immutable: bool | None = None


class SecretList(ApiModel):
    api_version: str = "v1"
    kind: str = "SecretList"
    metadata: ListMeta
    items: list[SecretObject]


class SecretSpec(ApiModel):
    """How a Secret is stored: type and the sealed values (never served as such)."""

    type: str
    sealed_data: str
    immutable: bool | None = None
