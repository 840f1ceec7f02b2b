"""kill -9 chaos on the real libvirtd: `corral api` and `corral worker` as separate processes on Postgres,
killed 20 times (most often the worker) while a client creates, stops, starts, pauses, resumes and deletes
instances (busybox test guests). Afterwards everything converges and the invariants hold: no instance lost,
none left that was deleted, no domain without an instance and none twice, no volume left behind, every
phase agreeing with libvirt, and no 5xx other than 503 answered meanwhile."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from app.db import Database
from tests.conftest import ADMIN_TOKEN, bearer, wait_for

NAMESPACE = "chaos"
INSTANCES = f"/v1/namespaces/{NAMESPACE}/instances"
KILLS = 20
CORRAL = str(Path(sys.executable).with_name("corral"))
STATES = {libvirt.VIR_DOMAIN_RUNNING: "Running", libvirt.VIR_DOMAIN_PAUSED: "Paused"}

pytestmark = pytest.mark.qemu


class Processes:
    """`corral api` and `corral worker`, each restarted at once after it is killed."""

    def __init__(self, pg_url: str, data_dir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        self.env = env | {
            "CORRAL_DATABASE_URL": pg_url,
            "CORRAL_DATA_DIR": str(data_dir),
            "CORRAL_ADMIN_TOKEN": ADMIN_TOKEN,
            "CORRAL_LIBVIRT_URI": "qemu:///system",
            "CORRAL_LEASE_SECONDS": "5",  # a killed worker's keys are free again soon
            "CORRAL_HEARTBEAT_SECONDS": "2",
            "CORRAL_LOG_LEVEL": "WARNING",
        }
        self.log = data_dir / "processes.log"
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        for role in ("api", "worker"):
            self.start(role)

    def start(self, role: str) -> None:
        argv = [CORRAL, "api", "--port", str(self.port)] if role == "api" else [CORRAL, "worker"]
        with self.log.open("ab") as log:  # the child keeps its own descriptor
            self.running[role] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=log)

    def kill(self, role: str) -> None:
        self.running[role].send_signal(signal.SIGKILL)
        self.running[role].wait(10)
        self.start(role)

    def stop(self) -> None:
        for process in self.running.values():
            process.kill()
            process.wait(10)


@pytest.fixture
def processes(pg: Database, pg_url: str, tmp_path: Path) -> Iterator[Processes]:
    """The processes start on an emptied database (`pg`): on what an earlier test left, the new worker would
    run it, on the real libvirtd, and nothing would remove it."""
    running = Processes(pg_url, tmp_path)
    try:
        yield running
        # Guests outlive the processes: whatever the test's outcome, leave none behind.
        client = Client(running.port)
        for item in client.call("GET", INSTANCES).json()["items"]:
            client.call("DELETE", f"{INSTANCES}/{item['metadata']['name']}")
        wait_for(lambda: not client.call("GET", INSTANCES).json()["items"], timeout=90, what="cleanup")
    finally:
        running.stop()


class Client:
    """Calls that ride out a dead API: connection errors and 503 are retried; every answer is kept."""

    def __init__(self, port: int) -> None:
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=bearer(ADMIN_TOKEN), timeout=15)
        self.statuses: list[tuple[str, str, int]] = []

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = self.http.request(method, path, **kwargs)
                self.statuses.append((method, path, answer.status_code))
                if answer.status_code != 503:
                    return answer
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: no answer for 60 s")
            time.sleep(0.2)


def spec() -> dict[str, Any]:
    return {
        "terminationGracePeriodSeconds": 5,
        "domain": {"resources": {"requests": {"memory": "128Mi"}}},
        "volumes": [{"name": "scratch", "emptyDisk": {"capacity": "16Mi"}}],
    }


def churn(client: Client, wanted: dict[str, str], uids: set[str], stop: threading.Event) -> None:
    """Random operations, at most four instances at once; `wanted` is what each should end as."""
    rng, serial = random.Random(7), 0
    while not stop.is_set():
        alive = sorted(n for n, state in wanted.items() if state != "deleted")
        choice = rng.choice(["create"] * 3 + ["act"] * 5 + ["delete"] * 2) if alive else "create"
        if choice == "create" and len(alive) < 4:
            name, serial = f"vm-{serial}", serial + 1
            answer = client.call("POST", INSTANCES, json={"metadata": {"name": name}, "spec": spec()})
            if answer.status_code in (201, 409):  # 409: a retry after the first try went through
                wanted[name] = "Running"
                uids.add(client.call("GET", f"{INSTANCES}/{name}").json()["metadata"]["uid"])
        elif choice == "delete" and alive:
            name = rng.choice(alive)
            if client.call("DELETE", f"{INSTANCES}/{name}").status_code in (202, 404):
                wanted[name] = "deleted"
        elif alive:
            name = rng.choice(alive)
            action, goal = rng.choice(
                [("stop", "Stopped"), ("start", "Running"), ("pause", "Paused"), ("unpause", "Running")]
            )
            # A retry after the API died mid-request must get the first answer, not "already stopping".
            once = {"Idempotency-Key": str(uuid.uuid4())}
            if client.call("POST", f"{INSTANCES}/{name}/{action}", headers=once).status_code == 202:
                wanted[name] = goal
        time.sleep(rng.uniform(0.2, 1.0))


def test_kill_9_of_api_and_worker_loses_and_leaks_nothing(processes: Processes) -> None:
    client = Client(processes.port)
    wait_for(lambda: _answers(client), timeout=60, what="the API")

    def node_ready() -> bool:
        answer = client.call("GET", "/v1/nodes/local")
        return answer.status_code == 200 and answer.json().get("status", {}).get("phase") == "Ready"

    wait_for(node_ready, timeout=60, what="node local Ready")
    wanted: dict[str, str] = {}
    uids: set[str] = set()
    stop = threading.Event()
    driver = threading.Thread(target=churn, args=(client, wanted, uids, stop), daemon=True)
    driver.start()
    rng = random.Random(11)
    try:
        for kill in range(KILLS):
            time.sleep(rng.uniform(1.0, 3.0))
            processes.kill("api" if kill % 3 == 2 else "worker")
    finally:
        stop.set()
        driver.join(90)
    assert len(uids) >= 5, f"the churn made only {len(uids)} instances"

    behind: dict[str, tuple[str, str, str]] = {}

    def converged() -> bool:
        behind.clear()
        for name, state in wanted.items():
            answer = client.call("GET", f"{INSTANCES}/{name}")
            status = {} if answer.status_code == 404 else answer.json()["status"]
            seen = "deleted" if answer.status_code == 404 else str(status.get("phase"))
            # Stopped before it ever ran, an instance stays defined and reports Scheduled.
            if seen != state and (state, seen) != ("Stopped", "Scheduled"):
                behind[name] = (state, seen, str(status.get("reason")))
        return not behind

    try:
        wait_for(converged, timeout=180, interval=1, what="every instance as last asked")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: (wanted, seen, reason) {behind}") from None
    conn = libvirt.open("qemu:///system")
    try:
        domains = {d.name(): d for d in conn.listAllDomains() if d.name().startswith(f"{NAMESPACE}.")}
        pool = conn.storagePoolLookupByName("corral-instances")
        pool.refresh(0)
        volumes = [v.name() for v in pool.listAllVolumes(0) if v.name()[:36] in uids]
    finally:
        conn.close()
    items = client.call("GET", INSTANCES).json()["items"]
    live = {item["metadata"]["name"] for item in items}
    assert live == {n for n, state in wanted.items() if state != "deleted"}  # none lost, none left over
    # Domains are named namespace.name.uid[:8] (app.controllers.naming), with or without a status saying so.
    by_domain = {f"{NAMESPACE}.{i['metadata']['name']}.{i['metadata']['uid'][:8]}": i for i in items}
    assert set(domains) <= set(by_domain), f"domains without an instance: {set(domains) - set(by_domain)}"
    for domain_name, item in by_domain.items():
        domain = domains.get(domain_name)
        phase = item["status"]["phase"]
        seen = STATES.get(domain.state()[0], "Stopped") if domain is not None else "Stopped"
        assert seen == phase or (seen, phase) == ("Stopped", "Scheduled"), (
            item["metadata"]["name"],
            phase,
            seen,
        )
    own = {item["metadata"]["uid"] for item in items}
    assert [v for v in volumes if v[:36] not in own] == [], "volumes of deleted instances left behind"
    server_errors = [s for s in client.statuses if s[2] >= 500 and s[2] != 503]
    assert server_errors == []


def _answers(client: Client) -> bool:
    try:
        return client.http.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False
