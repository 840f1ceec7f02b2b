"""The seed pool manifest on real TCG guests: warm members boot, claims hand out running guests whose agent
answers, replacements boot, warmState Paused parks members with their vCPUs stopped and resumes on claim."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.db import Database
from app.models import CachedImageRow
from app.virt.libvirt_driver import connect
from app.worker.main import build_worker
from tests.conftest import ADMIN_TOKEN, IMAGE_DIR, add_node, bearer, conditions, wait_for, worker_settings
from tests.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
POOLS = "/v1/namespaces/default/pools"
INSTANCES = "/v1/namespaces/default/instances"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    """A catalog without ubuntu:22.04, as on a fresh install: the seed manifest's image comes from the test
    registry (where containerdisks/ubuntu:22.04 is the tiny test guest as a self-booting disk)."""
    guest = IMAGE_DIR / "corral" / "test-guest" / "latest"
    assert (guest / "containerdisk.qcow2").is_file(), (
        f"the test guest is missing at {guest}: run scripts/build-test-guest.sh"
    )
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "default").symlink_to(guest)
    return tmp_path / "catalog"


@pytest.fixture
def api(pg: Database, catalog: Path, registry: Registry, server: Any) -> Iterator[httpx.Client]:
    settings = worker_settings(registry, image_dir=catalog, data_dir=catalog.parent, resync_seconds=30)
    process = build_worker(pg, settings)
    process.start()
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=60) as client:
        add_node(client, "local", "qemu:///system")
        try:
            yield client
        finally:
            for path in (POOLS, INSTANCES):  # guests outlive the worker: clean up before it stops
                for item in client.get(path).json()["items"]:
                    client.delete(f"{path}/{item['metadata']['name']}")
            wait_for(lambda: not client.get(INSTANCES).json()["items"], timeout=90, what="cleanup")
            process.stop()


@pytest.fixture
def db(pg: Database) -> Database:
    return pg


def pool_status(api: httpx.Client) -> dict[str, Any]:
    return api.get(f"{POOLS}/fast-start-pool").json()["status"]


def agent_answers(domain: str) -> float:
    """Seconds until qemu-ga in the claimed guest answers guest-ping."""
    hv = connect("qemu:///system")
    started = time.monotonic()
    try:
        wait_for(lambda: _ping(hv, domain), timeout=30, interval=0.01, what=f"guest-ping on {domain}")
        return time.monotonic() - started
    finally:
        hv.close()


def _ping(hv: Any, domain: str) -> bool:
    try:
        return hv.agent_command(domain, {"execute": "guest-ping"}, 1) == {}
    except Exception:
        return False


def test_seed_pool_manifest_on_real_guests(api: httpx.Client, pg: Database, registry: Registry) -> None:
    seed = (ROOT / "examples" / "pool-fast-start.yaml").read_bytes()
    created = api.post(POOLS, content=seed, headers={"Content-Type": "application/yaml"})
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["size"] == 10 and created.json()["spec"]["minAvailable"] == 5
    # Two cores boot TCG guests slowly: a smaller pool, same manifest otherwise.
    patched = api.patch(
        f"{POOLS}/fast-start-pool", json={"spec": {"size": 3, "minAvailable": 2}}, headers=MERGE
    )
    assert patched.status_code == 200, patched.text

    seen_below = False

    def full() -> bool:
        nonlocal seen_below
        status = pool_status(api)
        seen_below |= conditions({"status": status}).get("BelowMinAvailable") == "True"
        return status.get("availableReplicas") == 3 and status.get("replicas") == 3

    wait_for(full, timeout=120, interval=0.2, what="3 warm members")
    status = pool_status(api)
    assert seen_below and conditions({"status": status})["BelowMinAvailable"] == "False"
    assert (status["warming"], status["claimed"], status["failed"]) == (0, 0, 0)
    with pg.read() as session:  # the pool pulled its image once, from the registry, for all members
        pulled = [(r.node, r.name, r.state, r.reference) for r in session.scalars(select(CachedImageRow))]
    assert len(pulled) == 1 and pulled[0][:3] == ("local", "ubuntu:22.04", "Ready")
    assert str(pulled[0][3]).startswith(f"{registry.host}/containerdisks/ubuntu:22.04@sha256:")

    for i in range(2):
        started = time.monotonic()
        claimed = api.post(
            f"{POOLS}/fast-start-pool/claim", json={"name": f"app-{i}", "labels": {"team": "a"}}
        )
        claim_seconds = time.monotonic() - started
        assert claimed.status_code == 201, claimed.text
        obj = claimed.json()
        assert obj["status"]["phase"] == "Running" and conditions(obj)["AgentConnected"] == "True"
        assert agent_answers(obj["status"]["domainName"]) < 1.0  # usable at once: no boot
        assert claim_seconds < 1.0
    wait_for(lambda: pool_status(api).get("claimed") == 2, timeout=10, what="claimed counted")
    try:
        wait_for(
            lambda: pool_status(api).get("availableReplicas") == 3,
            timeout=120,
            interval=0.2,
            what="replacements booted",
        )
    except AssertionError as exc:  # say where each member stands
        members = api.get(INSTANCES).json()["items"]
        seen = [(m["metadata"]["name"], m["status"].get("phase"), m["status"].get("reason")) for m in members]
        raise AssertionError(f"{exc}: pool {pool_status(api)}, instances {seen}") from None

    # Warm members parked with paused vCPUs: a claim resumes one and its agent answers at once.
    patched = api.patch(f"{POOLS}/fast-start-pool", json={"spec": {"warmState": "Paused"}}, headers=MERGE)
    generation = patched.json()["metadata"]["generation"]

    def rolled_out() -> bool:
        status = pool_status(api)  # the counts before the pool saw the change would already say 3
        return status.get("observedGeneration") == generation and status.get("updatedReplicas") == 3

    wait_for(rolled_out, timeout=60, interval=0.2, what="members paused")
    assert pool_status(api)["availableReplicas"] == 3
    members = api.get(INSTANCES, params={"labelSelector": "corral.dev/pool=fast-start-pool"}).json()["items"]
    assert {m["status"]["phase"] for m in members} == {"Paused"}
    claimed = api.post(f"{POOLS}/fast-start-pool/claim", json={"name": "from-paused"})
    assert claimed.status_code == 201
    assert agent_answers(claimed.json()["status"]["domainName"]) < 1.0
    wait_for(
        lambda: api.get(f"{INSTANCES}/from-paused").json()["status"]["phase"] == "Running",
        timeout=10,
        what="the claimed member resumed",
    )

    api.delete(f"{POOLS}/fast-start-pool")
    wait_for(lambda: api.get(f"{POOLS}/fast-start-pool").status_code == 404, timeout=60, what="pool deleted")
    left = sorted(i["metadata"]["name"] for i in api.get(INSTANCES).json()["items"])
    assert left == ["app-0", "app-1", "from-paused"]  # claimed instances stay
