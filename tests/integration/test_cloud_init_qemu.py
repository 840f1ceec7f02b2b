"""cloud-init seeds on real QEMU guests: the guest finds the NoCloud (`cidata`) or ConfigDrive (`config-2`)
CD-ROM, reads its instance-id (the instance's uid, the same after a restart) and its user data."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from tests.conftest import conditions, wait_for

INSTANCES = "/v1/namespaces/default/instances"
USER_DATA = "#cloud-config\nhostname: configured\nruncmd:\n  - echo hello > /run/hello\n"


def agent_up(api: httpx.Client, name: str, after: str | None = None) -> None:
    """Wait for the guest agent (of a run that started after `after`, a phase transition stamp)."""

    def up() -> bool:
        obj = api.get(f"{INSTANCES}/{name}").json()
        stamps = [s["phaseTransitionTimestamp"] for s in obj["status"].get("phaseTransitionTimestamps", [])]
        fresh = after is None or (stamps and stamps[-1] > after)
        return bool(fresh) and conditions(obj).get("AgentConnected") == "True"

    wait_for(up, timeout=90, interval=0.2, what=f"{name}'s guest agent")


def read_seed(api: httpx.Client, name: str, path: str) -> str:
    mount = "grep -q ' /mnt/seed ' /proc/mounts || mount -t iso9660 -o ro /dev/sr0 /mnt/seed"
    script = f"mkdir -p /mnt/seed && ({mount}) && cat /mnt/seed/{path}"
    ran = api.post(f"{INSTANCES}/{name}/guest/exec", json={"command": ["/bin/sh", "-c", script]})
    assert ran.status_code == 200 and ran.json()["exitCode"] == 0, ran.text
    return base64.b64decode(ran.json()["stdoutBase64"]).decode()


def create(api: httpx.Client, name: str, kind: str, source: dict[str, Any]) -> str:
    spec = {
        "domain": {"resources": {"requests": {"memory": "256Mi"}}},
        "volumes": [{"name": "cloudinitdisk", kind: source}],
    }
    created = api.post(INSTANCES, json={"metadata": {"name": name}, "spec": spec})
    assert created.status_code == 201, created.text
    return str(created.json()["metadata"]["uid"])


@pytest.mark.qemu
def test_the_guest_reads_its_no_cloud_seed_and_a_restart_keeps_the_instance_id(api: httpx.Client) -> None:
    uid = create(
        api, "configured", "cloudInitNoCloud", {"userData": USER_DATA, "networkData": "version: 2\n"}
    )
    agent_up(api, "configured")
    assert read_seed(api, "configured", "meta-data") == f"instance-id: {uid}\nlocal-hostname: configured\n"
    assert read_seed(api, "configured", "user-data") == USER_DATA
    assert read_seed(api, "configured", "network-config") == "version: 2\n"
    before = api.get(f"{INSTANCES}/configured").json()["status"]["phaseTransitionTimestamps"][-1]
    assert api.post(f"{INSTANCES}/configured/restart").status_code == 202
    agent_up(api, "configured", after=before["phaseTransitionTimestamp"])
    assert read_seed(api, "configured", "meta-data").startswith(f"instance-id: {uid}\n")  # the same instance


@pytest.mark.qemu
def test_the_guest_reads_its_config_drive(api: httpx.Client) -> None:
    encoded = base64.b64encode(b"#!/bin/sh\necho from-config-drive\n").decode()
    uid = create(api, "drive", "cloudInitConfigDrive", {"userDataBase64": encoded})
    agent_up(api, "drive")
    meta = json.loads(read_seed(api, "drive", "openstack/latest/meta_data.json"))
    assert meta == {"uuid": uid, "hostname": "drive", "name": "drive"}
    assert read_seed(api, "drive", "openstack/latest/user_data") == "#!/bin/sh\necho from-config-drive\n"
