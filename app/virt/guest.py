"""What the guest agent reports, parsed from libvirt's replies into bounded, plain sections.

Everything here comes from inside the guest and is untrusted: strings are cut to printable text of bounded
length, lists to a bounded count, numbers must be non-negative integers, and nothing is interpreted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

MAX_TEXT = 256
MAX_ITEMS = 64
MAX_COMMANDS = 256
OS_FIELDS = {
    "id": "id",
    "name": "name",
    "pretty-name": "prettyName",
    "version": "version",
    "version-id": "versionId",
    "kernel-release": "kernelRelease",
    "kernel-version": "kernelVersion",
    "machine": "machine",
    "variant": "variant",
    "variant-id": "variantId",
}
# The commands Corral's guest features rely on; an agent without them is reported AgentVersionNotSupported.
REQUIRED_COMMANDS = (
    "guest-ping",
    "guest-info",
    "guest-get-osinfo",
    "guest-network-get-interfaces",
    "guest-get-fsinfo",
    "guest-get-host-name",
)


def text(value: Any) -> str | None:
    if value is None:
        return None
    cleaned = "".join(ch for ch in str(value)[: MAX_TEXT * 4] if ch.isprintable())
    return cleaned[:MAX_TEXT]


def count(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def _items(params: Mapping[str, Any], prefix: str) -> range:
    return range(min(count(params.get(f"{prefix}.count")) or 0, MAX_ITEMS))


def parse_guest_info(params: Mapping[str, Any]) -> dict[str, Any]:
    """virDomainGetGuestInfo's typed parameters as sections: osInfo, hostname, timezone, users,
    filesystems, interfaces."""
    os_info = {key: text(params[f"os.{raw}"]) for raw, key in OS_FIELDS.items() if f"os.{raw}" in params}
    users = [
        {
            "name": text(params.get(f"user.{i}.name")),
            "domain": text(params.get(f"user.{i}.domain")),
            "loginTime": count(params.get(f"user.{i}.login-time")),
        }
        for i in _items(params, "user")
    ]
    filesystems = [
        {
            "name": text(params.get(f"fs.{i}.name")),
            "mountpoint": text(params.get(f"fs.{i}.mountpoint")),
            "type": text(params.get(f"fs.{i}.fstype")),
            "totalBytes": count(params.get(f"fs.{i}.total-bytes")),
            "usedBytes": count(params.get(f"fs.{i}.used-bytes")),
        }
        for i in _items(params, "fs")
    ]
    interfaces = []
    for i in _items(params, "if"):
        base = f"if.{i}"
        addresses = []
        for j in _items(params, f"{base}.addr"):
            address = text(params.get(f"{base}.addr.{j}.addr"))
            if address:
                kind, prefix = (
                    text(params.get(f"{base}.addr.{j}.type")),
                    count(params.get(f"{base}.addr.{j}.prefix")),
                )
                addresses.append({"type": kind, "address": address, "prefix": prefix})
        name, mac = text(params.get(f"{base}.name")), text(params.get(f"{base}.hwaddr"))
        interfaces.append({"name": name, "mac": mac, "ipAddresses": addresses})
    timezone = {"name": text(params.get("timezone.name")), "offset": _offset(params.get("timezone.offset"))}
    return {
        "osInfo": os_info,
        "hostname": text(params.get("hostname")),
        "timezone": timezone,
        "users": users,
        "filesystems": filesystems,
        "interfaces": interfaces,
    }


def _offset(value: Any) -> int | None:
    try:
        offset = int(value)
    except (TypeError, ValueError):
        return None
    return offset if abs(offset) <= 24 * 3600 else None


MAX_OUTPUT = 1 << 20  # bytes kept of each of an exec's stdout and stderr


class MalformedReply(ValueError):
    """The guest agent answered something Corral will not interpret."""


def decode_agent_base64(value: Any) -> bytes:
    """Base64 from the agent; anything malformed is refused, never guessed at."""
    if not isinstance(value, str):
        raise MalformedReply("the guest agent sent no base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedReply("the guest agent sent malformed base64") from exc


def exec_result(status: dict[str, Any], *, timed_out: bool) -> dict[str, Any]:
    """guest-exec-status, bounded: exit code, stdout and stderr (cut at 1 MiB each, flagged)."""
    result: dict[str, Any] = {
        "exitCode": count(status.get("exitcode")),
        "signal": count(status.get("signal")),
        "timedOut": timed_out,
    }
    for stream, key in (("stdout", "out-data"), ("stderr", "err-data")):
        raw = decode_agent_base64(status.get(key, "")) if status.get(key) is not None else b""
        result[stream] = raw[:MAX_OUTPUT]
        result[f"{stream}Truncated"] = len(raw) > MAX_OUTPUT or bool(status.get(f"{key[:3]}-truncated"))
    return result


def parse_agent_info(reply: Any) -> dict[str, Any]:
    """guest-info's reply: the agent version and the commands it has enabled."""
    if not isinstance(reply, dict):
        return {"agentVersion": None, "supportedCommands": []}
    commands = reply.get("supported_commands")
    enabled = [
        name
        for c in (commands if isinstance(commands, list) else [])[:MAX_COMMANDS]
        if isinstance(c, dict) and c.get("enabled") is not False and (name := text(c.get("name")))
    ]
    return {"agentVersion": text(reply.get("version")), "supportedCommands": sorted(set(enabled))}
