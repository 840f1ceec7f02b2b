"""The worker's composition root: the one place that builds the real libvirt driver."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from app.config import Settings
from app.controllers.base import Reconciler
from app.controllers.datavolumes import DataVolumeReconciler, ImportConfig
from app.controllers.image_cache import ImagePuller, RegistryConfig
from app.controllers.instances import InstanceReconciler
from app.controllers.migration_policy import Policy
from app.controllers.migrations import MigrationReconciler
from app.controllers.naming import default_network
from app.controllers.nodes import NodeReconciler
from app.controllers.pools import PoolReconciler
from app.db import Database
from app.repositories import workqueue
from app.services.nodes import NodeService
from app.virt.driver import HypervisorError
from app.virt.libvirt_driver import connect
from app.worker.connections import NodeConnections
from app.worker.events import EventBridge
from app.worker.runner import Worker

log = logging.getLogger(__name__)
FALLBACK_URI = "test:///default"


@dataclass
class WorkerProcess:
    worker: Worker
    bridge: EventBridge
    connections: NodeConnections

    def start(self) -> None:
        self.bridge.start()
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        self.bridge.stop()
        self.connections.close_all()


def local_libvirt_uri(settings: Settings) -> str:
    """CORRAL_LIBVIRT_URI, else qemu:///system when a libvirtd answers, else the test driver (said loudly)."""
    if settings.libvirt_uri:
        return settings.libvirt_uri
    try:
        connect("qemu:///system").close()
        return "qemu:///system"
    except HypervisorError as exc:
        log.warning(
            "*** no libvirtd answers on qemu:///system (%s): the local node uses libvirt's TEST driver "
            "(%s); instances will not run real guests. Start libvirtd or set CORRAL_LIBVIRT_URI. ***",
            exc,
            FALLBACK_URI,
        )
        return FALLBACK_URI


def register_local_node(db: Database, settings: Settings) -> None:
    with db.transaction() as session:
        if NodeService(session).register_local(local_libvirt_uri(settings), settings.virt_type):
            log.info("registered the local libvirt as node 'local'")


def migration_defaults(settings: Settings) -> Policy:
    return Policy(
        bandwidth_mib=settings.migration_bandwidth_mib,
        max_downtime_ms=settings.migration_max_downtime_ms,
        downtime_steps=settings.migration_downtime_steps,
        downtime_delay_per_gib=settings.migration_downtime_delay_per_gib,
        completion_timeout_per_gib=settings.migration_completion_timeout_per_gib,
        allow_auto_converge=settings.migration_allow_auto_converge,
        allow_post_copy=settings.migration_allow_post_copy,
    )


def registry_config(settings: Settings) -> RegistryConfig:
    return RegistryConfig(
        search=settings.registry_search,
        insecure=settings.insecure_registry_hosts,
        auth_file=settings.registry_auth_file,
        max_disk_bytes=settings.max_disk_bytes,
        cache_bytes=settings.image_cache_bytes,
        scratch=settings.data_dir / "pulls",
        concurrent_pulls=settings.concurrent_pulls,
        backoff_seconds=settings.image_pull_backoff_seconds,
        keep_unused=timedelta(seconds=settings.image_keep_unused_seconds),
    )


def build_worker(db: Database, settings: Settings) -> WorkerProcess:
    reconcilers: list[Reconciler] = []
    bridge = EventBridge(db, reconcilers)  # filled below: reconcilers need the connections first
    connections = NodeConnections(connect, bridge)
    network = default_network(settings.default_network_cidr)
    identity = workqueue.new_holder()
    instances = InstanceReconciler(db, connections, settings.image_dir, network=network, worker=identity)
    bridge.caused_here.append(instances.caused_here)
    reconcilers += [
        NodeReconciler(
            db,
            connections,
            settings.heartbeat_seconds,
            settings.cpu_allocation_ratio,
            settings.device_inventory_seconds,
        ),
        instances,
        PoolReconciler(db, settings.pool_burst),
    ]
    migrations = MigrationReconciler(
        db,
        connections,
        migration_defaults(settings),
        settings.image_dir,
        settings.migrations_per_node,
        network=network,
    )
    reconcilers.append(migrations)
    bridge.observers.append(migrations.switchovers.observe)
    registry = registry_config(settings)
    puller = ImagePuller(db, connections, registry)
    imports = ImportConfig(registry, settings.import_allowed_host_set)
    reconcilers += [puller, DataVolumeReconciler(db, connections, imports)]
    worker = Worker(
        db,
        {r.kind: r for r in reconcilers},
        concurrency=settings.worker_concurrency,
        lease_seconds=settings.lease_seconds,
        resync_seconds=settings.resync_seconds,
        event_retention=settings.event_retention,
        resync_sources=[puller.resync_keys],
        identity=identity,
    )
    return WorkerProcess(worker, bridge, connections)
