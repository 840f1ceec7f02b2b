"""VirtualMachinePool: a warm pool of pre-booted instances, claimed in milliseconds."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, StrictBool, model_validator

from app.schemas.common import (
    Annotations,
    ApiModel,
    Condition,
    DnsLabel,
    Labels,
    ListMeta,
    ObjectMeta,
    ObjectMetaOut,
    exactly_one_of,
)
from app.schemas.conditions import find_condition
from app.schemas.instance import InstanceSpec, RunStrategy

MAX_POOL_SIZE = 1000


class TemplateMeta(ApiModel):
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    name: str | None = Field(default=None, description="Ignored: members are named <pool>-<n>.")


class InstanceTemplate(ApiModel):
    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: InstanceSpec = Field(default_factory=InstanceSpec)


class VirtualMachineSpec(ApiModel):
    """KubeVirt's VirtualMachineSpec, as far as a pool member needs it."""

    running: StrictBool | None = None
    run_strategy: RunStrategy | None = None
    template: InstanceTemplate


class VirtualMachineTemplate(ApiModel):
    metadata: TemplateMeta = Field(default_factory=TemplateMeta)
    spec: VirtualMachineSpec


class LabelSelector(ApiModel):
    match_labels: dict[str, str] = Field(default_factory=dict)


class PoolSpec(ApiModel):
    model_config = exactly_one_of("template", "virtualMachineTemplate")

    size: int | None = Field(default=None, ge=0, le=MAX_POOL_SIZE, description="Warm members kept.")
    replicas: int | None = Field(
        default=None, ge=0, le=MAX_POOL_SIZE, description="KubeVirt's name for size."
    )
    min_available: int = Field(
        default=0,
        ge=0,
        le=MAX_POOL_SIZE,
        description="Floor of Ready unclaimed members that maintenance never goes below.",
    )
    auto_replenish: StrictBool = Field(default=True, description="Replace a claimed member.")
    template: InstanceTemplate | None = None
    virtual_machine_template: VirtualMachineTemplate | None = Field(
        default=None, description="KubeVirt's spelling of the member template."
    )
    warm_state: Literal["Running", "Paused"] = Field(
        default="Running", description="Paused: members wait with their vCPUs paused and resume on claim."
    )
    paused: StrictBool = Field(default=False, description="Stop reconciling the pool.")
    selector: LabelSelector | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PoolSpec:
        if (self.template is None) == (self.virtual_machine_template is None):
            raise ValueError("exactly one of template and virtualMachineTemplate is required")
        if self.size is not None and self.replicas is not None and self.size != self.replicas:
            raise ValueError("size and replicas are synonyms: give one, or the same number")
        if self.min_available > self.desired_size():
            raise ValueError("minAvailable cannot exceed size")
        template_labels = self.member_template().metadata.labels
        if self.selector and any(template_labels.get(k) != v for k, v in self.selector.match_labels.items()):
            raise ValueError("selector.matchLabels must match the template's labels")
        return self

    def desired_size(self) -> int:
        return self.size if self.size is not None else (self.replicas or 0)

    def member_template(self) -> InstanceTemplate:
        if self.template is not None:
            return self.template
        assert self.virtual_machine_template is not None
        vm = self.virtual_machine_template.spec
        template = vm.template
        labels = {**self.virtual_machine_template.metadata.labels, **template.metadata.labels}
        return InstanceTemplate(
            metadata=TemplateMeta(labels=labels, annotations=template.metadata.annotations),
            spec=template.spec,
        )


class PoolStatus(ApiModel):
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    warming: int = 0
    updated_replicas: int = Field(
        default=0,
        description="Members that match the current spec: made from its template and in its warmState. The "
        "spec has rolled out when observedGeneration is metadata.generation and this equals replicas.",
    )
    claimed: int = 0
    failed: int = 0
    conditions: list[Condition] = Field(default_factory=list)
    failures: int = Field(default=0, description="Members that failed in a row (creates back off).")
    retry_after: datetime | None = Field(default=None, description="No new member before this time.")


class PoolBody(ApiModel):
    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta
    spec: PoolSpec
    status: Any = Field(default=None, description="Ignored: status is written by Corral.")


class Pool(ApiModel):
    api_version: str = "pool.kubevirt.io/v1"
    kind: str = "VirtualMachinePool"
    metadata: ObjectMetaOut
    spec: PoolSpec
    status: PoolStatus


class PoolList(ApiModel):
    api_version: str = "pool.kubevirt.io/v1"
    kind: str = "VirtualMachinePoolList"
    metadata: ListMeta
    items: list[Pool]


class ClaimRequest(ApiModel):
    name: DnsLabel | None = Field(
        default=None, description="The claimed instance's new name (default: keep)."
    )
    labels: Labels = Field(default_factory=dict, description="Labels the instance takes (pool labels go).")
    annotations: Annotations = Field(default_factory=dict)


POOL_LABEL = "corral.dev/pool"  # on unclaimed members: the pool's name
CLAIMED_LABEL = "corral.dev/claimed-from"  # on claimed instances: the pool they came from
TEMPLATE_HASH = "corral.dev/template-hash"  # on members: which template they were made from
WARM_PAUSED = "corral.dev/warm-paused"  # on members the pool paused after their guest agent answered
CLAIMED_AT = "corral.dev/claimed-at"  # on claimed instances: when

MemberState = Literal["available", "warming", "failed"]


def member_state(status: dict[str, Any], annotations: dict[str, str], warm_state: str) -> MemberState:
    """Whether a member can be claimed now, is still getting there, or has failed."""
    phase = status.get("phase")
    if phase == "Failed" or status.get("reason") == "CrashLoopBackOff":
        return "failed"
    # Unknown: a driver that cannot tell (libvirt's test driver); a real guest must have its agent answer.
    agent = (find_condition(status, "AgentConnected") or {}).get("status") in ("True", "Unknown")
    if warm_state == "Paused":
        return "available" if phase == "Paused" and annotations.get(WARM_PAUSED) == "true" else "warming"
    return "available" if phase == "Running" and agent else "warming"
