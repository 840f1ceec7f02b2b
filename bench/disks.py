"""Benchmark: disks from outside.

    .venv/bin/python -m bench.disks [--runs 5] [--import-mib 256]

1. containerDisk first boot: an instance on an image the node has not pulled (a fresh digest each run, from
   a local docker-registry) against one on the cached image, both to Running and to AgentConnected, beside
   `virsh create` of the same disk from a local file (the raw libvirt baseline).
2. HTTP import throughput: a DataVolume importing a raw disk of --import-mib MiB of random bytes from a
   local HTTP server (download, checks, conversion to qcow2, upload through libvirt's volume stream)
   against `curl -o` + `qemu-img convert -O qcow2` of the same file, in the same run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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
from tests.http_source import HttpSource
from tests.registry import Registry, disk_layer

IMAGES = Path(os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images"))
GUEST_DISK = IMAGES / "corral" / "test-guest" / "latest" / "containerdisk.qcow2"
INSTANCES = "/v1/namespaces/bench/instances"
DVS = "/v1/namespaces/bench/datavolumes"


def boot(client: Any, watch: WatchRecorder, name: str, image: str) -> tuple[float, float]:
    spec = {
        "terminationGracePeriodSeconds": 0,
        "domain": {"resources": {"requests": {"cpu": "1", "memory": "256Mi"}}},
        "volumes": [{"name": "boot", "containerDisk": {"image": image}}],
    }
    started = time.monotonic()
    client.post(INSTANCES, json={"metadata": {"name": name}, "spec": spec}).raise_for_status()
    running = watch.wait(name, phase("Running"), started, timeout=300) - started
    agent = watch.wait(name, agent_connected, started, timeout=300) - started
    client.delete(f"{INSTANCES}/{name}")
    return running, agent


def virsh_boot(workdir: Path) -> tuple[float, float]:
    """The same self-booting disk under a fresh overlay, started with `virsh create`."""
    name = f"raw-{uuid.uuid4().hex[:8]}"
    overlay = workdir / f"{name}.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(GUEST_DISK), str(overlay)],
        check=True,
    )
    xml = workdir / f"{name}.xml"
    xml.write_text(
        f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os><devices>"
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{overlay}'/>"
        "<target dev='vda' bus='virtio'/></disk>"
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
        "</devices></domain>"
    )
    conn = open_libvirt()
    started = time.monotonic()
    subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", "create", str(xml)], check=True, capture_output=True
    )
    running = time.monotonic() - started
    dom = conn.lookupByName(name)
    ping_until_answered(dom)
    agent = time.monotonic() - started
    dom.destroy()
    return running, agent


def first_boots(runs: int, workdir: Path) -> dict[str, Any]:
    registry = Registry(workdir / "registry")
    registry.start()
    samples: dict[str, list[float]] = {
        k: [] for k in ("uncached", "uncached_agent", "cached", "cached_agent")
    }
    samples |= {"virsh": [], "virsh_agent": []}
    try:
        env = {
            "CORRAL_IMAGE_REGISTRIES": f"{registry.host}/containerdisks",
            "CORRAL_INSECURE_REGISTRIES": registry.host,
        }
        with corral_serve(**env) as client:
            watch = WatchRecorder(client, INSTANCES)
            try:
                for run in range(runs):
                    # A new digest each run (the disk file's name in the layer differs): nothing is cached.
                    registry.push_image(
                        "containerdisks/bench", f"run{run}", [disk_layer(GUEST_DISK, f"run{run}.qcow2")]
                    )
                    image = f"bench:run{run}"
                    for key, name in (("uncached", f"cold-{run}"), ("cached", f"warm-{run}")):
                        running, agent = boot(client, watch, name, image)
                        samples[key].append(running)
                        samples[f"{key}_agent"].append(agent)
                    running, agent = virsh_boot(workdir)
                    samples["virsh"].append(running)
                    samples["virsh_agent"].append(agent)
            finally:
                watch.close()
    finally:
        registry.stop()
    return {key: summary(values) for key, values in samples.items()}


def imports(runs: int, mib: int, workdir: Path) -> dict[str, Any]:
    files = workdir / "files"
    files.mkdir()
    source = files / "disk.raw"
    with source.open("wb") as sink:
        for _ in range(mib):
            sink.write(os.urandom(1 << 20))
    server = HttpSource(files)
    samples: dict[str, list[float]] = {"corral": [], "curl_convert": []}
    try:
        with corral_serve(CORRAL_IMPORT_ALLOWED_HOSTS="127.0.0.1") as client:
            for run in range(runs):
                started = time.monotonic()
                spec = {"source": {"http": {"url": server.url("files/disk.raw")}}}
                client.post(DVS, json={"metadata": {"name": f"dv-{run}"}, "spec": spec}).raise_for_status()
                while (status := client.get(f"{DVS}/dv-{run}").json()["status"])["phase"] != "Succeeded":
                    if status["phase"] == "Failed":
                        raise RuntimeError(status)
                    time.sleep(0.05)
                samples["corral"].append(time.monotonic() - started)
                client.delete(f"{DVS}/dv-{run}")

                started = time.monotonic()
                fetched, converted = workdir / "fetched.raw", workdir / "converted.qcow2"
                subprocess.run(["curl", "-s", "-o", str(fetched), server.url("files/disk.raw")], check=True)
                subprocess.run(
                    ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(fetched), str(converted)],
                    check=True,
                )
                samples["curl_convert"].append(time.monotonic() - started)
                fetched.unlink()
                converted.unlink()
    finally:
        server.stop()
    result: dict[str, Any] = {key: summary(values) for key, values in samples.items()}
    result["ratio"] = result["corral"]["median"] / result["curl_convert"]["median"]
    result["corral_mib_per_s"] = mib / result["corral"]["median"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--import-mib", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-bench-disks-") as directory:
        workdir = Path(directory)
        result = {
            "runs": args.runs,
            "first_boot": first_boots(args.runs, workdir),
            "http_import": {"mib": args.import_mib, **imports(args.runs, args.import_mib, workdir)},
        }
    print(save("disks", result))
    boot_ = result["first_boot"]
    for key in ("uncached", "cached", "virsh"):
        print(f"{key:>10}: Running {boot_[key]['median']:.2f}s, agent {boot_[f'{key}_agent']['median']:.2f}s")
    http = result["http_import"]
    print(
        f"import {args.import_mib} MiB: Corral {http['corral']['median']:.2f}s, curl+convert "
        f"{http['curl_convert']['median']:.2f}s, ratio {http['ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
