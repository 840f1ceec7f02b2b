"""Benchmark: how fast the guest agent's state reaches the API, and an exec through Corral against the same
exec straight through libvirt.

    .venv/bin/python -m bench.guest [--boots 5] [--execs 20]

Agent latency: from libvirt's AGENT_LIFECYCLE Connected event (seen by this process) to the watch event
that shows AgentConnected=True, over several restarts. Exec: `uname -r` through POST .../guest/exec
against guest-exec + guest-exec-status polled through libvirt from this process, same guest, same run.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import libvirt
import libvirt_qemu

from bench.common import WatchRecorder, agent_connected, corral_serve, open_libvirt, save, summary

BASE = "/v1/namespaces/bench/instances"


def raw_exec(dom: Any) -> float:
    started = time.monotonic()
    reply = libvirt_qemu.qemuAgentCommand(
        dom,
        json.dumps(
            {
                "execute": "guest-exec",
                "arguments": {"path": "/bin/uname", "arg": ["-r"], "capture-output": True},
            }
        ),
        5,
        0,
    )
    poll = json.dumps(
        {"execute": "guest-exec-status", "arguments": {"pid": json.loads(reply)["return"]["pid"]}}
    )
    while True:
        status = json.loads(libvirt_qemu.qemuAgentCommand(dom, poll, 5, 0))["return"]
        if status.get("exited"):
            return time.monotonic() - started
        time.sleep(0.05)  # the same polling interval Corral uses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--boots", type=int, default=5)
    parser.add_argument("--execs", type=int, default=20)
    args = parser.parse_args()
    conn = open_libvirt()
    connected: list[float] = []
    lock = threading.Condition()

    def on_agent(_c: Any, _dom: Any, state: int, _reason: int, _o: Any) -> None:
        if state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED:
            with lock:
                connected.append(time.monotonic())
                lock.notify_all()

    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, on_agent, None)
    latency, corral_exec, libvirt_exec = [], [], []
    with corral_serve() as client:
        watch = WatchRecorder(client, BASE)
        spec = {
            "terminationGracePeriodSeconds": 0,
            "domain": {"resources": {"requests": {"memory": "256Mi"}}},
        }
        for boot in range(args.boots):
            before = time.monotonic()
            if boot == 0:
                client.post(BASE, json={"metadata": {"name": "g"}, "spec": spec}).raise_for_status()
            else:
                client.post(f"{BASE}/g/restart").raise_for_status()
            # After a restart the agent first goes away; the reconnect is what is timed.
            lost = watch.wait("g", lambda obj: not agent_connected(obj), before) if boot else before
            shown = watch.wait("g", agent_connected, lost)
            with lock:

                def connected_since(t: float = before) -> bool:
                    return any(c > t for c in connected)

                lock.wait_for(connected_since, timeout=60)
                event = min(c for c in connected if c > before)
            latency.append(shown - event)
            print(f"boot {boot}: AgentConnected on the watch {1000 * (shown - event):.1f} ms after libvirt")
        dom = conn.lookupByName(client.get(f"{BASE}/g").json()["status"]["domainName"])
        for _ in range(args.execs):
            started = time.monotonic()
            client.post(f"{BASE}/g/guest/exec", json={"command": ["/bin/uname", "-r"]}).raise_for_status()
            corral_exec.append(time.monotonic() - started)
            libvirt_exec.append(raw_exec(dom))
        watch.close()
    report = {
        "agent_connected_to_watch": summary(latency),
        "exec_corral": summary(corral_exec),
        "exec_libvirt": summary(libvirt_exec),
    }
    lat, mine, raw = report["agent_connected_to_watch"], report["exec_corral"], report["exec_libvirt"]
    print(
        f"\nlibvirt agent Connected -> watch AgentConnected=True: median {1000 * lat['median']:.1f} ms, "
        f"max {1000 * lat['max']:.1f} ms over {args.boots} boots"
    )
    print(
        f"exec uname -r: Corral p50 {1000 * mine['median']:.1f} ms p99 {1000 * mine['p99']:.1f} ms; "
        f"libvirt direct p50 {1000 * raw['median']:.1f} ms ({mine['median'] / raw['median']:.2f}x)"
    )
    print(f"saved {save('guest', report)}")


if __name__ == "__main__":
    main()
