"""What the guest agent reported, each section stamped with when it was observed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from app.schemas.common import ApiModel


class Section(ApiModel):
    model_config = ApiModel.model_config | ConfigDict(extra="allow")

    observed_at: datetime | None = Field(default=None, description="When the guest agent reported this.")


class OSInfo(Section):
    id: str | None = None
    name: str | None = None
    pretty_name: str | None = None
    version: str | None = None
    version_id: str | None = None
    kernel_release: str | None = None
    kernel_version: str | None = None
    machine: str | None = None


class Items(Section):
    items: list[dict[str, Any]] = Field(default_factory=list)


class Hostname(Section):
    hostname: str | None = None


class Timezone(Section):
    name: str | None = None
    offset: int | None = Field(default=None, description="Seconds east of UTC.")


class AgentVersion(Section):
    version: str | None = None


class SupportedCommands(Section):
    items: list[str] = Field(default_factory=list)


class GuestView(ApiModel):
    observed_at: datetime | None = None
    os_info: OSInfo
    hostname: Hostname
    timezone: Timezone
    interfaces: Items
    filesystems: Items
    users: Items
    agent_version: AgentVersion
    supported_commands: SupportedCommands


SECTIONS = {"osinfo": "osInfo", "interfaces": "interfaces", "filesystems": "filesystems", "users": "users"}


def guest_view(report: dict[str, Any]) -> dict[str, Any]:
    """The stored report as the API shows it: every section an object with its observedAt."""
    at = report.get("observedAt")
    return {
        "observedAt": at,
        "osInfo": {**report.get("osInfo", {}), "observedAt": at},
        "hostname": {"hostname": report.get("hostname"), "observedAt": at},
        "timezone": {**report.get("timezone", {}), "observedAt": at},
        "interfaces": {"items": report.get("interfaces", []), "observedAt": at},
        "filesystems": {"items": report.get("filesystems", []), "observedAt": at},
        "users": {"items": report.get("users", []), "observedAt": at},
        "agentVersion": {"version": report.get("agentVersion"), "observedAt": at},
        "supportedCommands": {"items": report.get("supportedCommands", []), "observedAt": at},
    }
