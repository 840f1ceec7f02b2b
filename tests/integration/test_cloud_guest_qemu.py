"""A full Debian 12 cloud guest (systemd, cloud-init, qemu-guest-agent, sshd; scripts/build-cloud-guest.sh) on
real QEMU: user data from a Secret configures it, its NAT address shows in status.interfaces, ssh logs in
with the key it was given, keys in a Secret reach the running guest through the agent (and leave it), a
restart does not rerun first-boot modules, and a new instance (ConfigDrive this time) runs them."""

from __future__ import annotations

import base64
import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import IMAGE_DIR, conditions, wait_for

INSTANCES = "/v1/namespaces/default/instances"
SECRETS = "/v1/namespaces/default/secrets"
IMAGE = "corral/debian-cloud:12"
BOOT_TIMEOUT = 300  # a full OS under TCG on a busy 2-core machine

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module", autouse=True)
def cloud_image() -> None:
    if not (IMAGE_DIR / "corral" / "debian-cloud" / "12" / "disk.qcow2").is_file():
        pytest.fail("the Debian cloud guest is missing: run scripts/build-cloud-guest.sh (setup-host does)")


def keypair(directory: Path, name: str) -> tuple[Path, str]:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path, path.with_suffix(".pub").read_text().strip()


def ssh(address: str, user: str, key: Path, command: str) -> subprocess.CompletedProcess[str]:
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
    options += ["-o", "ConnectTimeout=10", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]
    return subprocess.run(
        ["ssh", *options, "-i", str(key), f"{user}@{address}", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run(api: httpx.Client, name: str, script: str) -> tuple[int, str]:
    ran = api.post(f"{INSTANCES}/{name}/guest/exec", json={"command": ["/bin/sh", "-c", script]})
    assert ran.status_code == 200, ran.text
    return ran.json()["exitCode"], base64.b64decode(ran.json()["stdoutBase64"]).decode()


def read(api: httpx.Client, name: str, path: str) -> str:
    answer = api.post(f"{INSTANCES}/{name}/guest/file-read", json={"path": path})
    assert answer.status_code == 200, answer.text
    return base64.b64decode(answer.json()["contentBase64"]).decode()


def boot_id(api: httpx.Client, name: str) -> str | None:
    ran = api.post(
        f"{INSTANCES}/{name}/guest/exec", json={"command": ["cat", "/proc/sys/kernel/random/boot_id"]}
    )
    return base64.b64decode(ran.json()["stdoutBase64"]).decode().strip() if ran.status_code == 200 else None


def booted(api: httpx.Client, name: str, before: str | None = None) -> str:
    """Wait until cloud-init finished in a boot of the guest other than `before` (a boot id); its address."""

    def done() -> bool:
        obj = api.get(f"{INSTANCES}/{name}").json()
        if conditions(obj).get("AgentConnected") != "True" or boot_id(api, name) in (None, before):
            return False
        ran = api.post(f"{INSTANCES}/{name}/guest/exec", json={"command": ["cloud-init", "status"]})
        out = base64.b64decode(ran.json().get("stdoutBase64", "")).decode() if ran.status_code == 200 else ""
        return "status: done" in out or "status: error" in out

    wait_for(done, timeout=BOOT_TIMEOUT, interval=2, what=f"{name}: cloud-init done")
    assert "status: done" in run(api, name, "cloud-init status")[1]

    def address() -> str | None:
        nics = api.get(f"{INSTANCES}/{name}").json()["status"].get("interfaces", [])
        return next((n["ipAddress"] for n in nics if n.get("ipAddress")), None)

    found: str = wait_for(address, timeout=60, interval=1, what=f"{name}'s address")
    assert ipaddress.ip_address(found) in ipaddress.ip_network("10.88.0.0/16")  # the NAT network
    return found


def keys_written(api: httpx.Client, name: str) -> None:
    seen: list[dict[str, Any]] = []

    def synchronized() -> bool:
        found = api.get(f"{INSTANCES}/{name}").json()["status"]["conditions"]
        seen[:] = [c for c in found if c["type"] == "AccessCredentialsSynchronized"]
        return bool(seen) and seen[0]["status"] == "True"

    try:
        wait_for(synchronized, timeout=60, interval=0.5, what="the agent's keys written")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen}") from None


def instance(name: str, volume: dict[str, Any], credentials: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "domain": {"resources": {"requests": {"memory": "1Gi", "cpu": "1"}}},
            "volumes": [{"name": "root", "containerDisk": {"image": IMAGE}}, {"name": "cloudinit", **volume}],
            "accessCredentials": credentials,
        },
    }


def credential(secret: str, method: dict[str, Any]) -> dict[str, Any]:
    return {"sshPublicKey": {"source": {"secret": {"secretName": secret}}, "propagationMethod": method}}


def test_a_cloud_image_configured_by_user_data_from_a_secret(api: httpx.Client, tmp_path: Path) -> None:
    own_key, own_public = keypair(tmp_path, "own")
    agent_key, agent_public = keypair(tmp_path, "agent")
    later_key, later_public = keypair(tmp_path, "later")
    user_data = f"""#cloud-config
hostname: cloudy
users:
  - name: corral
    shell: /bin/bash
    sudo: ALL=(ALL) NOPASSWD:ALL
    ssh_authorized_keys: ["{own_public}"]
bootcmd:
  - [sh, -c, "echo boot >> /var/tmp/boots; sync"]
runcmd:
  - [sh, -c, "echo first-boot >> /var/tmp/first-boot; sync"]
"""
    for name, values in (("cloudy-userdata", {"userdata": user_data}), ("cloudy-keys", {"k": agent_public})):
        assert api.post(SECRETS, json={"metadata": {"name": name}, "stringData": values}).status_code == 201
    body = instance(
        "cloudy",
        {"cloudInitNoCloud": {"userDataSecretRef": {"name": "cloudy-userdata"}}},
        [credential("cloudy-keys", {"qemuGuestAgent": {"users": ["corral"]}})],
    )
    assert api.post(INSTANCES, json=body).status_code == 201
    address = booted(api, "cloudy")
    assert run(api, "cloudy", "hostname")[1].strip() == "cloudy"
    assert read(api, "cloudy", "/var/tmp/first-boot") == "first-boot\n"

    login = ssh(address, "corral", own_key, "id -un; cat /var/tmp/first-boot")
    assert login.returncode == 0 and login.stdout == "corral\nfirst-boot\n", login.stderr
    keys_written(api, "cloudy")
    assert ssh(address, "corral", agent_key, "true").returncode == 0

    # The Secret changes: the running guest follows, without a reboot; the user-data key stays.
    replaced = api.put(
        f"{SECRETS}/cloudy-keys",
        json={"metadata": {"name": "cloudy-keys"}, "stringData": {"k": later_public}},
    )
    assert replaced.status_code == 200, replaced.text
    wait_for(lambda: ssh(address, "corral", later_key, "true").returncode == 0, timeout=60, what="new key")
    assert ssh(address, "corral", agent_key, "true").returncode == 255  # removed: refused
    assert ssh(address, "corral", own_key, "true").returncode == 0

    first_boot = boot_id(api, "cloudy")
    assert api.post(f"{INSTANCES}/cloudy/restart").status_code == 202
    booted(api, "cloudy", before=first_boot)
    assert read(api, "cloudy", "/var/tmp/boots") == "boot\nboot\n"  # it did boot again...
    assert read(api, "cloudy", "/var/tmp/first-boot") == "first-boot\n"  # ...as the same instance


def test_a_new_instance_on_a_config_drive_runs_first_boot_and_gets_its_key(
    api: httpx.Client, tmp_path: Path
) -> None:
    key, public = keypair(tmp_path, "drive")
    assert (
        api.post(SECRETS, json={"metadata": {"name": "drive-keys"}, "stringData": {"k": public}}).status_code
        == 201
    )
    user_data = '#cloud-config\nruncmd:\n  - [sh, -c, "echo first-boot >> /var/tmp/first-boot; sync"]\n'
    body = instance(
        "drive",
        {"cloudInitConfigDrive": {"userData": user_data}},
        [credential("drive-keys", {"configDrive": {}})],
    )
    assert api.post(INSTANCES, json=body).status_code == 201
    address = booted(api, "drive")
    assert read(api, "drive", "/var/tmp/first-boot") == "first-boot\n"
    login = ssh(address, "debian", key, "id -un")  # the image's default user gets the seed's keys
    assert login.returncode == 0 and login.stdout == "debian\n", login.stderr
