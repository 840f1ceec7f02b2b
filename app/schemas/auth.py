"""API tokens."""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from typing import Literal

from pydantic import Field, field_validator

from app.schemas.common import DNS_LABEL, ApiModel, DnsLabel, check_dns_label

RoleName = Literal["viewer", "operator", "admin"]


class Role(IntEnum):
    viewer = 1
    operator = 2
    admin = 3


class Grant(ApiModel):
    namespace: str = Field(
        description='A namespace, or "*" for every namespace and cluster-scoped objects.',
        json_schema_extra={"pattern": rf"^\*$|{DNS_LABEL.pattern}", "maxLength": 63},
    )
    role: RoleName

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return value if value == "*" else check_dns_label(value)


class TokenRequest(ApiModel):
    name: DnsLabel
    grants: list[Grant] = Field(min_length=1, max_length=100)


class Token(ApiModel):
    name: str
    grants: list[Grant]
    created_at: datetime


class TokenCreated(Token):
    token: str = Field(description="The secret, shown once; Corral keeps only its SHA-256 digest.")


class TokenList(ApiModel):
    items: list[Token]


class WhoAmI(ApiModel):
    name: str
    grants: list[Grant]
