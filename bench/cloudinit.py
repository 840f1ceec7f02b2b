"""Benchmark: a cloud image from boot to an SSH login.

    .venv/bin/python -m bench.cloudinit [--runs 3]

The Debian 12 cloud guest (scripts/build-cloud-guest.sh) with `#cloud-config` user data that makes a user
with an SSH key, started (1) through Corral (`corral serve`, a cloudInitNoCloud volume, the address read from
status.interfaces) and (2) with `virsh create` of a hand-written domain on the same NAT network with a seed
ISO made by genisoimage (cloud-init's documented recipe; the address read from libvirt's DHCP leases), in
alternation in one run. Each time is from the request to the first `ssh ... cloud-init status --wait` that
returns: the guest booted, cloud-init finished and the user logged in.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from bench.common import corral_serve, open_libvirt, overlay_on, save, summary

IMAGE = Path(os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images")) / "corral" / "debian-cloud" / "12"
INSTANCES = "/v1/namespaces/bench/instances"
NETWORK = "corral-default"  # the NAT network Corral runs on every node
TIMEOUT = 600.0


def user_data(public_key: str) -> str:
    return (
        "#cloud-config\nusers:\n  - name: bench\n    shell: /bin/bash\n"
        f'    ssh_authorized_keys: ["{public_key}"]\n'
    )


def login_until_done(address_of: Any, key: Path, started: float) -> float:
    """Seconds from `started` to the first ssh that waited out cloud-init."""
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
    options += ["-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-i", str(key)]
    while time.monotonic() - started < TIMEOUT:
        address = address_of()
        if address:
            done = subprocess.run(
                ["ssh", *options, f"bench@{address}", "cloud-init status --wait"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0 and "status: done" in done.stdout:
                return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError("no ssh login")


def corral_boot(client: Any, name: str, data: str, key: Path) -> float:
    spec = {
        "terminationGracePeriodSeconds": 0,
        "domain": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
        "volumes": [
            {"name": "root", "containerDisk": {"image": "corral/debian-cloud:12"}},
            {"name": "cloudinit", "cloudInitNoCloud": {"userData": data}},
        ],
    }

    def address() -> str | None:
        nics = client.get(f"{INSTANCES}/{name}").json().get("status", {}).get("interfaces", [])
        return next((n["ipAddress"] for n in nics if n.get("ipAddress")), None)

    started = time.monotonic()
    client.post(INSTANCES, json={"metadata": {"name": name}, "spec": spec}).raise_for_status()
    elapsed = login_until_done(address, key, started)
    client.delete(f"{INSTANCES}/{name}")
    return elapsed


def domain_xml(name: str, overlay: Path, seed: Path) -> str:
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "memory", unit="MiB").text = "1024"
    ET.SubElement(domain, "vcpu").text = "1"
    os_ = ET.SubElement(domain, "os")
    ET.SubElement(os_, "type", arch="x86_64", machine="q35").text = "hvm"
    ET.SubElement(os_, "kernel").text = str(IMAGE / "vmlinuz")
    ET.SubElement(os_, "initrd").text = str(IMAGE / "initrd.img")
    ET.SubElement(os_, "cmdline").text = (IMAGE / "cmdline").read_text().strip()
    devices = ET.SubElement(domain, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2")
    ET.SubElement(disk, "source", file=str(overlay))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
    ET.SubElement(cdrom, "driver", name="qemu", type="raw")
    ET.SubElement(cdrom, "source", file=str(seed))
    ET.SubElement(cdrom, "target", dev="sda", bus="scsi")
    ET.SubElement(cdrom, "readonly")
    ET.SubElement(devices, "controller", type="scsi", model="virtio-scsi")
    nic = ET.SubElement(devices, "interface", type="network")
    ET.SubElement(nic, "source", network=NETWORK)
    ET.SubElement(nic, "model", type="virtio")
    ET.SubElement(devices, "serial", type="pty")
    return ET.tostring(domain, encoding="unicode")


def virsh_boot(workdir: Path, data: str, key: Path) -> float:
    name = f"raw-{uuid.uuid4().hex[:8]}"
    overlay, seed, seed_dir = workdir / f"{name}.qcow2", workdir / f"{name}.iso", workdir / name
    seed_dir.mkdir()
    (seed_dir / "user-data").write_text(data)
    (seed_dir / "meta-data").write_text(f"instance-id: {name}\nlocal-hostname: {name}\n")
    conn = open_libvirt()
    network = conn.networkLookupByName(NETWORK)
    xml = workdir / f"{name}.xml"
    started = time.monotonic()
    overlay_on(IMAGE / "disk.qcow2", overlay)
    files = [str(seed_dir / "user-data"), str(seed_dir / "meta-data")]
    iso = ["genisoimage", "-quiet", "-output", str(seed), "-volid", "cidata", "-joliet", "-rock", *files]
    subprocess.run(iso, check=True)
    xml.write_text(domain_xml(name, overlay, seed))
    subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", "create", str(xml)], check=True, capture_output=True
    )
    dom = conn.lookupByName(name)
    macs = {nic.get("address") for nic in ET.fromstring(dom.XMLDesc()).iter("mac")}

    def address() -> str | None:
        leases = [lease for lease in network.DHCPLeases() if lease.get("mac") in macs]
        found = max(leases, key=lambda lease: lease.get("expirytime", 0), default=None)
        return str(ipaddress.ip_address(found["ipaddr"])) if found else None

    try:
        return login_until_done(address, key, started)
    finally:
        dom.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    samples: dict[str, list[float]] = {"corral": [], "virsh": []}
    with tempfile.TemporaryDirectory(prefix="corral-bench-cloudinit-") as directory:
        workdir = Path(directory)
        key = workdir / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        data = user_data(key.with_suffix(".pub").read_text().strip())
        with corral_serve() as client:
            for run in range(args.runs):
                samples["corral"].append(corral_boot(client, f"cloud-{run}", data, key))
                samples["virsh"].append(virsh_boot(workdir, data, key))
    result: dict[str, Any] = {key: summary(values) for key, values in samples.items()}
    result["ratio"] = result["corral"]["median"] / result["virsh"]["median"]
    print(save("cloudinit", {"runs": args.runs, **result}))
    print(
        f"boot -> cloud-init done -> ssh: Corral {result['corral']['median']:.1f}s, virsh + seed ISO "
        f"{result['virsh']['median']:.1f}s, ratio {result['ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
