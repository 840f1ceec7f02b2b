"""cloud-init volumes on libvirt's test driver: the seed is made in the node's pool and attached as a CD-ROM,
removed with the instance; bad input answers 422 naming the field. A real guest reading its seed is in
tests/integration/test_cloud_init_qemu.py."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from typing import Any

import httpx
import pycdlib
import pytest
import yaml

from app.controllers.credentials import SecretMissing, agent_keys
from app.controllers.definitions import Owner, seed_of
from app.disks.cloudinit import Seed, build_iso
from app.schemas.instance import InstanceSpec
from app.virt.driver import STORAGE_POOL, Hypervisor
from tests.conftest import wait_for
from tests.controllers.test_instances import BASE, instance, wait_phase


def seeded(name: str, **source: Any) -> dict[str, Any]:
    kind = source.pop("kind", "cloudInitNoCloud")
    return instance(name, volumes=[{"name": "cloudinit", kind: source}])


def test_the_seed_is_a_cdrom_made_in_the_pool_and_removed_with_the_instance(
    api: httpx.Client, hv: Hypervisor
) -> None:
    api.post(BASE, json=seeded("seeded", userData="#cloud-config\nhostname: seeded\n"))
    running = wait_phase(api, "seeded", "Running")
    uid = running["metadata"]["uid"]
    seed = hv.volume_path(STORAGE_POOL, f"{uid}-cloudinit.iso")
    assert seed is not None
    disks = ET.fromstring(hv.domain_xml(running["status"]["domainName"])).findall("devices/disk")
    cdrom = next(d for d in disks if d.get("device") == "cdrom")
    assert cdrom.find("source").get("file") == seed  # type: ignore[union-attr]
    assert cdrom.find("target").get("bus") == "scsi" and cdrom.find("readonly") is not None  # type: ignore[union-attr]
    api.delete(f"{BASE}/seeded")
    wait_for(lambda: api.get(f"{BASE}/seeded").status_code == 404, what="deleted")
    assert hv.volume_path(STORAGE_POOL, f"{uid}-cloudinit.iso") is None


@pytest.mark.parametrize(
    ("volumes", "field", "said"),
    [
        (
            [{"name": "c", "cloudInitNoCloud": {"userData": "x" * (256 * 1024 + 1)}}],
            "cloudInitNoCloud",
            "limit",
        ),
        ([{"name": "c", "cloudInitNoCloud": {"networkData": "version: [2"}}], "cloudInitNoCloud", "not YAML"),
        ([{"name": "c", "cloudInitNoCloud": {"networkData": "- a list"}}], "cloudInitNoCloud", "mapping"),
        (
            [{"name": "c", "cloudInitConfigDrive": {"networkData": "{nope"}}],
            "cloudInitConfigDrive",
            "not JSON",
        ),
        ([{"name": "c", "cloudInitNoCloud": {"userDataBase64": "***"}}], "cloudInitNoCloud", "base64"),
        (
            [{"name": "c", "cloudInitNoCloud": {"userData": "a", "userDataBase64": "YQ=="}}],
            "cloudInitNoCloud",
            "one of",
        ),
        (
            [{"name": "c", "cloudInitNoCloud": {"userDataSecretRef": {"name": "s"}}}],
            "spec.volumes[0].cloudInitNoCloud.userDataSecretRef.name",
            "no Secret named",
        ),
        ([{"name": "c", "cloudInitNoCloud": {}}], "cloudInitNoCloud", "give userData"),
        (
            [
                {"name": "a", "cloudInitNoCloud": {"userData": "a"}},
                {"name": "b", "cloudInitConfigDrive": {"userData": "b"}},
            ],
            "spec",
            "at most one",
        ),
    ],
)
def test_bad_cloud_init_answers_422_naming_the_field(
    api: httpx.Client, volumes: list[dict[str, Any]], field: str, said: str
) -> None:
    answer = api.post(BASE, json=instance("bad", volumes=volumes))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert field in answer.text and said in answer.text


def read_iso(image: bytes) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(image))
    found: dict[str, bytes] = {}
    for root, _dirs, files in iso.walk(rr_path="/"):
        for name in files:
            out = io.BytesIO()
            path = f"{root.rstrip('/')}/{name}"
            iso.get_file_from_iso_fp(out, rr_path=path)
            found[path.lstrip("/")] = out.getvalue()
    iso.close()
    return found


def test_seed_images_hold_what_cloud_init_reads() -> None:
    no_cloud = read_iso(build_iso(Seed("noCloud", "uid-1", "web", b"#cloud-config\n", b"version: 2\n")))
    assert no_cloud == {
        "meta-data": b"instance-id: uid-1\nlocal-hostname: web\n",
        "user-data": b"#cloud-config\n",
        "network-config": b"version: 2\n",
    }
    drive = read_iso(build_iso(Seed("configDrive", "uid-2", "db", b"#!/bin/sh\n", b'{"links": []}')))
    assert json.loads(drive["openstack/latest/meta_data.json"]) == {
        "uuid": "uid-2",
        "hostname": "db",
        "name": "db",
    }
    assert drive["openstack/latest/user_data"] == b"#!/bin/sh\n"
    assert drive["openstack/latest/network_data.json"] == b'{"links": []}'


KEYS = ("ssh-ed25519 AAAAC3Nza1 a@x", "ssh-ed25519 AAAAC3Nza2 b@x")


def test_seeds_take_documents_and_keys_from_secrets() -> None:
    spec = InstanceSpec.model_validate(
        {
            "volumes": [{"name": "ci", "cloudInitConfigDrive": {"userDataSecretRef": {"name": "ud"}}}],
            "accessCredentials": [
                {"sshPublicKey": {"source": {"secret": {"secretName": s}}, "propagationMethod": method}}
                for s, method in (
                    ("keys", {"configDrive": {}}),
                    ("agent-keys", {"qemuGuestAgent": {"users": ["ops"]}}),
                )
            ],
        }
    )
    owner = Owner("ns", "vm", "uid-3", "dom", "qemu")
    secrets = {
        "ud": {"userData": b"#cloud-config\nhostname: x\n"},
        "keys": {"a": f"{KEYS[0]}\n# a comment\n\n{KEYS[1]}\n".encode(), "b": KEYS[0].encode()},
    }
    found = seed_of(owner, spec, secrets)
    assert found is not None
    name, seed = found
    assert name == "ci" and seed.user_data == b"#cloud-config\nhostname: x\n" and seed.public_keys == KEYS
    meta = json.loads(read_iso(build_iso(seed))["openstack/latest/meta_data.json"])
    assert meta["public_keys"] == {"key0": KEYS[0], "key1": KEYS[1]}
    with pytest.raises(SecretMissing, match="'keys'"):
        seed_of(owner, spec, {"ud": secrets["ud"]})
    with pytest.raises(SecretMissing, match="userdata or userData"):
        seed_of(owner, spec, {**secrets, "ud": {"other": b""}})
    assert agent_keys(spec, secrets) == {"ops": []}  # a missing Secret revokes what it gave
    assert agent_keys(spec, {**secrets, "agent-keys": {"k": KEYS[1].encode()}}) == {"ops": [KEYS[1]]}


def test_no_cloud_meta_data_is_yaml_with_the_keys() -> None:
    meta = read_iso(build_iso(Seed("noCloud", "uid-4", "web", public_keys=KEYS)))["meta-data"]
    assert yaml.safe_load(meta) == {
        "instance-id": "uid-4",
        "local-hostname": "web",
        "public-keys": list(KEYS),
    }
