"""Host-device passthrough on libvirt's test driver, whose host declares PCI devices
(tests/data/passthrough-node.xml): inventory, permittedHostDevices, the ledger under concurrency, and the
VFIO hostdev XML the instances get.

There is no IOMMU on the test machines: VFIO itself is not exercised here. What is verified is discovery and
parsing, allocation and bookkeeping, and the generated domain XML (libvirt's schema, the test driver's define
and start); the real QEMU driver's refusal is in tests/virt/test_contract.py.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import Database
from tests.conftest import ADMIN_TOKEN, add_node, bearer, conditions, make_token, wait_for
from tests.controllers.test_instances import BASE, instance, wait_phase

NODE_FILE = Path(__file__).resolve().parents[1] / "data" / "passthrough-node.xml"
NODE_URI = f"test://{NODE_FILE}"
SEED = Path(__file__).resolve().parents[2] / "examples" / "vmi-passthrough.yaml"
RULES = {
    "pciHostDevices": [
        {"pciVendorSelector": "10DE:2330", "resourceName": "nvidia.com/gpu"},
        {"pciVendorSelector": "10ee:903f", "resourceName": "xilinx.com/fpga"},
    ],
    "mediatedDevices": [{"mdevNameSelector": "GRID T4-1B", "resourceName": "nvidia.com/GRID_T4-1B"}],
}
HOSTDEV = "spec.domain.devices.hostDevices[0].deviceName"


@pytest.fixture
def api(pg: Database, worker: Any, server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=30) as client:
        add_node(client, "gpu", NODE_URI, {"driver": "test"})
        yield client


def permit(api: httpx.Client, rules: dict[str, Any] = RULES) -> None:
    put = api.put("/v1/config/permittedHostDevices", json=rules)
    assert put.status_code == 200, put.text
    wait_for(
        lambda: api.get("/v1/nodes/gpu").json()["status"]["allocatable"].get("nvidia.com/gpu") == "2",
        timeout=15,
        what="nvidia.com/gpu allocatable",
    )


def hostdevs(worker: Any, api: httpx.Client, name: str) -> list[str]:
    """PCI addresses in the domain's XML, read through the worker's own connection to the test host."""
    domain = api.get(f"{BASE}/{name}").json()["status"]["domainName"]
    root = ET.fromstring(worker.connections.get("gpu", NODE_URI).domain_xml(domain))
    return sorted(
        "{}:{}:{}.{}".format(*(a.get(k, "")[2:] for k in ("domain", "bus", "slot", "function")))
        for a in root.iterfind("devices/hostdev[@type='pci']/source/address")
    )


def gpu_vmi(name: str, count: int = 1) -> dict[str, Any]:
    body = instance(name)
    body["spec"]["domain"]["resources"]["requests"]["nvidia.com/gpu"] = str(count)
    return body


def test_inventory_lists_the_declared_devices(api: httpx.Client) -> None:
    devices = {d["spec"]["deviceName"]: d for d in api.get("/v1/nodes/gpu/devices").json()["items"]}
    assert set(devices) == {
        "computer",
        "pci_0000_00_01_0",
        "pci_0000_01_00_0",
        "pci_0000_3b_00_0",
        "pci_0000_5e_00_0",
        "pci_0000_5e_00_1",
        "pci_0000_af_00_0",
        "usb_1_4",
    }
    h100 = devices["pci_0000_3b_00_0"]
    assert h100["metadata"]["name"] == "gpu.pci_0000_3b_00_0" and h100["spec"]["nodeName"] == "gpu"
    assert h100["status"] | {"observedAt": None} == {
        "capability": "pci",
        "present": True,
        "address": "0000:3b:00.0",
        "vendorId": "10de",
        "productId": "2330",
        "vendorName": "NVIDIA Corporation",
        "productName": "GH100 [H100 SXM5 80GB]",
        "class": "0x030200",
        "iommuGroup": 40,
        "iommuGroupMembers": ["0000:3b:00.0"],
        "numaNode": 0,
        "parent": "computer",
        "mdevTypes": [],
        "mediatedDevices": [],
        "observedAt": None,
    }
    meta = h100["metadata"]
    assert meta["creationTimestamp"].endswith("Z") and h100["status"]["observedAt"].endswith("Z")
    again = api.get("/v1/nodes/gpu/devices/pci_0000_3b_00_0").json()["metadata"]
    assert (again["uid"], again["resourceVersion"]) == (meta["uid"], meta["resourceVersion"])  # stable
    assert len({d["metadata"]["uid"] for d in devices.values()}) == len(devices)
    assert devices["pci_0000_5e_00_0"]["status"]["iommuGroupMembers"] == ["0000:5e:00.0", "0000:5e:00.1"]
    assert devices["usb_1_4"]["status"]["capability"] == "usb_device"
    t4 = devices["pci_0000_af_00_0"]["status"]["mdevTypes"]
    assert {t["id"]: t["availableInstances"] for t in t4} == {"nvidia-222": 16, "nvidia-230": 1}
    assert "nvidia.com/gpu" not in api.get("/v1/nodes/gpu").json()["status"]["allocatable"]
    assert (
        api.get("/v1/nodes/gpu/devices/pci_0000_3b_00_0").json()["spec"]["deviceName"] == "pci_0000_3b_00_0"
    )
    assert api.get("/v1/nodes/gpu/devices/nope").status_code == 404
    assert api.get("/v1/nodes/nope/devices").status_code == 404


def test_permitting_makes_devices_allocatable(api: httpx.Client) -> None:
    before = api.get("/v1/nodes/gpu/devices/pci_0000_3b_00_0").json()["metadata"]["resourceVersion"]
    permit(api)
    after = api.get("/v1/nodes/gpu/devices/pci_0000_3b_00_0").json()["metadata"]["resourceVersion"]
    assert after != before  # its resourceName changed
    status = api.get("/v1/nodes/gpu").json()["status"]
    assert status["capacity"]["nvidia.com/gpu"] == "2" and status["allocatable"]["xilinx.com/fpga"] == "1"
    assert status["capacity"]["nvidia.com/GRID_T4-1B"] == "16"
    assert status["allocated"] == {
        "nvidia.com/GRID_T4-1B": "0",
        "nvidia.com/gpu": "0",
        "xilinx.com/fpga": "0",
    }
    gpus = api.get("/v1/devices", params={"resourceName": "nvidia.com/gpu", "free": "true"}).json()["items"]
    assert [g["spec"]["deviceName"] for g in gpus] == ["pci_0000_3b_00_0", "pci_0000_5e_00_0"]
    rules = api.get("/v1/config/permittedHostDevices").json()
    assert rules["pciHostDevices"][0] == {
        "pciVendorSelector": "10DE:2330",
        "resourceName": "nvidia.com/gpu",
        "externalResourceProvider": False,
    }


def test_rules_are_admin_only_and_validated(api: httpx.Client) -> None:
    everywhere = make_token(api, "ops", [{"namespace": "*", "role": "operator"}])
    one_namespace = make_token(api, "dev", [{"namespace": "default", "role": "admin"}])
    with httpx.Client(base_url=str(api.base_url), headers=bearer(everywhere)) as operator:
        assert operator.put("/v1/config/permittedHostDevices", json=RULES).status_code == 403
        assert operator.get("/v1/devices").status_code == 200
    with httpx.Client(base_url=str(api.base_url), headers=bearer(one_namespace)) as namespaced:
        assert namespaced.get("/v1/devices").status_code == 403  # cluster-scoped: a "*" grant
    wrong = {"pciHostDevices": [{"pciVendorSelector": "10de", "resourceName": "gpu"}]}
    bad = api.put("/v1/config/permittedHostDevices", json=wrong)
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {
        "pciHostDevices[0].pciVendorSelector",
        "pciHostDevices[0].resourceName",
    }


def test_seed_manifest_gets_both_hostdevs(api: httpx.Client, worker: Any, tmp_path: Path) -> None:
    permit(api)
    created = api.post(BASE, content=SEED.read_bytes(), headers={"Content-Type": "application/yaml"})
    assert created.status_code == 201, created.text
    running = wait_phase(api, "test-vmi", "Running")
    assert running["status"]["nodeName"] == "gpu"
    assert conditions(running)["LiveMigratable"] == "False"
    assert next(c for c in running["status"]["conditions"] if c["type"] == "LiveMigratable")["reason"] == (
        "HostDeviceNotLiveMigratable"
    )
    # The GPU by resourceName (the first free one), the FPGA by its libvirt name with the rest of its IOMMU
    # group except the bridge.
    assert hostdevs(worker, api, "test-vmi") == ["0000:01:00.0", "0000:3b:00.0"]
    held = api.get("/v1/devices", params={"holder": "default/test-vmi"}).json()["items"]
    assert sorted(d["spec"]["deviceName"] for d in held) == ["pci_0000_01_00_0", "pci_0000_3b_00_0"]
    assert all(d["status"]["holderUid"] == running["metadata"]["uid"] for d in held)
    assigned = {a["name"]: a for a in running["status"]["deviceAssignments"]}
    assert sorted(assigned) == ["pci_0000_01_00_0", "pci_0000_3b_00_0"]
    assert assigned["pci_0000_01_00_0"]["resourceName"] == "xilinx.com/fpga"
    assert assigned["pci_0000_3b_00_0"] == {
        "name": "pci_0000_3b_00_0",
        "resourceName": "nvidia.com/gpu",
        "address": "0000:3b:00.0",
        "nodeName": "gpu",
    }
    for other_spelling in ("test-vmi", running["metadata"]["uid"]):
        assert api.get("/v1/devices", params={"holder": other_spelling}).json()["items"] == held
    wait_for(
        lambda: api.get("/v1/nodes/gpu").json()["status"]["allocated"]["nvidia.com/gpu"] == "1",
        timeout=5,
        what="the node counts the GPU as allocated",
    )

    validator = shutil.which("virt-xml-validate")
    assert validator
    xml = tmp_path / "domain.xml"
    xml.write_text(worker.connections.get("gpu", NODE_URI).domain_xml(running["status"]["domainName"]))
    checked = subprocess.run([validator, str(xml), "domain"], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    refused = api.post(f"{BASE}/test-vmi/migrate")
    assert refused.status_code == 409 and "HostDeviceNotLiveMigratable" in refused.json()["detail"]


def test_a_held_device_waits_until_its_holder_is_deleted(api: httpx.Client, worker: Any) -> None:
    permit(api)
    fpga = {"hostDevices": [{"name": "fpga", "deviceName": "pci_0000_01_00_0"}]}
    first, second = instance("first"), instance("second")
    first["spec"]["domain"]["devices"] = fpga
    second["spec"]["domain"]["devices"] = fpga
    assert api.post(BASE, json=first).status_code == 201
    wait_phase(api, "first", "Running")
    assert api.post(BASE, json=second).status_code == 201
    waiting = wait_phase(api, "second", "Failed", "Unschedulable")
    assert "pci_0000_01_00_0 is held by default/first" in waiting["status"]["message"]

    # Stop and start keep the device (KubeVirt gives it up on stop; Corral's ledger keeps it).
    assert api.post(f"{BASE}/first/stop").status_code == 202
    wait_phase(api, "first", "Stopped")
    assert [
        d["spec"]["deviceName"]
        for d in api.get("/v1/devices", params={"holder": "default/first"}).json()["items"]
    ] == ["pci_0000_01_00_0"]
    assert wait_phase(api, "second", "Failed", "Unschedulable")
    assert api.post(f"{BASE}/first/start").status_code == 202
    wait_phase(api, "first", "Running")
    assert hostdevs(worker, api, "first") == ["0000:01:00.0"]

    assert api.delete(f"{BASE}/first").status_code == 202
    wait_phase(api, "second", "Running", timeout=20)
    assert hostdevs(worker, api, "second") == ["0000:01:00.0"]
    assert [
        d["status"]["holder"]
        for d in api.get("/v1/devices", params={"holder": "default/second"}).json()["items"]
    ] == ["default/second"]


def test_iommu_group_is_assigned_together(api: httpx.Client, worker: Any) -> None:
    permit(api)
    assert api.post(BASE, json=gpu_vmi("both", 2)).status_code == 201
    wait_phase(api, "both", "Running")
    assert hostdevs(worker, api, "both") == ["0000:3b:00.0", "0000:5e:00.0", "0000:5e:00.1"]
    assert api.post(BASE, json=gpu_vmi("more")).status_code == 201
    assert (
        "nvidia.com/gpu: 0 free of 2"
        in wait_phase(api, "more", "Failed", "Unschedulable")["status"]["message"]
    )


def test_racing_instances_never_share_a_device(api: httpx.Client, worker: Any) -> None:
    permit(api)
    names = [f"race-{i}" for i in range(6)]
    answers: list[int] = []

    def create(name: str) -> None:
        answers.append(api.post(BASE, json=gpu_vmi(name)).status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [201] * 6

    def settled() -> dict[str, str] | None:
        phases = {n: api.get(f"{BASE}/{n}").json()["status"].get("phase") for n in names}
        return phases if all(p in ("Running", "Failed") for p in phases.values()) else None

    phases = wait_for(settled, timeout=30, what="every racer placed or refused")
    winners = [n for n, p in phases.items() if p == "Running"]
    assert len(winners) == 2, phases
    addresses = [tuple(hostdevs(worker, api, n)) for n in winners]
    assert len(set(addresses)) == 2 and not set(addresses[0]) & set(addresses[1])
    holders = [
        d["status"].get("holder")
        for d in api.get("/v1/devices", params={"resourceName": "nvidia.com/gpu"}).json()["items"]
    ]
    assert sorted(holders) == sorted(f"default/{n}" for n in winners)


@pytest.mark.parametrize(
    ("devices", "requests", "field", "message"),
    [
        (
            {"gpus": [{"name": "g", "deviceName": "amd.com/gpu"}]},
            {},
            "spec.domain.devices.gpus[0].deviceName",
            "resourceName 'amd.com/gpu' is not permitted",
        ),
        (
            {"hostDevices": [{"name": "h", "deviceName": "pci_0000_99_00_0"}]},
            {},
            HOSTDEV,
            "no node reports a device named 'pci_0000_99_00_0'",
        ),
        (
            {"hostDevices": [{"name": "h", "deviceName": "usb_1_4"}]},
            {},
            HOSTDEV,
            "is a usb_device device; only PCI devices pass through",
        ),
        (
            {"hostDevices": [{"name": "h", "deviceName": "pci_0000_5e_00_1"}]},
            {},
            HOSTDEV,
            "(10de:22a3) is not permitted by permittedHostDevices",
        ),
        (
            {},
            {"example.com/widget": "1"},
            "spec.domain.resources.requests[example.com/widget]",
            "resourceName 'example.com/widget' is not permitted",
        ),
    ],
)
def test_bad_device_requests_are_refused(
    api: httpx.Client, devices: dict[str, Any], requests: dict[str, str], field: str, message: str
) -> None:
    permit(api)
    body = instance("bad")
    body["spec"]["domain"]["devices"] = devices
    body["spec"]["domain"]["resources"]["requests"].update(requests)
    refused = api.post(BASE, json=body)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["errors"] == [{"field": field, "message": refused.json()["errors"][0]["message"]}]
    assert message in refused.json()["detail"]
    assert api.get(f"{BASE}/bad").status_code == 404


def test_mediated_devices_are_carved_from_a_vgpu_parent(api: httpx.Client, worker: Any) -> None:
    rules = {
        **RULES,
        "mediatedDevices": [
            {"mdevNameSelector": "GRID T4-1B", "resourceName": "nvidia.com/GRID_T4-1B"},
            {"mdevNameSelector": "nvidia-230", "resourceName": "nvidia.com/GRID_T4-16Q"},
        ],
    }
    permit(api, rules)
    assert api.get("/v1/nodes/gpu").json()["status"]["capacity"]["nvidia.com/GRID_T4-16Q"] == "1"
    vgpu = instance("vgpu")
    vgpu["spec"]["domain"]["resources"]["requests"]["nvidia.com/GRID_T4-1B"] = "2"
    vgpu["spec"]["domain"]["devices"] = {"gpus": [{"name": "slice", "deviceName": "nvidia.com/GRID_T4-16Q"}]}
    assert api.post(BASE, json=vgpu).status_code == 201
    running = wait_phase(api, "vgpu", "Running")
    domain = worker.connections.get("gpu", NODE_URI).domain_xml(running["status"]["domainName"])
    uuids = [
        a.get("uuid") for a in ET.fromstring(domain).iterfind("devices/hostdev[@type='mdev']/source/address")
    ]
    parent = api.get("/v1/devices", params={"holder": "default/vgpu"}).json()["items"]
    assert [p["spec"]["deviceName"] for p in parent] == ["pci_0000_af_00_0"]
    carved = parent[0]["status"]["mediatedDevices"]
    assert sorted(m["type"] for m in carved) == ["nvidia-222", "nvidia-222", "nvidia-230"]
    assert sorted(uuids) == sorted(m["uuid"] for m in carved) and len(set(uuids)) == 3
    assigned = running["status"]["deviceAssignments"]
    assert sorted(a["name"] for a in assigned) == sorted(uuids)
    assert sorted(a["resourceName"] for a in assigned) == [
        "nvidia.com/GRID_T4-16Q",
        "nvidia.com/GRID_T4-1B",
        "nvidia.com/GRID_T4-1B",
    ]
    assert {(a["parent"], a["nodeName"]) for a in assigned} == {("pci_0000_af_00_0", "gpu")}
    allocated = lambda: api.get("/v1/nodes/gpu").json()["status"]["allocated"]  # noqa: E731
    wait_for(lambda: allocated().get("nvidia.com/GRID_T4-1B") == "2", timeout=5, what="two T4-1B slices")

    other = instance("other")
    other["spec"]["domain"]["resources"]["requests"]["nvidia.com/GRID_T4-16Q"] = "1"
    assert api.post(BASE, json=other).status_code == 201
    message = wait_phase(api, "other", "Failed", "Unschedulable")["status"]["message"]
    assert "nvidia.com/GRID_T4-16Q: 0 mediated devices free, 1 needed" in message
    assert api.delete(f"{BASE}/vgpu").status_code == 202
    wait_phase(api, "other", "Running", timeout=20)
    assert api.get("/v1/devices", params={"holder": "default/vgpu"}).json()["items"] == []


def test_a_device_a_foreign_domain_uses_is_never_offered(api: httpx.Client, worker: Any) -> None:
    """A running domain Corral did not make (another tool's VM) holds 0000:3b:00.0: the inventory says so and
    placement skips it; libvirt's test driver would happily start a second domain on the same device."""
    permit(api)
    hv = worker.connections.get("gpu", NODE_URI)
    foreign = (
        "<domain type='test'><name>other-tool-vm</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os><devices><hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></source></hostdev></devices>"
        "</domain>"
    )
    hv.define(foreign)
    hv.start("other-tool-vm")
    try:
        device = "/v1/nodes/gpu/devices/pci_0000_3b_00_0"
        wait_for(
            lambda: api.get(device).json()["status"].get("usedBy") == "other-tool-vm",
            timeout=15,
            what="the foreign domain seen in the inventory",
        )
        free = api.get("/v1/devices", params={"resourceName": "nvidia.com/gpu", "free": "true"}).json()[
            "items"
        ]
        assert [d["spec"]["deviceName"] for d in free] == ["pci_0000_5e_00_0"]
        assert api.post(BASE, json=gpu_vmi("takes-the-other")).status_code == 201
        wait_phase(api, "takes-the-other", "Running")
        assert hostdevs(worker, api, "takes-the-other") == ["0000:5e:00.0", "0000:5e:00.1"]
        assert api.post(BASE, json=gpu_vmi("none-left")).status_code == 201
        message = wait_phase(api, "none-left", "Failed", "Unschedulable")["status"]["message"]
        assert "nvidia.com/gpu: 0 free of 2" in message
    finally:
        hv.destroy("other-tool-vm")
        hv.undefine("other-tool-vm")
