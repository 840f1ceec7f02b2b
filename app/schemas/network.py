"""Network (cluster-scoped, admin): a network instances attach to by name (`multus: {networkName}`), besides
the NAT network every node runs (`pod: {}`)."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, field_validator, model_validator

from app.schemas.common import ApiModel, ListMeta, ObjectMeta, ObjectMetaOut, exactly_one_of


class BridgeNetwork(ApiModel):
    name: str = Field(
        pattern=r"^[A-Za-z0-9_.-]{1,15}$",
        description="A Linux bridge that exists on every node (the operator's: Corral does not make it). "
        "Guests are on the bridge's own L2 network; addresses come from whatever serves it.",
    )


_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"


class NatNetwork(ApiModel):
    cidr: str = Field(
        description="An IPv4 subnet (/8 to /28, no host bits set) Corral runs as a NAT network with DHCP on "
        "every node.",
        json_schema_extra={"pattern": rf"^({_OCTET}\.){{3}}{_OCTET}/([89]|1\d|2[0-8])$"},
    )

    @field_validator("cidr")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            subnet = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 subnet: {exc}") from None
        if not 8 <= subnet.prefixlen <= 28:
            raise ValueError("the prefix must be /8 to /28")
        return value


class NetworkSpec(ApiModel):
    model_config = exactly_one_of("bridge", "nat")

    bridge: BridgeNetwork | None = None
    nat: NatNetwork | None = None

    @model_validator(mode="after")
    def _one(self) -> NetworkSpec:
        if (self.bridge is None) == (self.nat is None):
            raise ValueError("a Network is exactly one of bridge or nat")
        return self


class NetworkStatus(ApiModel):
    model_config = ApiModel.model_config | {"extra": "allow"}


class NetworkBody(ApiModel):
    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta
    spec: NetworkSpec
    status: Any = Field(default=None, description="Ignored.")


class NetworkObject(ApiModel):
    api_version: str = "corral.dev/v1"
    kind: str = "Network"
    metadata: ObjectMetaOut
    spec: NetworkSpec
    status: NetworkStatus = Field(default_factory=NetworkStatus)


class NetworkList(ApiModel):
    api_version: str = "corral.dev/v1"
    kind: str = "NetworkList"
    metadata: ListMeta
    items: list[NetworkObject]
