"""Networks on libvirt's test driver: Network resources (a host bridge, a NAT subnet of its own), what
instances may name and bind, unique MACs, and Networks in use. Reaching guests is proven on QEMU in
tests/integration/test_networks_qemu.py."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pytest

from app.virt.driver import Hypervisor
from tests.controllers.test_instances import BASE, instance, wait_phase

NETWORKS = "/v1/networks"


def network(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "corral.dev/v1", "kind": "Network", "metadata": {"name": name}, "spec": spec}


def on(name: str, *nics: tuple[str, dict[str, Any], dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """An instance whose interfaces (name, binding, network source) are each on their network."""
    body = instance(name)
    body["spec"]["networks"] = [{"name": nic, **source} for nic, _, source in nics]
    body["spec"]["domain"]["devices"] = {
        "interfaces": [{"name": nic, **binding, **extra} for nic, binding, _ in nics]
    }
    return body


def interfaces(hv: Hypervisor, api: httpx.Client, name: str) -> list[tuple[str | None, str | None]]:
    domain = wait_phase(api, name, "Running")["status"]["domainName"]
    found = []
    for nic in ET.fromstring(hv.domain_xml(domain)).iterfind("devices/interface"):
        source = nic.find("source")
        assert source is not None
        found.append((nic.get("type"), source.get("network") or source.get("bridge")))
    return found


def test_each_interface_is_on_its_network(api: httpx.Client, hv: Hypervisor) -> None:
    assert api.post(NETWORKS, json=network("lab", bridge={"name": "br-lab"})).status_code == 201
    assert api.post(NETWORKS, json=network("backend", nat={"cidr": "10.77.0.0/24"})).status_code == 201
    body = on(
        "multi",
        ("default", {"masquerade": {}}, {"pod": {}}),
        ("lab", {"bridge": {}}, {"multus": {"networkName": "lab"}}),
        ("back", {"masquerade": {}}, {"multus": {"networkName": "backend"}}),
    )
    assert api.post(BASE, json=body).status_code == 201
    assert interfaces(hv, api, "multi") == [
        ("network", "corral-default"),
        ("bridge", "br-lab"),
        ("network", "corral-backend"),
    ]
    names = [nic["name"] for nic in wait_phase(api, "multi", "Running")["status"]["interfaces"]]
    assert names == ["default", "lab", "back"]  # status.interfaces in spec order, named as the spec
    busy = api.delete(f"{NETWORKS}/lab")
    assert busy.status_code == 409 and "default/multi" in busy.json()["detail"]
    changed = api.patch(
        f"{NETWORKS}/lab",
        json={"spec": {"bridge": {"name": "br-other"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert changed.status_code == 422


def test_no_networks_named_means_the_nat_network(api: httpx.Client, hv: Hypervisor) -> None:
    api.post(BASE, json=instance("plain"))
    assert interfaces(hv, api, "plain") == [("network", "corral-default")]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (
            on("x", ("n", {"bridge": {}}, {"multus": {"networkName": "nowhere"}})),
            422,
            "spec.networks[0].multus.networkName",
        ),
        (
            on("x", ("n", {"masquerade": {}}, {"multus": {"networkName": "lab"}})),
            422,
            "spec.domain.devices.interfaces[0].masquerade",
        ),
        (on("x", ("n", {"masquerade": {}, "bridge": {}}, {"pod": {}})), 422, "one binding"),
        (
            {
                **instance("x"),
                "spec": {
                    **instance("x")["spec"],
                    "networks": [{"name": "a", "pod": {}}],
                    "domain": {"devices": {"interfaces": [{"name": "b"}]}},
                },
            },
            422,
            "no network named 'b'",
        ),
        (
            on("x", ("n", {}, {"pod": {}, "multus": {"networkName": "lab"}})),
            422,
            "exactly one of pod or multus",
        ),
    ],
)
def test_bad_networks_answer_naming_the_field(
    api: httpx.Client, body: dict[str, Any], status: int, field: str
) -> None:
    api.post(NETWORKS, json=network("lab", bridge={"name": "br-lab"}))
    answer = api.post(BASE, json=body)
    assert answer.status_code == status, answer.text
    assert field in answer.text


def test_macs_are_honoured_and_unique(api: httpx.Client, hv: Hypervisor) -> None:
    mac = "52:54:00:aa:00:01"
    assert (
        api.post(
            BASE, json=on("first", ("default", {"masquerade": {}}, {"pod": {}}), macAddress=mac)
        ).status_code
        == 201
    )
    domain = wait_phase(api, "first", "Running")["status"]["domainName"]
    assert ET.fromstring(hv.domain_xml(domain)).find("devices/interface/mac").get("address") == mac  # type: ignore[union-attr]
    second = api.post(
        BASE, json=on("second", ("default", {"masquerade": {}}, {"pod": {}}), macAddress=mac.upper())
    )
    assert second.status_code == 422 and "default/first" in second.json()["detail"]
    assert second.json()["errors"][0]["field"] == "spec.domain.devices.interfaces[0].macAddress"
    twice = instance("twice")
    twice["spec"]["domain"]["devices"] = {
        "interfaces": [{"name": "a", "macAddress": mac}, {"name": "b", "macAddress": mac}]
    }
    answer = api.post(BASE, json=twice)
    assert answer.status_code == 422 and "given twice" in answer.text


def test_network_specs_are_checked(api: httpx.Client) -> None:
    for spec, said in (
        ({"nat": {"cidr": "10.1.2.3/24"}}, "not an IPv4 subnet"),
        ({"nat": {"cidr": "10.0.0.0/30"}}, "/8 to /28"),
        ({"bridge": {"name": "a-name-far-too-long"}}, "spec.bridge.name"),
        ({"bridge": {"name": "br0"}, "nat": {"cidr": "10.0.0.0/24"}}, "exactly one of bridge or nat"),
    ):
        answer = api.post(NETWORKS, json=network("bad", **spec))
        assert answer.status_code == 422 and said in answer.text, answer.text
