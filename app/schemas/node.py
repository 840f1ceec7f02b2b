"""Node: a libvirt host (cluster-scoped)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, StrictBool

from app.schemas.common import ApiModel, Condition, ListMeta, ObjectMeta, ObjectMetaOut

TRANSPORTS = ("tcp", "tls", "ssh", "unix", "libssh2")
# libvirt's test driver also runs inside libvirtd (test+unix:///default): one shared state for every client.
LIBVIRT_SCHEMES = tuple(
    f"{driver}{suffix}" for driver in ("qemu", "test") for suffix in ("", *(f"+{t}" for t in TRANSPORTS))
)
VirtType = Literal["kvm", "qemu"]


def check_libvirt_uri(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme not in LIBVIRT_SCHEMES:
        raise ValueError(
            f"scheme {parts.scheme!r} is not a libvirt QEMU or test URI ({', '.join(LIBVIRT_SCHEMES)})"
        )
    if parts.scheme.startswith("qemu") and parts.path not in ("/system", "/session"):
        raise ValueError("a QEMU URI names /system or /session, e.g. qemu+tcp://host/system")
    if parts.scheme.startswith("test") and not parts.path:
        raise ValueError("a test URI names a path, e.g. test:///default")
    if not uri.isascii() or not uri.isprintable() or " " in uri:
        raise ValueError("must be printable ASCII without spaces")
    return uri


# check_libvirt_uri's rule as a pattern, for clients: printable ASCII; the host part without / ? # [ ].
_HOST = r"[\x21\x22\x24-\x2e\x30-\x3e\x40-\x5a\x5c\x5e-\x7e]*"
_TAIL = r"(\?[\x21\x22\x24-\x7e]*)?(#[\x21-\x7e]*)?$"
LIBVIRT_URI_PATTERN = (
    rf"^(qemu(\+({'|'.join(TRANSPORTS)}))?://{_HOST}/(system|session){_TAIL}"
    rf"|^test(\+({'|'.join(TRANSPORTS)}))?://{_HOST}/[\x21\x22\x24-\x3e\x40-\x7e]*{_TAIL})"
)
LibvirtUri = Annotated[
    str,
    Field(min_length=4, max_length=1024, json_schema_extra={"pattern": LIBVIRT_URI_PATTERN}),
    AfterValidator(check_libvirt_uri),
]


class NodeSpec(ApiModel):
    uri: LibvirtUri = Field(description="libvirt connection URI of the host.")
    migration_uri: LibvirtUri | None = Field(
        default=None,
        description="The URI other nodes' libvirtd dial to migrate guests here (peer to peer), when it "
        "differs from uri, e.g. qemu+tcp://10.0.0.2/system on a migration network. Default: uri.",
    )
    unschedulable: StrictBool = Field(
        default=False, description="No new instances are placed here (set by a drain, cleared by an admin)."
    )
    virt_type: VirtType | None = Field(
        default=None,
        description="kvm (hardware virtualization) or qemu (TCG software emulation); detected when unset.",
    )


class NodeInfo(ApiModel):
    hostname: str = ""
    arch: str = ""
    cpu_model: str = ""
    host_uuid: str = ""
    hypervisor_type: str = ""
    hypervisor_version: str = ""
    libvirt_version: str = ""


class NodeStatus(ApiModel):
    observed_generation: int | None = None
    phase: Literal["Pending", "Ready", "NotReady"] = "Pending"
    conditions: list[Condition] = Field(default_factory=list)
    capacity: dict[str, str] = Field(default_factory=dict)
    allocatable: dict[str, str] = Field(default_factory=dict)
    allocated: dict[str, str] = Field(
        default_factory=dict, description="Host devices held by instances, per resourceName."
    )
    node_info: NodeInfo | None = None
    virt_type: VirtType | None = None
    virt_type_reason: str | None = None
    last_heartbeat_time: datetime | None = None


class NodeBody(ApiModel):
    """A Node as sent by a client (status is ignored)."""

    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta
    spec: NodeSpec
    status: Any = Field(default=None, description="Ignored: status is written by Corral.")


class Node(ApiModel):
    api_version: str = "corral.dev/v1"
    kind: str = "Node"
    metadata: ObjectMetaOut
    spec: NodeSpec
    status: NodeStatus


class NodeList(ApiModel):
    api_version: str = "corral.dev/v1"
    kind: str = "NodeList"
    metadata: ListMeta
    items: list[Node]
