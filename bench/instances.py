"""Benchmark: API create -> Running and create -> AgentConnected against raw libvirt, and the latency from a
libvirt state change to the watch stream.

    .venv/bin/python bench/instances.py [--runs 5] [--toggles 100]

Each run boots the test guest (TCG) twice, one at a time: once through Corral's API, once by `virsh create`
of the same domain XML Corral generated (with a fresh overlay), timing until the domain runs and until the
guest agent answers guest-ping. The watch latency is the time from libvirt's own lifecycle event (seen by
this process) to the matching event on a Corral watch stream, for suspend/resume done outside Corral.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from bench.common import (
    WatchRecorder,
    agent_connected,
    corral_serve,
    open_libvirt,
    phase,
    ping_until_answered,
    save,
    summary,
)

BASE = "/v1/namespaces/bench/instances"
SPEC = {
    "runStrategy": "Always",
    "terminationGracePeriodSeconds": 0,
    "domain": {"resources": {"requests": {"cpu": "1", "memory": "256Mi"}}},
}


def corral_run(client: Any, watch: WatchRecorder, name: str) -> tuple[float, float, str]:
    started = time.monotonic()
    response = client.post(BASE, json={"metadata": {"name": name}, "spec": SPEC})
    response.raise_for_status()
    running = watch.wait(name, phase("Running"), started) - started
    agent = watch.wait(name, agent_connected, started) - started
    return running, agent, client.get(f"{BASE}/{name}").json()["status"]["domainName"]


def raw_xml(conn: Any, domain: str, workdir: Path) -> str:
    """Corral's domain XML under a new name and uuid, on a fresh overlay of the same base image."""
    root = ET.fromstring(conn.lookupByName(domain).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    name = f"raw-{uuid.uuid4().hex[:8]}"
    root.find("name").text = name  # type: ignore[union-attr]
    root.find("uuid").text = str(uuid.uuid4())  # type: ignore[union-attr]
    for source in root.iterfind("devices/disk/source"):
        info = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", source.get("file", "")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        backing = json.loads(info)["backing-filename"]
        overlay = workdir / f"{name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, str(overlay)],
            check=True,
        )
        source.set("file", str(overlay))
    for log_source in root.iterfind("devices/serial/source"):
        log_source.set("path", str(workdir / f"{name}.log"))
    for log_source in root.iterfind("devices/console/source"):
        log_source.set("path", str(workdir / f"{name}.log"))
    for metadata in root.findall("metadata"):
        root.remove(metadata)
    return ET.tostring(root, encoding="unicode")


def raw_run(conn: Any, xml: str, workdir: Path) -> tuple[float, float]:
    path = workdir / "raw.xml"
    path.write_text(xml)
    name = ET.fromstring(xml).findtext("name")
    started = time.monotonic()
    subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", "create", str(path)], check=True, capture_output=True
    )
    running = time.monotonic() - started
    dom = conn.lookupByName(name)
    ping_until_answered(dom)
    agent = time.monotonic() - started
    dom.destroy()
    return running, agent


def watch_latency(client: Any, watch: WatchRecorder, conn: Any, toggles: int) -> list[float]:
    client.post(BASE, json={"metadata": {"name": "latency"}, "spec": SPEC}).raise_for_status()
    watch.wait("latency", agent_connected, 0)
    domain = conn.lookupByName(client.get(f"{BASE}/latency").json()["status"]["domainName"])
    seen: dict[int, float] = {}
    lock = threading.Condition()

    def on_event(_c: Any, dom: Any, event: int, _detail: int, _o: Any) -> None:
        if dom.name() == domain.name() and event in (
            libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
            libvirt.VIR_DOMAIN_EVENT_RESUMED,
        ):
            with lock:
                seen[event] = time.monotonic()
                lock.notify_all()

    callback = conn.domainEventRegisterAny(domain, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_event, None)
    samples = []
    try:
        for i in range(toggles):
            pause = i % 2 == 0
            event = libvirt.VIR_DOMAIN_EVENT_SUSPENDED if pause else libvirt.VIR_DOMAIN_EVENT_RESUMED
            before = time.monotonic()
            (domain.suspend if pause else domain.resume)()
            with lock:

                def seen_since(ev: int = event, t: float = before) -> bool:
                    return seen.get(ev, 0) >= t

                lock.wait_for(seen_since, timeout=10)
                libvirt_time = seen[event]
            arrived = watch.wait("latency", phase("Paused" if pause else "Running"), before)
            samples.append(arrived - libvirt_time)
    finally:
        conn.domainEventDeregisterAny(callback)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--toggles", type=int, default=100)
    args = parser.parse_args()

    conn = open_libvirt()
    workdir = Path(tempfile.mkdtemp(prefix="corral-bench-raw-"))
    results: dict[str, list[float]] = {
        k: [] for k in ("corral_running", "corral_agent", "raw_running", "raw_agent")
    }
    with corral_serve() as client:
        watch = WatchRecorder(client, BASE)
        for i in range(args.runs):
            name = f"boot-{i}"
            running, agent, domain = corral_run(client, watch, name)
            xml = raw_xml(conn, domain, workdir)
            client.delete(f"{BASE}/{name}")
            while client.get(f"{BASE}/{name}").status_code != 404:
                time.sleep(0.05)
            raw_running, raw_agent = raw_run(conn, xml, workdir)
            results["corral_running"].append(running)
            results["corral_agent"].append(agent)
            results["raw_running"].append(raw_running)
            results["raw_agent"].append(raw_agent)
            print(
                f"run {i}: corral running {running:.3f}s agent {agent:.3f}s | "
                f"virsh create {raw_running:.3f}s agent {raw_agent:.3f}s",
                flush=True,
            )
        latency = watch_latency(client, watch, conn, args.toggles)
        client.delete(f"{BASE}/latency")
        while client.get(f"{BASE}/latency").status_code != 404:
            time.sleep(0.05)
        watch.close()

    report: dict[str, Any] = {k: summary(v) for k, v in results.items()}
    report["watch_latency"] = summary(latency)
    ratio_running = report["corral_running"]["median"] / report["raw_running"]["median"]
    ratio_agent = report["corral_agent"]["median"] / report["raw_agent"]["median"]
    report["ratios"] = {"running": ratio_running, "agent": ratio_agent}
    print(
        f"\ncreate -> Running:        corral median {report['corral_running']['median']:.3f}s, "
        f"virsh create median {report['raw_running']['median']:.3f}s, ratio {ratio_running:.2f}x"
    )
    print(
        f"create -> agent answers:  corral median {report['corral_agent']['median']:.3f}s, "
        f"raw median {report['raw_agent']['median']:.3f}s, ratio {ratio_agent:.2f}x"
    )
    lat = report["watch_latency"]
    print(
        f"libvirt event -> watch:   median {lat['median'] * 1000:.1f} ms, p99 {lat['p99'] * 1000:.1f} ms, "
        f"max {lat['max'] * 1000:.1f} ms over {lat['n']} state changes"
    )
    print(f"medians of {args.runs} runs; saved {save('instances', report)}")


if __name__ == "__main__":
    main()
