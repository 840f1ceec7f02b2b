"""Shared pieces of every API body: object metadata, conditions, lists, watch events, problems."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal, DecimalException
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
# check_label_key's rule as an ECMA-262 pattern (no anchors): an optional DNS-subdomain prefix and a name.
LABEL_KEY = (
    r"(?:(?=[a-z0-9.-]{1,253}/)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)
QUANTITY = re.compile(
    r"^(?P<num>[+]?(\d+\.?\d*|\.\d+))(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$"
)
QUANTITY_PATTERN = re.sub(r"\?P<\w+>", "", QUANTITY.pattern)  # the same, for clients' regex engines
SUFFIX_FACTOR: dict[str, Decimal] = {
    "": Decimal(1),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
MAX_ANNOTATIONS_BYTES = 256 * 1024
# Standard base64 with padding, as base64.b64decode(validate=True) takes it.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
# A JSON document at an edge of Corral: an API object or request body, a status as stored, a guest agent's
# answer. What the worker itself remembers is typed (app.schemas.records), never one of these.
JsonObject = dict[str, Any]


class ApiModel(BaseModel):
    """camelCase on the wire, unknown fields rejected (422 naming the field, never a silent drop)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# A generated name is the prefix plus five random characters, within a DNS label's 63.
GENERATE_NAME_MAX = 58


def name_with_suffix(name: str, suffix: str, limit: int = 63) -> str:
    """`name` + `suffix`, the name cut so that the whole stays within `limit` (a DNS label's 63)."""
    return name[: limit - len(suffix)] + suffix


def _given(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"not": {"type": "null"}}}}


def exactly_one_of(*fields: str) -> ConfigDict:
    """Model config stating, for clients, a validator's "exactly one of these fields" rule (camelCase names;
    a field given as null counts as not given, as the validator sees it)."""
    return ApiModel.model_config | ConfigDict(json_schema_extra={"oneOf": [_given(f) for f in fields]})


def at_most_one_of(*fields: str) -> ConfigDict:
    """Model config stating, for clients, a validator's "not more than one of these fields" rule."""
    pairs = [(a, b) for i, a in enumerate(fields) for b in fields[i + 1 :]]
    rule: dict[str, Any] = {"not": {"anyOf": [{"allOf": [_given(a), _given(b)]} for a, b in pairs]}}
    return ApiModel.model_config | ConfigDict(json_schema_extra=rule)


def check_dns_label(value: str) -> str:
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise ValueError(
            "must be a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending "
            "with a letter or digit"
        )
    return value


def check_label_key(key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"label key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not LABEL_NAME.match(name):
        raise ValueError(
            f"label key {key!r}: name must be 1-63 characters of [A-Za-z0-9-_.], "
            "starting and ending alphanumeric"
        )


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        check_label_key(key)
        if len(value) > 63 or not LABEL_NAME.match(value):
            raise ValueError(f"label {key!r}: value must be at most 63 characters of [A-Za-z0-9-_.]")
    return labels


def check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    for key, value in annotations.items():
        check_label_key(key)
        if "\x00" in value:
            raise ValueError(f"annotation {key!r}: NUL characters are not allowed")
    if sum(len(k) + len(v) for k, v in annotations.items()) > MAX_ANNOTATIONS_BYTES:
        raise ValueError("annotations may hold at most 256 KiB")
    return annotations


def parse_quantity(value: str) -> Decimal:
    """A Kubernetes quantity ("2", "500m", "1Gi", "1e3") as a number."""
    match = QUANTITY.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a quantity (e.g. 2, 500m, 1Gi, 512Mi)")
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["num"])
        if suffix[:1] in ("e", "E"):
            return number * (Decimal(10) ** int(suffix[1:]))
        return number * SUFFIX_FACTOR[suffix]
    except (DecimalException, OverflowError, ValueError) as exc:
        raise ValueError(f"{value!r} is out of range") from exc


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp as stored in status ("...Z"), or None."""
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None


def _quantity(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        # pydantic reports ValueError (not TypeError) as a field error
        raise ValueError("must be a quantity: a number or a string such as '2', '500m', '1Gi'")  # noqa: TRY004
    text = str(value)
    parse_quantity(text)
    return text


# The rule is stated in the document (pattern, maxLength) and enforced by check_dns_label, whose message
# names it in words.
DnsLabel = Annotated[
    str,
    AfterValidator(check_dns_label),
    Field(json_schema_extra={"pattern": DNS_LABEL.pattern, "maxLength": 63, "minLength": 1}),
]
Labels = Annotated[
    dict[str, str],
    AfterValidator(check_labels),
    Field(
        json_schema_extra={
            "propertyNames": {"pattern": f"^{LABEL_KEY}$"},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_NAME.pattern},
        }
    ),
]
Annotations = Annotated[
    dict[str, str],
    AfterValidator(check_annotations),
    Field(
        description="At most 256 KiB in all.",
        json_schema_extra={
            "propertyNames": {"pattern": f"^{LABEL_KEY}$"},
            "additionalProperties": {"type": "string", "pattern": "^[^\\u0000]*$"},
        },
    ),
]
Quantity = Annotated[
    str,
    BeforeValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "pattern": QUANTITY_PATTERN}, {"type": "number", "minimum": 0}],
            "x-kubernetes-int-or-string": True,
            "examples": ["2", "500m", "1Gi"],
        }
    ),
]


class ObjectMeta(ApiModel):
    """Object metadata. Server-set fields (uid, generation, timestamps) are read-only: accepted and ignored
    in requests, so a GET-edit-PUT round trip works; resourceVersion, when sent, is a precondition. A name
    or a generateName is required."""

    model_config = ApiModel.model_config | ConfigDict(
        json_schema_extra={"anyOf": [_given("name"), _given("generateName")]}
    )

    name: DnsLabel | None = None
    generate_name: str | None = Field(
        default=None, max_length=GENERATE_NAME_MAX, pattern=r"^[a-z0-9]([-a-z0-9]*)?$"
    )
    namespace: DnsLabel | None = Field(
        default=None,
        description="The path's namespace; when given it must be that one.",
        json_schema_extra={"readOnly": True},
    )
    uid: str | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


class ObjectMetaOut(ApiModel):
    name: str
    namespace: str | None = None
    uid: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str
    generation: int
    creation_timestamp: datetime
    deletion_timestamp: datetime | None = None


class ListMeta(ApiModel):
    resource_version: str
    continue_: str | None = Field(default=None, alias="continue")
    remaining_item_count: int | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    last_probe_time: datetime | None = None


class FieldProblem(ApiModel):
    field: str
    message: str


class Problem(ApiModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    reason: str | None = None
    errors: list[FieldProblem] = Field(default_factory=list)


class WatchEvent(ApiModel):
    """One line of a watch stream."""

    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]
    object: dict[str, Any]
