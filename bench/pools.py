"""Benchmark: claim -> usable instance (Running, qemu-ga answering guest-ping) against a cold create -> the
same, in one run, for warmState Running and Paused.

    .venv/bin/python -m bench.pools [--claims 20] [--cold 5] [--size 3]

Each claim is timed once the pool is full again, so it is a hit and no replacement is booting: under TCG a
boot takes both cores for seconds, which says nothing about the hand-over (on KVM hosts boots are cheap).
Claimed instances are deleted while the pool refills.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import corral_serve, open_libvirt, ping_until_answered, save, summary

NS = "/v1/namespaces/bench"
TEMPLATE = {
    "spec": {
        "terminationGracePeriodSeconds": 0,
        "domain": {"resources": {"requests": {"cpu": "1", "memory": "256Mi"}}},
    }
}


def wait_available(client: Any, pool: str, at_least: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"{NS}/pools/{pool}").json()["status"]
        if status.get("availableReplicas", 0) >= at_least and not status.get("warming"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"pool {pool} did not fill up")
        time.sleep(0.05)


def claims(client: Any, conn: Any, pool: str, size: int, count: int) -> tuple[list[float], list[float]]:
    api_latency, usable = [], []
    for i in range(count):
        wait_available(client, pool, size)
        time.sleep(0.5)  # let the last boot's guest settle
        started = time.monotonic()
        response = client.post(f"{NS}/pools/{pool}/claim", json={"name": f"{pool}-claimed-{i}"})
        answered = time.monotonic()
        response.raise_for_status()
        ping_until_answered(conn.lookupByName(response.json()["status"]["domainName"]))
        done = time.monotonic()
        api_latency.append(answered - started)
        usable.append(done - started)
        client.delete(f"{NS}/instances/{pool}-claimed-{i}")
        print(
            f"{pool} claim {i}: 201 after {1000 * (answered - started):.1f} ms, "
            f"guest-ping after {1000 * (done - started):.1f} ms",
            flush=True,
        )
    return api_latency, usable


def cold(client: Any, conn: Any, count: int) -> list[float]:
    samples = []
    for i in range(count):
        name = f"cold-{i}"
        started = time.monotonic()
        client.post(f"{NS}/instances", json={"metadata": {"name": name}, **TEMPLATE}).raise_for_status()
        while (domain := client.get(f"{NS}/instances/{name}").json()["status"].get("domainName")) is None:
            time.sleep(0.005)
        ping_until_answered(conn.lookupByName(domain))
        samples.append(time.monotonic() - started)
        client.delete(f"{NS}/instances/{name}")
        print(f"cold create {i}: guest-ping after {samples[-1]:.2f} s", flush=True)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--size", type=int, default=3)
    args = parser.parse_args()
    conn = open_libvirt()
    report: dict[str, Any] = {}
    with corral_serve() as client:
        report["cold_usable"] = summary(cold(client, conn, args.cold))
        for warm_state in ("Running", "Paused"):
            pool = f"warm-{warm_state.lower()}"
            body = {
                "metadata": {"name": pool},
                "spec": {"size": args.size, "warmState": warm_state, "template": TEMPLATE},
            }
            client.post(f"{NS}/pools", json=body).raise_for_status()
            wait_available(client, pool, args.size)
            api_latency, usable = claims(client, conn, pool, args.size, args.claims)
            report[f"{pool}_claim_201"] = summary(api_latency)
            report[f"{pool}_claim_usable"] = summary(usable)
            client.delete(f"{NS}/pools/{pool}")
            while client.get(f"{NS}/pools/{pool}").status_code != 404:
                time.sleep(0.1)
    cold_median = report["cold_usable"]["median"]
    print(f"\ncold create -> guest-ping: median {cold_median:.2f} s over {args.cold}")
    for warm_state in ("running", "paused"):
        usable = report[f"warm-{warm_state}_claim_usable"]
        api = report[f"warm-{warm_state}_claim_201"]
        report[f"warm-{warm_state}_ratio"] = cold_median / usable["median"]
        print(
            f"warmState {warm_state.title():8} claim -> usable: p50 {1000 * usable['median']:.1f} ms, "
            f"p99 {1000 * usable['p99']:.1f} ms (201 itself: p50 {1000 * api['median']:.1f} ms, "
            f"p99 {1000 * api['p99']:.1f} ms); cold/claim = {cold_median / usable['median']:.0f}x"
        )
    print(f"medians over {args.claims} claims each; saved {save('pools', report)}")


if __name__ == "__main__":
    main()
