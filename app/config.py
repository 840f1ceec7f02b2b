"""Settings from the environment (CORRAL_*). Reading them has no side effects."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", extra="ignore")

    data_dir: Path = Field(default=Path(".corral"), description="Where the embedded SQLite file lives.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: a SQLite file in data_dir."
    )
    libvirt_uri: str | None = Field(
        default=None,
        description="libvirt URI of the local node; default: qemu:///system if it answers, else test:///default.",
    )
    admin_token: str | None = Field(default=None, description="Bootstraps the first admin token.")
    encryption_key_file: Path | None = Field(
        default=None,
        description="Keys Secrets are encrypted with at rest, one Fernet key per line: the first encrypts, "
        "all decrypt (add a new first line to rotate). Every API and worker process needs the same file. "
        "Default: data_dir/encryption-key, minted on first start.",
    )
    image_dir: Path = Field(default=Path("/var/lib/corral/images"), description="The image catalog.")
    image_registries: str = Field(
        default="quay.io/containerdisks",
        description="Where short containerDisk names (ubuntu:22.04) are looked for, in order: "
        "comma-separated host[/namespace] prefixes.",
    )
    insecure_registries: str = Field(
        default="", description="Registries (host[:port], comma-separated) spoken to over plain HTTP."
    )
    registry_auth_file: Path | None = Field(
        default=None, description="Registry logins, in the containers-auth.json format (podman, skopeo)."
    )
    image_cache_bytes: int = Field(
        default=20 << 30, ge=0, description="Unused pulled images are removed while a node's cache is larger."
    )
    max_disk_bytes: int = Field(
        default=2 << 40, gt=0, description="The largest virtual size a pulled or imported disk may have."
    )
    concurrent_pulls: int = Field(default=2, ge=1, le=16, description="Image pulls at once per worker.")
    import_allowed_hosts: str = Field(
        default="",
        description="Hosts DataVolume imports may fetch from although they resolve to a loopback or "
        "link-local address (comma-separated).",
    )
    image_pull_backoff_seconds: float = Field(
        default=10.0, gt=0, description="Wait after a failed pull; doubles per failure, up to 5 minutes."
    )
    image_keep_unused_seconds: float = Field(
        default=600.0, ge=0, description="An image wanted this recently is never collected."
    )
    default_network_cidr: str = Field(
        default="10.88.0.0/16",
        description="The NAT network Corral runs on every node (`pod: {}`): the node takes the first "
        "address, guests get theirs by DHCP.",
    )
    virt_type: str | None = Field(
        default=None, description="Force the local node's virtualization type (kvm or qemu)."
    )
    auto_migrate: bool = Field(default=True, description="Run Alembic migrations at start-up.")
    worker_concurrency: int = Field(default=4, ge=1, le=64)
    resync_seconds: float = Field(default=300.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    node_grace_seconds: float = Field(
        default=40.0, gt=0, description="A node no worker has reported for this long shows Ready=Unknown."
    )
    pool_burst: int = Field(
        default=2, ge=1, le=100, description="Pool members created per pass and booting at once."
    )
    cpu_allocation_ratio: int = Field(
        default=10, ge=1, le=100, description="vCPUs a node may host per physical CPU (KubeVirt's default)."
    )
    # Cluster defaults of the migration policy (KubeVirt's and Nova's defaults); a migration may override.
    migration_bandwidth_mib: int = Field(default=0, ge=0, description="MiB/s per migration; 0: unlimited.")
    migration_max_downtime_ms: int = Field(default=300, ge=1, description="Top of the downtime ramp.")
    migration_downtime_steps: int = Field(default=10, ge=1, le=100, description="Steps of the downtime ramp.")
    migration_downtime_delay_per_gib: int = Field(
        default=75, ge=0, description="Seconds per GiB of guest memory between two ramp steps."
    )
    migration_completion_timeout_per_gib: int = Field(default=150, ge=1)
    migration_allow_auto_converge: bool = False
    migration_allow_post_copy: bool = False
    migrations_per_node: int = Field(
        default=2, ge=1, le=64, description="Migrations in flight at once per node (in or out)."
    )
    device_inventory_seconds: float = Field(
        default=60.0, gt=0, description="How often each node's devices are listed again."
    )
    lease_seconds: float = Field(default=30.0, gt=1)
    metrics_tenant_labels: bool = Field(
        default=False,
        description="Show series labelled with namespaces and pool names on /metrics to callers without a "
        "cluster-wide token (for a scraper behind its own access control).",
    )
    event_retention: int = Field(default=100_000, ge=100, description="Watch events kept for resuming.")

    @property
    def registry_search(self) -> tuple[str, ...]:
        return tuple(r.strip() for r in self.image_registries.split(",") if r.strip())

    @property
    def import_allowed_host_set(self) -> frozenset[str]:
        return frozenset(h.strip() for h in self.import_allowed_hosts.split(",") if h.strip())

    @property
    def insecure_registry_hosts(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.insecure_registries.split(",") if r.strip())

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'corral.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
