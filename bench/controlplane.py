"""The control plane's own cost, on libvirt's test driver (no guests), in one run:

1. Requests: Corral's API (`corral api`, one process) against the minimal FastAPI + SQLAlchemy app of
   bench/minimal_app.py (one process) on the same database, interleaved round by round, 16 clients:
   req/s, p50 and p99 of create, get and list-100-of-1000, and Corral's ratio to the minimal app; on Postgres
   and on SQLite. Then get again from 64 clients at once, past the 20 connections each process keeps.
2. Scale: Corral as deployed (SQLite: `corral serve`; Postgres: `corral api` + `corral worker`) with a
   large test-driver node: N instances POSTed by 16 clients (POST rate per hundred), the time until all are
   Running (followed by one watch, as a client waiting for them would) and the CPU time it took (each
   Corral process's and, on Postgres, the database's), the node's Ready condition throughout, idle CPU (the
   processes together) and RSS (each) with all Running, and the time to delete them all: the median of
   --rounds runs, each on a fresh database (the rounds are kept in the saved result). At 5,000 too: the
   POST rate of a hundred requests is half a second's worth, and one run's last hundred against its first
   (the shape's figure) swung from 0.70 to 1.10 between two runs of one build.
3. Claims: 32 racing claims on a warm pool of 10 (latency p50/p99; the first race after start apart).
4. Watches: PATCH latency and delivery to 50 open watches.
5. Scale-out (Postgres): creates through 1 API + 1 worker process against 2 + 2 (medians of --rounds).

    .venv/bin/python -m bench.controlplane [--rounds 3] [--scale 1000 5000] [--backends postgres,sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
from sqlalchemy.engine import make_url

from bench.common import CORRAL, TOKEN, save, summary
from bench.lean_http import Connection, opened, race
from bench.minimal_app import TOKEN as MINIMAL_TOKEN

CLIENTS = 16
# More clients at once than a process keeps database connections (20): a burst.
BURST_CLIENTS = 64
BURST_GET = f"get_by_{BURST_CLIENTS}"
PG_ADMIN_URL = os.environ.get(
    "CORRAL_TEST_DATABASE_URL", "postgresql+psycopg://corral:corral@127.0.0.1/corral"
)
# A test-driver host big enough for thousands of small instances (the default one has 3 GiB).
NODE_XML = """<node>
  <cpu><nodes>1</nodes><sockets>1</sockets><cores>1024</cores><threads>1</threads><active>1024</active>
  <mhz>2000</mhz><model>x86_64</model></cpu>
  <memory>2147483648</memory>
</node>
"""
SPEC = {"domain": {"resources": {"requests": {"cpu": "1", "memory": "16Mi"}}}}

Request = tuple[str, str, dict[str, Any] | None]
Arrival = tuple[float, bytes]  # a watch line and when its bytes arrived


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fresh_database(backend: str, name: str, workdir: Path) -> str:
    if backend == "sqlite":
        for leftover in workdir.glob(f"{name}.db*"):  # an earlier run's file, its WAL and shared memory
            leftover.unlink()
        return f"sqlite:///{workdir / name}.db"
    admin_dsn = make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@contextmanager
def process(
    argv: list[str], env: dict[str, str], log: Path, ready: str | None
) -> Iterator[subprocess.Popen[bytes]]:
    """A server process, once `ready` (a URL) answers (None: once it has run for a second); stopped
    afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + (60 if ready else 1)
        while True:
            try:
                if ready is not None and httpx.get(ready, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:3]} did not start:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                if ready is None:
                    break
                raise RuntimeError(f"{argv[:3]} did not answer:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def minimal_app(database: str, port: int, log: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    """The minimal app of bench/minimal_app.py serving on `port`, once it answers; it (re)creates its tables
    as it starts."""
    argv = [sys.executable, "-m", "bench.minimal_app", database, str(port)]
    root = str(Path(__file__).resolve().parents[1])
    return process(argv, os.environ | {"PYTHONPATH": root}, log, f"http://127.0.0.1:{port}/docs")


def corral_env(database: str, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return env | {
        "CORRAL_DATABASE_URL": database,
        "CORRAL_DATA_DIR": str(data),
        "CORRAL_ADMIN_TOKEN": TOKEN,
        "CORRAL_LOG_LEVEL": "WARNING",
        **extra,
    }


def drive(
    url: str, token: str, requests: list[Request], clients: int = CLIENTS, accept: tuple[int, ...] = ()
) -> tuple[float, list[float]]:
    """Send the requests from `clients` concurrent keep-alive connections, opened before the clock starts;
    (requests per second, latencies). An error answer other than those in `accept` ends the run. The lean
    client: httpx took as much CPU as the API process it drove (top, during the 1,000 deletes), CPU the
    two cores then lacked for what is measured."""

    async def run() -> tuple[float, list[float]]:
        latencies: list[float] = []
        waiting = deque(requests)

        async def send(connection: Connection) -> None:
            while waiting:
                method, path, body = waiting.popleft()
                payload = None if body is None else orjson.dumps(body)
                started = time.perf_counter()
                status, answer = await connection.request(method, path, payload)
                latencies.append(time.perf_counter() - started)
                if status >= 400 and status not in accept:
                    raise RuntimeError(f"{method} {path}: {status} {answer[:300]!r}")

        async with opened(url, token, min(clients, len(requests))) as connections:
            started = time.perf_counter()
            await asyncio.gather(*(send(connection) for connection in connections))
            return len(requests) / (time.perf_counter() - started), latencies

    return asyncio.run(run())


def figures(rate: float, latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "rate": rate,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
    }


def requests_round(
    base: str, plural: str, prefix: str, creates: int, gets: int, lists: int
) -> dict[str, tuple[int, list[Request]]]:
    """Each operation's requests and how many clients send them."""
    names = [f"{prefix}-{i}" for i in range(creates)]
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "spec": SPEC}
    gotten: list[Request] = [("GET", f"{base}/{plural}/{names[i % creates]}", None) for i in range(gets)]
    return {
        "create": (CLIENTS, [("POST", f"{base}/{plural}", {**body, "metadata": {"name": n}}) for n in names]),
        "get": (CLIENTS, gotten),
        "list": (CLIENTS, [("GET", f"{base}/{plural}?limit=100", None) for _ in range(lists)]),
        BURST_GET: (BURST_CLIENTS, gotten),
    }


def request_costs(backend: str, rounds: int, workdir: Path) -> dict[str, Any]:
    """Corral's API and the minimal app, interleaved: each round creates 500 objects on each, then gets and
    lists them (1,000 objects are listed from round 2 on)."""
    minimal_port, corral_port = free_port(), free_port()
    minimal_db = fresh_database(backend, "corral_bench_minimal", workdir)
    corral_db = fresh_database(backend, "corral_bench_api", workdir)
    env = corral_env(corral_db, workdir / "api", CORRAL_LIBVIRT_URI="test:///default")
    corral_argv = [CORRAL, "api", "--port", str(corral_port)]
    samples: dict[str, dict[str, list[dict[str, float]]]] = {"minimal": {}, "corral": {}}
    with (
        minimal_app(minimal_db, minimal_port, workdir / "minimal.log"),
        process(corral_argv, env, workdir / "api.log", f"http://127.0.0.1:{corral_port}/healthz"),
    ):
        sides: dict[str, tuple[str, str, str]] = {
            "minimal": (f"http://127.0.0.1:{minimal_port}", MINIMAL_TOKEN, "objects"),
            "corral": (f"http://127.0.0.1:{corral_port}", TOKEN, "instances"),
        }
        for round_ in range(rounds):
            for side, (url, token, plural) in sides.items():
                work = requests_round("/v1/namespaces/bench", plural, f"r{round_}", 500, 2000, 200)
                for operation, (clients, batch) in work.items():
                    rate, latencies = drive(url, token, batch, clients)
                    samples[side].setdefault(operation, []).append(figures(rate, latencies))
    result: dict[str, Any] = {}
    for operation in samples["corral"]:
        row: dict[str, Any] = {}
        for side in ("minimal", "corral"):
            runs = samples[side][operation]
            row[side] = {k: statistics.median(r[k] for r in runs) for k in ("rate", "p50_ms", "p99_ms")}
        row["ratio"] = row["corral"]["rate"] / row["minimal"]["rate"]
        result[operation] = row
    return result


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes used so far, together."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time this machine's Postgres processes used so far (the server and its backends, which come and
    go: a backend gone since the last reading takes its share with it, so read across short spans only)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        with suppress(OSError):  # gone meanwhile
            if entry.name.isdigit() and (entry / "comm").read_text().startswith("postgres"):
                total += cpu_seconds([int(entry.name)])
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU time of every core so far, from /proc/stat: busy is all but idle and I/O wait."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), sum(fields) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def big_node_corral(backend: str, workdir: Path, name: str) -> Iterator[tuple[list[int], str, httpx.Client]]:
    """Corral on its own fresh database, laid out as it is deployed: on SQLite `corral serve` (one process
    by design), on Postgres `corral api` + `corral worker` (docker-compose.yml). Its local node is a
    test-driver host with room for thousands of instances. Yields (process ids, URL, client) once the node
    is Ready."""
    node = workdir / "node.xml"
    node.write_text(NODE_XML)
    port = free_port()
    database = fresh_database(backend, f"corral_bench_{name}", workdir)
    env = corral_env(database, workdir / f"{name}-{backend}", CORRAL_LIBVIRT_URI=f"test://{node}")
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    log = workdir / f"{name}-{backend}.log"
    with ExitStack() as running:
        if backend == "sqlite":
            argv = [CORRAL, "serve", "--port", str(port)]
            processes = [running.enter_context(process(argv, env, log, f"{url}/healthz"))]
        else:
            api = running.enter_context(
                process([CORRAL, "api", "--port", str(port)], env, log, f"{url}/healthz")
            )
            worker_log = workdir / f"{name}-{backend}-worker.log"
            processes = [api, running.enter_context(process([CORRAL, "worker"], env, worker_log, None))]
        client = running.enter_context(httpx.Client(base_url=url, headers=headers, timeout=120))
        wait_until(lambda: node_ready(client), 60, "node local Ready")
        yield [p.pid for p in processes], url, client


WORST_OF_ROUNDS = ("failed", "node_not_ready_seconds")  # a goal of zero: any round that misses it counts


def scale_rounds(backend: str, count: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """`scale` run `rounds` times, each on a fresh database."""
    return merged_rounds([scale(backend, count, workdir) for _ in range(rounds)])


def merged_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The runs' figures as one: each the median of the rounds (the worst round for failures and a node not
    Ready, the largest RSS of each process), with the rounds kept."""
    merged: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [run[key] for run in runs]
        if all(value == first for value in values):
            merged[key] = first
        elif key in WORST_OF_ROUNDS:
            merged[key] = max(values)
        elif isinstance(first, list):
            merged[key] = [max(column) for column in zip(*values, strict=True)]
        else:
            merged[key] = statistics.median(values)
    return {**merged, "rounds": runs}


def scale(backend: str, count: int, workdir: Path) -> dict[str, Any]:
    """Corral on a big test-driver node: POST `count` instances, all Running, idle, delete them."""
    base = "/v1/namespaces/bench/instances"
    with big_node_corral(backend, workdir, "scale") as (pids, url, client), Phases(url, base) as phases:
        not_ready: list[float] = []
        stop_watching = threading.Event()

        def watch_node() -> None:
            while not stop_watching.wait(1):
                if not node_ready(client):
                    not_ready.append(time.monotonic())

        threading.Thread(target=watch_node, daemon=True).start()
        names = [f"s-{i}" for i in range(count)]
        body: dict[str, Any] = {
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "spec": SPEC,
        }
        speed = speed_probe_ms()
        postgres_at_start = postgres_cpu_seconds() if backend == "postgres" else 0.0
        started, by_process_at_start = time.monotonic(), [cpu_seconds([pid]) for pid in pids]
        hundreds: list[float] = []
        for first in range(0, count, 100):
            batch: list[Request] = [
                ("POST", base, {**body, "metadata": {"name": n}}) for n in names[first : first + 100]
            ]
            rate, _ = drive(url, TOKEN, batch)
            hundreds.append(rate)
        posted = time.monotonic() - started
        phases.wait_running(count, 900)
        running_after = time.monotonic() - started
        # Where it went: each Corral process, and Postgres (on SQLite the one process does it all).
        by_process = [cpu_seconds([pid]) - at for pid, at in zip(pids, by_process_at_start, strict=True)]
        cpu_to_running = sum(by_process)
        roles = ("api", "worker") if backend == "postgres" else ("serve",)
        shares = dict(zip(roles, by_process, strict=True))
        if backend == "postgres":
            shares["postgres"] = postgres_cpu_seconds() - postgres_at_start
        time.sleep(5)  # settle, then measure idle
        before = cpu_seconds(pids)
        time.sleep(30)
        idle_cpu = (cpu_seconds(pids) - before) / 30
        rss = [rss_mib(pid) for pid in pids]
        stop_watching.set()
        deleted_from = time.monotonic()
        drive(url, TOKEN, [("DELETE", f"{base}/{n}", None) for n in names])
        phases.wait_gone(900)
        deleted_after = time.monotonic() - deleted_from
    return {
        "instances": count,
        "speed_probe_ms": speed,
        "post_rate_first_hundred": hundreds[0],
        "post_rate_last_hundred": hundreds[-1],
        "post_rate_ratio_last_to_first": hundreds[-1] / hundreds[0],
        "posted_s": posted,
        "all_running_s": running_after,
        # Corral's CPU time from the first POST to all Running, per instance: steadier than wall time on a
        # shared machine
        "cpu_ms_per_instance_to_running": 1000 * cpu_to_running / count,
        **{f"cpu_ms_per_instance_{name}": 1000 * seconds / count for name, seconds in shares.items()},
        "failed": len(phases.ever_failed),
        "node_not_ready_seconds": len(not_ready),
        "idle_cpu_percent": 100 * idle_cpu,
        "rss_mib": rss,
        "delete_all_s": deleted_after,
    }


def speed_probe_ms() -> float:
    """This machine's speed at the moment, to read a run's times against another's: the median wall time of
    a fixed pure-Python loop (its speed drifts by a third within an hour on a shared host)."""
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        sum(i * i for i in range(1_000_000))
        timings.append(1000 * (time.perf_counter() - start))
    return statistics.median(timings)


def claims(backend: str, workdir: Path, racers: int = 32, size: int = 10, rounds: int = 5) -> dict[str, Any]:
    """Claim latency of `rounds` races, each on a full warm pool, after one race that is reported apart:
    the first claims after the API starts build and prepare their statements."""
    latencies: list[list[float]] = []
    with big_node_corral(backend, workdir, "claims") as (_, url, client):
        pool = {"metadata": {"name": "warm"}, "spec": {"size": size, "template": {"spec": SPEC}}}
        client.post("/v1/namespaces/bench/pools", json=pool).raise_for_status()

        def warm() -> bool:  # the members themselves: the pool's status may not show the last claims yet
            members = list_all(client, "/v1/namespaces/bench/instances", labelSelector="corral.dev/pool=warm")
            return len([m for m in members if m["status"].get("phase") == "Running"]) == size

        for _ in range(1 + rounds):
            wait_until(warm, 120, "pool warm")
            answers = asyncio.run(
                race(url, TOKEN, "POST", "/v1/namespaces/bench/pools/warm/claim", b"{}", racers)
            )
            unexpected = [status for status, _ in answers if status not in (201, 503)]
            if unexpected or sum(status == 201 for status, _ in answers) != size:
                raise RuntimeError(f"claims answered {sorted(status for status, _ in answers)}")
            latencies.append([seconds for _, seconds in answers])
    first, *steady = latencies
    return {
        "racers": racers,
        "pool": size,
        **{k: 1000 * v for k, v in summary([s for race in steady for s in race]).items() if k != "n"},
        "first_race_p99": 1000 * summary(first)["p99"],
    }


def watch_fanout(backend: str, workdir: Path, watchers: int = 50, patches: int = 200) -> dict[str, Any]:
    """PATCH latency with no watchers and with `watchers` open watches, and how long each change takes to
    reach every watcher; every event must arrive, once, in order."""
    port = free_port()
    database = fresh_database(backend, "corral_bench_watch", workdir)
    env = corral_env(database, workdir / f"watch-{backend}", CORRAL_LIBVIRT_URI="test:///default")
    url = f"http://127.0.0.1:{port}"
    base = "/v1/namespaces/bench/instances"
    merge = {"Content-Type": "application/merge-patch+json"}
    with process(
        [CORRAL, "api", "--port", str(port)], env, workdir / f"watch-{backend}.log", f"{url}/healthz"
    ):
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
        body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "spec": SPEC}
        client.post(base, json={**body, "metadata": {"name": "watched"}}).raise_for_status()

        def patch_all(count: int, offset: int) -> tuple[list[float], list[float]]:
            sent, took = [], []
            for i in range(count):
                started = time.monotonic()
                client.patch(
                    f"{base}/watched",
                    content=f'{{"metadata":{{"labels":{{"n":"{offset + i}"}}}}}}',
                    headers=merge,
                ).raise_for_status()
                took.append(time.monotonic() - started)
                sent.append(started)
                time.sleep(0.01)
            return sent, took

        _, alone = patch_all(patches, 0)
        version = client.get(base).json()["metadata"]["resourceVersion"]
        arrivals: list[list[Arrival]] = [[] for _ in range(watchers)]
        watching_all = threading.Event()
        # The last event as the server writes it: compact JSON, or as Postgres prints jsonb (a space after
        # the colon; lines carry the change log's stored JSON as it is).
        last = [f'"n":{gap}"{2 * patches - 1}"'.encode() for gap in ("", " ")]

        async def watch_all() -> None:
            """Every stream on one event loop; an event is timed when its bytes arrive, parsed later."""

            async def follow(stream: AsyncIterator[Arrival], seen: list[Arrival]) -> None:
                async for arrived, line in stream:
                    seen.append((arrived, line))
                    if any(marker in line for marker in last):
                        return

            async with opened(url, TOKEN, watchers) as connections:
                streams = [c.lines(f"{base}?watch=true&resourceVersion={version}") for c in connections]
                pairs = zip(streams, arrivals, strict=True)
                followers = [asyncio.create_task(follow(stream, seen)) for stream, seen in pairs]
                await asyncio.sleep(1)  # every watch request is in
                watching_all.set()
                await asyncio.wait_for(asyncio.gather(*followers), 120)

        watching = threading.Thread(target=asyncio.run, args=(watch_all(),), daemon=True)
        watching.start()
        watching_all.wait(60)
        sent, watched = patch_all(patches, patches)
        watching.join(120)
        client.close()
    labels = [[(arrived, label(line)) for arrived, line in a] for a in arrivals]
    expected = [str(patches + i) for i in range(patches)]
    intact = all([n for _, n in a] == expected for a in labels)
    delivery = [arrived - sent[int(n) - patches] for a in labels for arrived, n in a]
    alone_p50, watched_p50 = statistics.median(alone), statistics.median(watched)
    return {
        "watchers": watchers,
        "patch_p50_ms_alone": 1000 * alone_p50,
        "patch_p50_ms_watched": 1000 * watched_p50,
        "patch_ratio": watched_p50 / alone_p50,
        "delivery_p50_ms": 1000 * statistics.median(delivery),
        "delivery_p99_ms": 1000 * sorted(delivery)[round(0.99 * (len(delivery) - 1))],
        "every_event_once_in_order": intact,
    }


def label(line: bytes) -> str:
    """The `n` label of a watch event's object."""
    return str(json.loads(line)["object"]["metadata"]["labels"].get("n", ""))


def scale_out(workdir: Path, rounds: int, count: int = 1000) -> dict[str, Any]:
    """`count` creates through 1 `corral api` + 1 `corral worker` process, then through 2 + 2, on one
    Postgres, interleaved for `rounds` rounds (medians, the rounds kept). The workers share one node:
    libvirt's test driver inside libvirtd (test+unix:///default: one state for every connection, unlike a
    test:// file), tiny instances so that all fit.

    Each run also reports how busy the whole machine was while the POSTs ran, and the cores its API and
    worker processes took: what a second process of each could still use.

    Then once more each with the workers paused (SIGSTOP) while the POSTs run and resumed for the rest: what
    the API processes alone make of the machine, without the workers' share of its CPU. And the minimal app
    with 1 and 2 processes: what a second process of the bare stack gains on the same cores.

    A second process gains only what the first leaves of the cores. With a the CPU a create costs the API
    and o what it costs everything else while the POSTs run (the workers, Postgres, the clients), one API
    process (held to about one core by its interpreter lock) makes at most 1/a creates a second and the two
    cores at most 2/(a + o): 2 + 2 gains over 1 + 1 only while 1 + 1 is held by its API process, by at most
    2a/(a + o), which reaches 1.3 only while o <= 0.54a. Each run reports both per create
    (api_ms_per_create; worker_ms_per_create and others_ms_per_create make o)."""
    runs: dict[str, list[dict[str, float]]] = {"1+1": [], "2+2": []}
    for _ in range(rounds):
        for n in (1, 2):
            runs[f"{n}+{n}"].append(scale_out_run(workdir, n, count))
    result: dict[str, Any] = {layout: merged_rounds(done) for layout, done in runs.items()}
    result["create_ratio_2_to_1"] = result["2+2"]["create_rate"] / result["1+1"]["create_rate"]
    paused = {f"{n}+{n}": scale_out_run(workdir, n, count, pause_workers=True) for n in (1, 2)}
    result["workers_paused_while_posting"] = paused
    result["workers_paused_create_ratio_2_to_1"] = paused["2+2"]["create_rate"] / paused["1+1"]["create_rate"]
    minimal = {f"{n}": minimal_scale_out_run(workdir, n, count) for n in (1, 2)}
    result["minimal_app"] = minimal
    result["minimal_app_create_ratio_2_to_1"] = minimal["2"]["create_rate"] / minimal["1"]["create_rate"]
    return result


def scale_out_run(
    workdir: Path, processes: int, count: int, *, pause_workers: bool = False
) -> dict[str, float]:
    spec = {"domain": {"resources": {"requests": {"cpu": "1", "memory": "1Mi"}}}}
    body = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "spec": spec}
    database = fresh_database("postgres", f"corral_bench_scaleout_{processes}", workdir)
    env = corral_env(
        database,
        workdir / f"scaleout-{processes}",
        CORRAL_LIBVIRT_URI="test+unix:///default",
        CORRAL_CPU_ALLOCATION_RATIO="100",
    )
    urls = [f"http://127.0.0.1:{free_port()}" for _ in range(processes)]
    with ExitStack() as running:
        apis = []
        for index, url in enumerate(urls):
            argv = [CORRAL, "api", "--port", url.rsplit(":", 1)[1]]
            log = workdir / f"scaleout-{processes}-api-{index}.log"
            apis.append(running.enter_context(process(argv, env, log, f"{url}/healthz")))
        workers = []
        for index in range(processes):
            log = workdir / f"scaleout-{processes}-worker-{index}.log"
            workers.append(running.enter_context(process([CORRAL, "worker"], env, log, None)))
        headers = {"Authorization": f"Bearer {TOKEN}"}
        client = running.enter_context(httpx.Client(base_url=urls[0], headers=headers, timeout=120))
        wait_until(lambda: node_ready(client), 60, "node local Ready")
        base = "/v1/namespaces/bench/instances"
        phases = running.enter_context(Phases(urls[0], base))
        requests: list[Request] = [
            ("POST", base, {**body, "metadata": {"name": f"o-{i}"}}) for i in range(count)
        ]
        for worker in workers if pause_workers else []:
            worker.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            posted = spread_posts(
                urls, TOKEN, requests, {"api": [p.pid for p in apis], "worker": [p.pid for p in workers]}
            )
        finally:
            for worker in workers if pause_workers else []:
                worker.send_signal(signal.SIGCONT)
        phases.wait_running(count, 600)
        running_after = time.monotonic() - started
        # libvirtd keeps the test driver's domains: leave it as found
        drive(urls[0], TOKEN, [("DELETE", f"{base}/o-{i}", None) for i in range(count)])
        phases.wait_gone(600)
        return {**posted, "all_running_s": running_after}


def minimal_scale_out_run(workdir: Path, processes: int, count: int) -> dict[str, float]:
    """`scale_out_run` for the minimal app: `count` creates through 1 or 2 of its processes on one Postgres,
    the bare stack's own gain from a second process on these cores."""
    database = fresh_database("postgres", f"corral_bench_minimal_scaleout_{processes}", workdir)
    ports = [free_port() for _ in range(processes)]
    with ExitStack() as running:
        apps = [  # one after the other: each (re)creates the tables as it starts
            running.enter_context(
                minimal_app(database, port, workdir / f"minimal-scaleout-{processes}-{port}.log")
            )
            for port in ports
        ]
        requests: list[Request] = [
            ("POST", "/v1/namespaces/bench/objects", {"metadata": {"name": f"o-{i}"}, "spec": SPEC})
            for i in range(count)
        ]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        return spread_posts(urls, MINIMAL_TOKEN, requests, {"api": [p.pid for p in apps]})


def spread_posts(
    urls: list[str], token: str, requests: list[Request], parties: dict[str, list[int]]
) -> dict[str, float]:
    """The requests sent by 16 clients spread evenly over the processes at `urls`: their rate, how busy the
    whole machine was meanwhile, and the CPU each party (a name for a group of processes) took, as cores
    and as milliseconds per request; what remains of the machine's CPU per request is Postgres's, the
    clients' and the kernel's ("others")."""
    shares: list[list[Request]] = [requests[index :: len(urls)] for index in range(len(urls))]
    threads = [
        threading.Thread(target=drive, args=(url, token, share, CLIENTS // len(urls)))
        for url, share in zip(urls, shares, strict=True)
    ]
    machine_before = machine_cpu_seconds()
    parties_before = {name: cpu_seconds(pids) for name, pids in parties.items()}
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    posting = time.monotonic() - started
    machine_after = machine_cpu_seconds()
    rate = len(requests) / posting
    busy, elapsed = machine_after[0] - machine_before[0], machine_after[1] - machine_before[1]
    posted = {"create_rate": rate, "machine_busy_while_posting": busy / elapsed}
    others = busy
    for name, pids in parties.items():
        used = cpu_seconds(pids) - parties_before[name]
        others -= used
        posted[f"{name}_cores_while_posting"] = used / posting
        posted[f"{name}_ms_per_create"] = 1000 * used / len(requests)
    posted["others_ms_per_create"] = 1000 * others / len(requests)
    return posted


class Phases:
    """The phase of every instance under `path`, kept current by one watch (as `kubectl wait` does). Polling
    the full list instead, twice a second, cost the API a page of 1,000 objects per poll: a third of a core
    at 5,000 instances, on the very process being measured."""

    def __init__(self, url: str, path: str) -> None:
        self.phases: dict[str, str] = {}
        self.ever_failed: set[str] = set()
        self._changed = threading.Condition()
        self._client = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx.Timeout(30, read=None)
        )
        self._listening = threading.Event()
        self._closed = False  # then the stream's end is expected
        threading.Thread(target=self._follow, args=(path,), daemon=True).start()
        if not self._listening.wait(30):
            raise TimeoutError(f"no watch on {path}")

    def _follow(self, path: str) -> None:
        try:
            self._read(path)
        except httpx.HTTPError:
            if not self._closed:
                raise

    def _read(self, path: str) -> None:
        with self._client.stream("GET", path, params={"watch": "true"}) as answer:
            answer.raise_for_status()
            self._listening.set()
            for line in answer.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                obj = event["object"]
                name, phase = obj["metadata"]["name"], obj.get("status", {}).get("phase")
                with self._changed:
                    if event["type"] == "DELETED":
                        self.phases.pop(name, None)
                    else:
                        self.phases[name] = phase or "Pending"
                    if phase == "Failed":
                        self.ever_failed.add(name)
                    self._changed.notify_all()

    def counts(self) -> dict[str, int]:
        with self._changed:
            return dict(Counter(self.phases.values()))

    def wait(self, done: Callable[[dict[str, int]], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(counts := dict(Counter(self.phases.values()))):
                if not self._changed.wait(deadline - time.monotonic()) and time.monotonic() >= deadline:
                    raise TimeoutError(f"{what} not reached within {timeout}s: {counts}")

    def wait_running(self, count: int, timeout: float) -> None:
        self.wait(lambda counts: counts.get("Running", 0) == count, timeout, f"{count} Running")

    def wait_gone(self, timeout: float) -> None:
        self.wait(lambda counts: not counts, timeout, "all deleted")

    def __enter__(self) -> Phases:
        return self

    def __exit__(self, *_: object) -> None:
        self._closed = True
        self._client.close()


def node_ready(client: httpx.Client) -> bool:
    try:
        answer = client.get("/v1/nodes/local")
        node = answer.json()
    except (httpx.HTTPError, ValueError):
        return False
    return answer.status_code == 200 and any(
        c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", [])
    )


def list_all(client: httpx.Client, path: str, **query: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000, **query}
    while True:
        answer = client.get(path, params=params)
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path}: {answer.status_code} {answer.text}")
        page = answer.json()
        items += page["items"]
        if not page["metadata"].get("continue"):
            return items
        params["continue"] = page["metadata"]["continue"]


def wait_until(check: Callable[[], bool], timeout: float, what: str, now: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s: {now()}")
        time.sleep(0.5)


def medians(result: dict[str, Any]) -> dict[str, Any]:
    """A result as printed: without the rounds it keeps (they are in the saved file)."""
    return {k: medians(v) if isinstance(v, dict) else v for k, v in result.items() if k != "rounds"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, nargs="*", default=[1000])
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument(
        "--skip", default="", help="comma-separated: requests, scale, claims, watch, scaleout"
    )
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    result: dict[str, Any] = {}
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory(prefix="corral-controlplane-") as tmp:
            workdir = Path(tmp)
            if "requests" not in skip:
                result[f"requests-{backend}"] = costs = request_costs(backend, args.rounds, workdir)
                for operation, row in costs.items():
                    print(
                        f"{backend:8} {operation:9} minimal {row['minimal']['rate']:7.1f}/s "
                        f"p50 {row['minimal']['p50_ms']:6.1f} ms | corral {row['corral']['rate']:7.1f}/s "
                        f"p50 {row['corral']['p50_ms']:6.1f} ms p99 {row['corral']['p99_ms']:7.1f} ms | "
                        f"ratio {row['ratio']:.2f}",
                        flush=True,
                    )
            if "scale" not in skip:
                for count in args.scale:
                    run = scale_rounds(backend, count, args.rounds, workdir)
                    result[f"scale-{backend}-{count}"] = run
                    print(f"{backend:8} scale {count} (median of {args.rounds}): {medians(run)}", flush=True)
            if "claims" not in skip:
                result[f"claims-{backend}"] = run = claims(backend, workdir)
                print(f"{backend:8} claims: {run}", flush=True)
            if "watch" not in skip:
                result[f"watch-{backend}"] = run = watch_fanout(backend, workdir)
                print(f"{backend:8} watch: {run}", flush=True)
            if "scaleout" not in skip and backend == "postgres":  # SQLite is one process by design
                result["scaleout-postgres"] = run = scale_out(workdir, args.rounds)
                print(f"{backend:8} scale-out: {medians(run)}", flush=True)
    print(save("controlplane", result))


if __name__ == "__main__":
    main()
