"""VirtualMachineInstance: KubeVirt's VirtualMachineInstanceSpec, the subset Corral implements."""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, StrictBool, StringConstraints, field_validator, model_validator
from pydantic.alias_generators import to_camel

from app.disks.reference import REFERENCE_PATTERN, candidates
from app.schemas.common import (
    BASE64_PATTERN,
    ApiModel,
    Condition,
    DnsLabel,
    ListMeta,
    ObjectMeta,
    ObjectMetaOut,
    Quantity,
    exactly_one_of,
    parse_quantity,
)
from app.schemas.guest import OSInfo
from app.schemas.migration import MigrationState

RunStrategy = Literal["Always", "Halted", "Manual", "RerunOnFailure", "Once"]
InstancePhase = Literal[
    "Pending",
    "Scheduling",
    "Scheduled",
    "Starting",
    "Running",
    "Paused",
    "Migrating",
    "Stopping",
    "Stopped",
    "Failed",
    "Unknown",
    "Terminating",
]


class ResourceRequirements(ApiModel):
    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)


class CPU(ApiModel):
    cores: int | None = Field(default=None, ge=1, le=512)
    sockets: int | None = Field(default=None, ge=1, le=64)
    threads: int | None = Field(default=None, ge=1, le=8)
    model: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")


class Memory(ApiModel):
    guest: Quantity | None = None


class DiskTarget(ApiModel):
    bus: Literal["virtio", "sata", "scsi"] = "virtio"
    readonly: StrictBool = False


class Disk(ApiModel):
    name: DnsLabel
    disk: DiskTarget | None = None
    cdrom: DiskTarget | None = None
    boot_order: int | None = Field(default=None, ge=1)
    serial: str | None = Field(default=None, max_length=20, pattern=r"^[A-Za-z0-9_.+-]+$")


class InterfaceBinding(ApiModel):
    pass


class Interface(ApiModel):
    name: DnsLabel
    model: Literal["virtio", "e1000", "e1000e", "rtl8139"] = "virtio"
    mac_address: str | None = Field(default=None, pattern=r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
    masquerade: InterfaceBinding | None = None
    bridge: InterfaceBinding | None = None


class PodNetwork(ApiModel):
    vm_network_cidr: str | None = Field(
        default=None, description="Accepted for KubeVirt compatibility; the node's NAT network decides."
    )


class MultusNetwork(ApiModel):
    network_name: DnsLabel = Field(description="A cluster Network resource (/v1/networks).")
    default: StrictBool = False


class Network(ApiModel):
    """KubeVirt's network: `pod: {}` is the NAT network Corral runs on every node."""

    model_config = exactly_one_of("pod", "multus")

    name: DnsLabel
    pod: PodNetwork | None = None
    multus: MultusNetwork | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Network:
        if (self.pod is None) == (self.multus is None):
            raise ValueError("a network is exactly one of pod or multus")
        return self


class ChannelTarget(ApiModel):
    name: str = Field(max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")


class ChannelSource(ApiModel):
    name: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")


class Channel(ApiModel):
    """A virtio-serial channel; `org.qemu.guest_agent.0` is the guest agent's."""

    type: Literal["unix"] = "unix"
    target: ChannelTarget
    source: ChannelSource | None = None


class HostDeviceRequest(ApiModel):
    name: DnsLabel
    device_name: str = Field(
        min_length=1, max_length=253, description="A permitted resourceName, or a libvirt node-device name."
    )


class Devices(ApiModel):
    disks: list[Disk] = Field(default_factory=list, max_length=32)
    interfaces: list[Interface] = Field(default_factory=list, max_length=16)
    channels: list[Channel] = Field(default_factory=list, max_length=8)
    gpus: list[HostDeviceRequest] = Field(default_factory=list, max_length=16)
    host_devices: list[HostDeviceRequest] = Field(default_factory=list, max_length=16)


class Machine(ApiModel):
    type: str = Field(default="q35", max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class DomainSpec(ApiModel):
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    cpu: CPU | None = None
    memory: Memory | None = None
    devices: Devices = Field(default_factory=Devices)
    machine: Machine | None = None


# Reasons an instance waits on its containerDisk after the pull failed (phase Scheduled, retried).
IMAGE_PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull")


class ContainerDiskSource(ApiModel):
    image: str = Field(
        min_length=1,
        max_length=255,
        pattern=REFERENCE_PATTERN,
        description="A containerDisk image: an OCI reference (`quay.io/containerdisks/fedora:40`, "
        "`host:port/repo@sha256:...`) or a short name (`ubuntu:22.04`) looked up in the node's image "
        "catalog, then in the configured search registries. The image holds one qcow2 or raw file "
        "under /disk/.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent",
        description="IfNotPresent: use the node's cached copy when there is one. Always: ask the registry "
        "for the tag's current digest for every new instance. Never: use only what the node has.",
    )
    image_pull_secret: DnsLabel | None = Field(
        default=None,
        description="A kubernetes.io/dockerconfigjson Secret in the instance's namespace with the registry "
        "login (over the node's CORRAL_REGISTRY_AUTH_FILE). A node shares a pulled image between instances.",
    )

    @field_validator("image")
    @classmethod
    def _reference(cls, value: str) -> str:
        candidates(value, ())  # raises InvalidReference (a ValueError: 422 naming the field)
        return value


class EmptyDiskSource(ApiModel):
    capacity: Quantity


class DataVolumeReference(ApiModel):
    name: DnsLabel = Field(description="A DataVolume in the instance's namespace.")


class ClaimSource(ApiModel):
    claim_name: DnsLabel = Field(
        description="A DataVolume in the instance's namespace (CDI names its PVC so)."
    )


MAX_CLOUD_INIT_BYTES = 256 * 1024  # per document (user data, network data), decoded


class SecretReference(ApiModel):
    name: DnsLabel


def check_cloud_init_size(field: str, data: bytes | None) -> None:
    if data is not None and len(data) > MAX_CLOUD_INIT_BYTES:
        raise ValueError(f"{field} is {len(data)} bytes, over the {MAX_CLOUD_INIT_BYTES} limit")


class CloudInitSource(ApiModel):
    """KubeVirt's cloudInitNoCloud / cloudInitConfigDrive: user data and network data, inline or base64."""

    user_data: str | None = Field(default=None, description="e.g. `#cloud-config` YAML, or a script.")
    user_data_base64: str | None = Field(default=None, json_schema_extra={"pattern": BASE64_PATTERN})
    user_data_secret_ref: SecretReference | None = Field(
        default=None, description="A Secret in the namespace whose `userdata` (or `userData`) key holds it."
    )
    network_data: str | None = Field(
        default=None, description="NoCloud: network-config YAML (v1 or v2). ConfigDrive: network_data.json."
    )
    network_data_base64: str | None = Field(default=None, json_schema_extra={"pattern": BASE64_PATTERN})
    network_data_secret_ref: SecretReference | None = Field(
        default=None,
        description="A Secret in the namespace whose `networkdata` (or `networkData`) key holds it.",
    )

    @model_validator(mode="after")
    def _documents(self) -> CloudInitSource:
        for what in ("user_data", "network_data"):
            given = [
                f for f in (what, f"{what}_base64", f"{what}_secret_ref") if getattr(self, f) is not None
            ]
            if len(given) > 1:
                raise ValueError(f"give one of {', '.join(to_camel(f) for f in given)}")
            check_cloud_init_size(to_camel(what), self.decoded(what))
        if not any(
            getattr(self, f"{what}{form}") is not None
            for what in ("user_data", "network_data")
            for form in ("", "_base64", "_secret_ref")
        ):
            raise ValueError("give userData (or userDataBase64, userDataSecretRef) and/or networkData")
        return self

    def secret_names(self) -> set[str]:
        return {ref.name for ref in (self.user_data_secret_ref, self.network_data_secret_ref) if ref}

    def decoded(self, what: Literal["user_data", "network_data"]) -> bytes | None:
        """The document's bytes; raises ValueError for bad base64."""
        text, encoded = getattr(self, what), getattr(self, f"{what}_base64")
        if text is not None:
            return str(text).encode()
        if encoded is None:
            return None
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError(f"{to_camel(what)}Base64 is not valid base64") from None


class CloudInitNoCloudSource(CloudInitSource):
    @model_validator(mode="after")
    def _network_yaml(self) -> CloudInitNoCloudSource:
        data = self.decoded("network_data")
        if data is not None:
            try:
                parsed = yaml.safe_load(data)
            except yaml.YAMLError as exc:
                raise ValueError(f"networkData is not YAML: {str(exc)[:200]}") from None
            if not isinstance(parsed, dict):
                raise ValueError("networkData must be a network-config mapping (version: 1 or 2)")
        return self


class CloudInitConfigDriveSource(CloudInitSource):
    @model_validator(mode="after")
    def _network_json(self) -> CloudInitConfigDriveSource:
        data = self.decoded("network_data")
        if data is not None:
            try:
                parsed = json.loads(data)
            except ValueError as exc:
                raise ValueError(f"networkData is not JSON (network_data.json): {exc}") from None
            if not isinstance(parsed, dict):
                raise ValueError("networkData must be a JSON object (OpenStack network_data.json)")
        return self


class Volume(ApiModel):
    model_config = exactly_one_of(
        "containerDisk",
        "emptyDisk",
        "dataVolume",
        "persistentVolumeClaim",
        "cloudInitNoCloud",
        "cloudInitConfigDrive",
    )

    name: DnsLabel
    container_disk: ContainerDiskSource | None = None
    empty_disk: EmptyDiskSource | None = None
    data_volume: DataVolumeReference | None = None
    persistent_volume_claim: ClaimSource | None = None
    cloud_init_no_cloud: CloudInitNoCloudSource | None = None
    cloud_init_config_drive: CloudInitConfigDriveSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        sources = (
            self.container_disk,
            self.empty_disk,
            self.data_volume,
            self.persistent_volume_claim,
            self.cloud_init_no_cloud,
            self.cloud_init_config_drive,
        )
        if sum(source is not None for source in sources) != 1:
            names = (
                "containerDisk, emptyDisk, dataVolume, persistentVolumeClaim, cloudInitNoCloud or "
                "cloudInitConfigDrive"
            )
            raise ValueError(f"a volume has exactly one source: {names}")
        return self

    @property
    def cloud_init(self) -> CloudInitSource | None:
        return self.cloud_init_no_cloud or self.cloud_init_config_drive

    @property
    def data_volume_name(self) -> str | None:
        """The DataVolume it attaches, by either spelling."""
        if self.data_volume is not None:
            return self.data_volume.name
        return self.persistent_volume_claim.claim_name if self.persistent_volume_claim else None


class SecretSource(ApiModel):
    secret_name: DnsLabel


class CredentialSource(ApiModel):
    secret: SecretSource


class GuestAgentUsers(ApiModel):
    users: list[Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")]] = Field(
        min_length=1, max_length=16, description="Guest users whose authorized_keys the agent keeps."
    )


class Empty(ApiModel):
    pass


class KeyPropagation(ApiModel):
    model_config = exactly_one_of("noCloud", "configDrive", "qemuGuestAgent")

    no_cloud: Empty | None = Field(
        default=None, description="Into the cloudInitNoCloud seed's meta-data (the image's default user)."
    )
    config_drive: Empty | None = Field(
        default=None, description="Into the cloudInitConfigDrive seed's meta_data.json public_keys."
    )
    qemu_guest_agent: GuestAgentUsers | None = Field(
        default=None,
        description="Written by the guest agent while the guest runs, and rewritten when the Secret changes: "
        "each user's ~/.ssh/authorized_keys holds exactly the Secret's keys.",
    )

    @model_validator(mode="after")
    def _one(self) -> KeyPropagation:
        if sum(m is not None for m in (self.no_cloud, self.config_drive, self.qemu_guest_agent)) != 1:
            raise ValueError("exactly one of noCloud, configDrive or qemuGuestAgent")
        return self


class SshPublicKeyCredential(ApiModel):
    source: CredentialSource = Field(
        description="A Secret whose every value holds public keys, one per line."
    )
    propagation_method: KeyPropagation


class AccessCredential(ApiModel):
    """KubeVirt's accessCredentials: SSH public keys from a Secret, put into the guest."""

    ssh_public_key: SshPublicKeyCredential


def data_volume_names(spec: InstanceSpec) -> list[str]:
    return [name for name in (v.data_volume_name for v in spec.volumes) if name is not None]


class InstanceSpec(ApiModel):
    domain: DomainSpec = Field(default_factory=DomainSpec)
    volumes: list[Volume] = Field(default_factory=list, max_length=32)
    networks: list[Network] = Field(
        default_factory=list,
        max_length=16,
        description="Each interface names one. None given: every interface (one when none are given) is on "
        "the node's NAT network (`pod: {}`).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    run_strategy: RunStrategy = "Always"
    termination_grace_period_seconds: int = Field(default=30, ge=0, le=3600)
    hostname: DnsLabel | None = None
    access_credentials: list[AccessCredential] = Field(default_factory=list, max_length=16)

    @model_validator(mode="after")
    def _seeds_for_keys(self) -> InstanceSpec:
        seeds = {
            "noCloud": any(v.cloud_init_no_cloud is not None for v in self.volumes),
            "configDrive": any(v.cloud_init_config_drive is not None for v in self.volumes),
        }
        for i, credential in enumerate(self.access_credentials):
            method = credential.ssh_public_key.propagation_method
            for wanted, given in (("noCloud", method.no_cloud), ("configDrive", method.config_drive)):
                if given is not None and not seeds[wanted]:
                    raise ValueError(
                        f"spec.accessCredentials[{i}].sshPublicKey.propagationMethod.{wanted}: the instance "
                        f"has no cloudInit{wanted[0].upper()}{wanted[1:]} volume to carry the keys"
                    )
        return self

    def secret_names(self) -> set[str]:
        """The Secrets the spec uses (cloud-init documents, SSH keys)."""
        names = {c.ssh_public_key.source.secret.secret_name for c in self.access_credentials}
        for volume in self.volumes:
            if volume.cloud_init is not None:
                names |= volume.cloud_init.secret_names()
            if volume.container_disk is not None and volume.container_disk.image_pull_secret:
                names.add(volume.container_disk.image_pull_secret)
        return names

    @model_validator(mode="after")
    def _interfaces_have_networks(self) -> InstanceSpec:
        networks = {n.name: n for n in self.networks}
        macs: set[str] = set()
        for i, nic in enumerate(self.domain.devices.interfaces):
            where = f"spec.domain.devices.interfaces[{i}]"
            if self.networks and nic.name not in networks:
                raise ValueError(f"{where}.name: no network named {nic.name!r} in spec.networks")
            if nic.masquerade is not None and nic.bridge is not None:
                raise ValueError(f"{where}: one binding, masquerade or bridge")
            if nic.mac_address is not None:
                if nic.mac_address.lower() in macs:
                    raise ValueError(f"{where}.macAddress: {nic.mac_address} is given twice")
                macs.add(nic.mac_address.lower())
        return self

    @model_validator(mode="after")
    def _one_cloud_init(self) -> InstanceSpec:
        if sum(v.cloud_init is not None for v in self.volumes) > 1:
            raise ValueError("spec.volumes: at most one cloudInitNoCloud or cloudInitConfigDrive volume")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> InstanceSpec:
        for what, names in (
            ("spec.volumes", [v.name for v in self.volumes]),
            ("spec.domain.devices.disks", [d.name for d in self.domain.devices.disks]),
        ):
            if len(names) != len(set(names)):
                raise ValueError(f"{what}: names must be unique")
        return self


class InstancePhaseTransition(ApiModel):
    phase: InstancePhase
    phase_transition_timestamp: datetime


class InterfaceStatus(ApiModel):
    """KubeVirt's status.interfaces[]: a NIC of the domain, with its addresses from the network's DHCP leases
    and the guest agent."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = Field(description="The spec's interface name (in order), else nicN.")
    mac: str
    interface_name: str | None = Field(default=None, description="The guest's name for it (agent).")
    ip_address: str | None = Field(default=None, description="The address to reach it at: IPv4 first.")
    ip_addresses: list[str] = Field(default_factory=list)
    info_source: str = Field(default="", description="`domain` (DHCP leases), `guest-agent`, or both.")


class DeviceAssignment(ApiModel):
    """A host device the instance holds, from placement until it is deleted."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: str = Field(description="libvirt's node-device name (PCI), or the mediated device's UUID.")
    node_name: str
    resource_name: str | None = Field(default=None, description="The permittedHostDevices resourceName.")
    address: str | None = Field(default=None, description="PCI: the host address passed through.")
    mdev_type: str | None = Field(default=None, description="Mediated: the type carved.")
    parent: str | None = Field(default=None, description="Mediated: the PCI device it was carved from.")


class InstanceStatus(ApiModel):
    model_config = ApiModel.model_config | {"extra": "allow"}

    observed_generation: int | None = None
    phase: InstancePhase = "Pending"
    reason: str | None = None
    message: str | None = None
    node_name: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    phase_transition_timestamps: list[InstancePhaseTransition] = Field(default_factory=list)
    interfaces: list[InterfaceStatus] = Field(default_factory=list)
    guest_os_info: OSInfo | None = Field(default=None, alias="guestOSInfo")
    migration_state: MigrationState | None = None
    device_assignments: list[DeviceAssignment] = Field(default_factory=list)


DEFAULT_MEMORY = "512Mi"


def requested_vcpus(spec: InstanceSpec) -> int:
    """vCPUs: the CPU topology when given, else the cpu request rounded up (at least 1)."""
    cpu = spec.domain.cpu
    if cpu is not None and (cpu.cores or cpu.sockets or cpu.threads):
        return (cpu.cores or 1) * (cpu.sockets or 1) * (cpu.threads or 1)
    request = spec.domain.resources.requests.get("cpu")
    return max(1, math.ceil(parse_quantity(request))) if request else 1


def requested_memory(spec: InstanceSpec) -> int:
    """Guest memory in bytes: memory.guest, else the memory request, else 512 MiB."""
    guest = spec.domain.memory.guest if spec.domain.memory else None
    text = guest or spec.domain.resources.requests.get("memory") or DEFAULT_MEMORY
    return int(parse_quantity(text))


class StopOptions(ApiModel):
    force: StrictBool = Field(default=False, description="Power off now instead of a graceful shutdown.")
    grace_period_seconds: int | None = Field(
        default=None, ge=0, le=3600, description="Override spec.terminationGracePeriodSeconds for this stop."
    )


class InstanceBody(ApiModel):
    api_version: str | None = None
    kind: str | None = None
    metadata: ObjectMeta
    spec: InstanceSpec = Field(default_factory=InstanceSpec)
    status: Any = Field(default=None, description="Ignored: status is written by Corral.")


class Instance(ApiModel):
    api_version: str = "kubevirt.io/v1"
    kind: str = "VirtualMachineInstance"
    metadata: ObjectMetaOut
    spec: InstanceSpec
    status: InstanceStatus


class InstanceList(ApiModel):
    api_version: str = "kubevirt.io/v1"
    kind: str = "VirtualMachineInstanceList"
    metadata: ListMeta
    items: list[Instance]
