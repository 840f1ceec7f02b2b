"""Benchmark: live migration through Corral against `virsh migrate --live --p2p` between the same two nodes.

    .venv/bin/python -m bench.migration [--runs 11]      (as root: it starts scripts/migration-nodes.sh)

Same run, same idle guest: Corral migrates the seed instance (POST .../migrate until the watch shows the
migration Succeeded); raw is the wall time of `virsh migrate --live --p2p --persistent --undefinesource
--unsafe` of a twin domain (the instance's own XML under another name and uuid, on its own overlay), run
alternately with Corral's, back and forth between the nodes. The pause is measured three ways for both: from
libvirt's suspended (migrated) event on the source to its resumed event on the target as they reach this
benchmark; libvirt's own downtime figure of the completed job; and, for Corral, its reported downtimeMs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from bench.common import (
    WatchRecorder,
    corral_serve,
    open_libvirt,
    overlay_on,
    phase,
    ping_until_answered,
    save,
    summary,
)

ROOT = Path(__file__).resolve().parents[1]
RIG = ROOT / "scripts" / "migration-nodes.sh"
INSTANCES = "/v1/namespaces/default/instances"
MIGRATIONS = "/v1/namespaces/default/migrations"
NODES = {"local": 1, "node-2": 2}


def uri(n: int) -> str:
    return f"qemu+unix:///system?socket=/tmp/corral-nodes/node{n}/run/libvirt-sock"


def p2p(n: int) -> str:
    return f"qemu+tcp://10.99.0.{n}/system"


def twin_of(xml: str, name: str, overlay: Path) -> str:
    """The instance's domain XML under another name and uuid, on its own copy-on-write overlay."""
    root = ET.fromstring(xml)
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    for source in root.iterfind("devices/disk/source"):
        backing = source.get("file")
        if backing:
            overlay_on(_backing_of(backing), overlay)
            source.set("file", str(overlay))
    for serial in root.iterfind("devices/serial/log"):
        serial.set("file", f"/var/log/libvirt/qemu/{name}-console.log")
    return ET.tostring(root, encoding="unicode")


def _backing_of(path: str) -> str:
    info = subprocess.run(["qemu-img", "info", "-U", path], capture_output=True, text=True, check=True).stdout
    found = re.search(r"^backing file: (\S+)", info, re.M)
    return found.group(1) if found else path


class PauseWatch:
    """Each switch-over's pause as libvirt's lifecycle events reach this process (how Corral measures it)."""

    def __init__(self, conns: dict[int, Any]) -> None:
        self._lock = threading.Condition()
        self._seen: list[tuple[float, str, int, int]] = []
        for conn in conns.values():
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)

    def _on_event(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        with self._lock:
            self._seen.append((time.monotonic(), dom.UUIDString(), event, detail))
            self._lock.notify_all()

    def pause_ms(self, uuid_: str, since: float) -> float:
        def stamp(event: int, detail: int) -> float | None:
            found = (
                t for t, u, e, d in self._seen if t >= since and u == uuid_ and (e, d) == (event, detail)
            )
            return next(found, None)

        paused = (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)
        resumed = (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)
        with self._lock:
            self._lock.wait_for(lambda: stamp(*paused) is not None and stamp(*resumed) is not None, timeout=5)
            start, end = stamp(*paused), stamp(*resumed)
        return (end - start) * 1000 if start is not None and end is not None else float("nan")


def virsh_migrate(name: str, source: int, target: int) -> tuple[float, float]:
    started = time.monotonic()
    # --unsafe: the nodes share /var/lib/corral on a local filesystem libvirt cannot recognise as shared
    # (Corral passes the same flag once it has seen the volumes on the target).
    command = [
        "virsh",
        "-c",
        uri(source),
        "migrate",
        "--live",
        "--p2p",
        "--persistent",
        "--undefinesource",
        "--unsafe",
        name,
        p2p(target),
    ]
    subprocess.run(command, check=True, capture_output=True)
    total = time.monotonic() - started
    info = subprocess.run(
        ["virsh", "-c", uri(target), "domjobinfo", "--completed", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    downtime = re.search(r"Total downtime:\s+(\d+)\s*ms", info)
    return total, float(downtime.group(1)) if downtime else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--bandwidth",
        type=int,
        default=0,
        help="Corral's cluster bandwidth cap, MiB/s (CORRAL_MIGRATION_BANDWIDTH_MIB); virsh runs uncapped",
    )
    args = parser.parse_args()
    subprocess.run([str(RIG), "start"], check=True, capture_output=True)
    runs: dict[str, list[float]] = {
        key: []
        for key in (
            "corral_total_s",
            "corral_pause_ms",
            "corral_downtime_ms",
            "corral_libvirt_downtime_ms",
            "virsh_total_s",
            "virsh_pause_ms",
            "virsh_libvirt_downtime_ms",
        )
    }
    twin = f"bench-twin-{uuid.uuid4().hex[:6]}"
    overlay = Path("/var/lib/corral/instances") / f"{twin}.qcow2"
    try:
        with corral_serve(
            CORRAL_LIBVIRT_URI=uri(1),
            CORRAL_MIGRATION_BANDWIDTH_MIB=str(args.bandwidth),
        ) as client:
            merge = {"Content-Type": "application/merge-patch+json"}
            client.patch("/v1/nodes/local", json={"spec": {"migrationUri": p2p(1)}}, headers=merge)
            client.post(
                "/v1/nodes",
                json={"metadata": {"name": "node-2"}, "spec": {"uri": uri(2), "migrationUri": p2p(2)}},
            )
            seed = (ROOT / "examples" / "vmi-guest-agent.yaml").read_bytes()
            client.post(INSTANCES, content=seed, headers={"Content-Type": "application/yaml"})
            watch = WatchRecorder(client, MIGRATIONS)
            deadline = time.monotonic() + 120
            while client.get(f"{INSTANCES}/test-vmi").json()["status"].get("phase") != "Running":
                if time.monotonic() > deadline:
                    raise TimeoutError("test-vmi did not start")
                time.sleep(0.1)
            instance = client.get(f"{INSTANCES}/test-vmi").json()
            node = NODES[instance["status"]["nodeName"]]
            conns = {n: open_libvirt(uri(n)) for n in (1, 2)}
            pauses = PauseWatch(conns)
            xml = conns[node].lookupByName(instance["status"]["domainName"]).XMLDesc(0)
            twin_dom = conns[1].defineXML(twin_of(xml, twin, overlay))
            twin_dom.create()
            ping_until_answered(twin_dom)
            twin_node = 1
            time.sleep(3)  # both guests settle into idle
            for _ in range(args.runs):
                started = time.monotonic()
                total, downtime = virsh_migrate(twin, twin_node, 3 - twin_node)
                twin_node = 3 - twin_node
                runs["virsh_total_s"].append(total)
                runs["virsh_pause_ms"].append(pauses.pause_ms(twin_dom.UUIDString(), started))
                runs["virsh_libvirt_downtime_ms"].append(downtime)

                started = time.monotonic()
                created = client.post(f"{INSTANCES}/test-vmi/migrate").json()
                name = created["metadata"]["name"]
                done_at = watch.wait(name, phase("Succeeded"), after=started)
                runs["corral_total_s"].append(done_at - started)
                runs["corral_pause_ms"].append(pauses.pause_ms(instance["metadata"]["uid"], started))
                state = client.get(f"{MIGRATIONS}/{name}").json()["status"]["migrationState"]
                runs["corral_downtime_ms"].append(float(state["downtimeMs"]))
                runs["corral_libvirt_downtime_ms"].append(float(state["libvirtDowntimeMs"]))
                time.sleep(1)
            watch.close()
            conns[twin_node].lookupByName(twin).destroy()
            conns[twin_node].lookupByName(twin).undefine()
    finally:
        overlay.unlink(missing_ok=True)
        subprocess.run([str(RIG), "stop"], check=False, capture_output=True)
    result: dict[str, Any] = {
        "corral_bandwidth_mib": args.bandwidth,
        **{key: summary(values) for key, values in runs.items()},
        "total_ratio": summary(runs["corral_total_s"])["median"] / summary(runs["virsh_total_s"])["median"],
        "runs": runs,
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    print("saved", save("migration", result))


if __name__ == "__main__":
    main()
