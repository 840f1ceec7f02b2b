"""Guests people can reach: two guests on the node's NAT network get DHCP leases shown in
status.interfaces, the host reaches each at that address, and each reaches the other and the host."""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import httpx
import pytest

from tests.conftest import conditions, wait_for

INSTANCES = "/v1/namespaces/default/instances"


def leased(api: httpx.Client, name: str) -> dict[str, Any]:
    """The instance's first NIC once its address is a DHCP lease the guest also reports having (the guest
    applies a lease a moment after the DHCP server recorded it)."""

    def lease() -> dict[str, Any] | None:
        obj = api.get(f"{INSTANCES}/{name}").json()
        if conditions(obj).get("AgentConnected") != "True":
            return None
        api.get(f"{INSTANCES}/{name}/guest/interfaces", params={"refresh": "true"})
        nics = api.get(f"{INSTANCES}/{name}").json()["status"].get("interfaces", [])
        if nics and nics[0].get("infoSource") == "domain, guest-agent":
            address = nics[0].get("ipAddress", "")
            return nics[0] if address.startswith("10.88.") else None
        return None

    return wait_for(lease, timeout=90, interval=0.5, what=f"{name}'s lease, as the guest reports it")


def shell(api: httpx.Client, name: str, script: str) -> tuple[int, str]:
    ran = api.post(
        f"{INSTANCES}/{name}/guest/exec", json={"command": ["/bin/sh", "-c", script], "timeoutSeconds": 20}
    )
    assert ran.status_code == 200, ran.text
    return int(ran.json()["exitCode"]), base64.b64decode(ran.json()["stdoutBase64"]).decode()


@pytest.mark.qemu
def test_guests_on_the_nat_network_are_reachable(api: httpx.Client) -> None:
    spec = {
        "domain": {
            "resources": {"requests": {"memory": "192Mi"}},
            "devices": {"interfaces": [{"name": "default", "masquerade": {}}]},
        },
        "networks": [{"name": "default", "pod": {}}],
    }
    for name in ("alpha", "beta"):
        assert api.post(INSTANCES, json={"metadata": {"name": name}, "spec": spec}).status_code == 201
    alpha, beta = leased(api, "alpha"), leased(api, "beta")
    assert alpha["ipAddress"] != beta["ipAddress"]
    for nic in (alpha, beta):
        assert nic["name"] == "default" and nic["ipAddress"].startswith("10.88.")
        ping = subprocess.run(
            ["ping", "-c", "1", "-W", "3", nic["ipAddress"]], capture_output=True, check=False
        )
        assert ping.returncode == 0, ping.stdout  # the node reaches the guest at its reported address
    assert shell(api, "alpha", f"ping -c 1 -W 3 {beta['ipAddress']}")[0] == 0  # guest to guest
    assert shell(api, "beta", "ping -c 1 -W 3 10.88.0.1")[0] == 0  # guest to its node (the gateway)
    assert shell(api, "alpha", "ip route")[1].startswith("default via 10.88.0.1")


@pytest.mark.qemu
def test_two_guests_on_a_host_bridge_network_reach_each_other(api: httpx.Client) -> None:
    bridge = "crltest0"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        lab = {"metadata": {"name": "lab"}, "spec": {"bridge": {"name": bridge}}}
        assert api.post("/v1/networks", json=lab).status_code == 201
        spec = {
            "domain": {
                "resources": {"requests": {"memory": "192Mi"}},
                "devices": {"interfaces": [{"name": "lab", "bridge": {}}]},
            },
            "networks": [{"name": "lab", "multus": {"networkName": "lab"}}],
        }
        for name in ("left", "right"):
            assert api.post(INSTANCES, json={"metadata": {"name": name}, "spec": spec}).status_code == 201
        for n, name in enumerate(("left", "right"), start=1):
            wait_for(
                lambda i=name: conditions(api.get(f"{INSTANCES}/{i}").json()).get("AgentConnected") == "True",
                timeout=90,
                interval=0.2,
                what=f"{name}'s agent",
            )
            # Nothing serves DHCP on the operator's bridge: the guests take addresses by hand.
            script = f"killall udhcpc; ip addr flush dev eth0; ip addr add 192.168.77.{n}/24 dev eth0"
            assert shell(api, name, script)[0] == 0
        assert shell(api, "left", "ping -c 1 -W 3 192.168.77.2")[0] == 0
        assert shell(api, "right", "ping -c 1 -W 3 192.168.77.1")[0] == 0
        assert api.get(f"{INSTANCES}/left").json()["status"]["interfaces"][0]["name"] == "lab"
    finally:
        for name in ("left", "right"):
            api.delete(f"{INSTANCES}/{name}")
        wait_for(lambda: not api.get(INSTANCES).json()["items"], timeout=90, what="instances gone")
        api.delete("/v1/networks/lab")
        subprocess.run(["ip", "link", "del", bridge], check=False)
