"""The API conventions every resource shares, exercised on instances (namespaced) and nodes (cluster)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from app.clock import utc_now
from app.db import Database
from app.repositories.devices import DeviceRepository
from tests.conftest import bearer, make_token, vmi

MANIFESTS = Path(__file__).resolve().parents[2] / "examples"
INSTANCES = "/v1/namespaces/default/instances"
PROBLEM = "application/problem+json"


def problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


def count(api: httpx.Client, path: str = INSTANCES) -> int:
    return len(api.get(path).json()["items"])


@pytest.mark.parametrize(
    "manifest", ["vmi-guest-agent.yaml", "vmi-passthrough.yaml", "vmi-status-shape.yaml"]
)
def test_seed_manifests_are_accepted_unchanged_as_yaml_and_json(
    api: httpx.Client, db: Database, manifest: str
) -> None:
    if manifest == "vmi-passthrough.yaml":
        # Its GPU and FPGA must be permitted and its FPGA must exist: as a node would report it.
        with db.transaction() as session:
            facts = {"address": "0000:01:00.0", "vendorId": "10ee", "productId": "903f"}
            DeviceRepository(session).replace_inventory("n1", {"pci_0000_01_00_0": ("pci", facts)}, utc_now())
        rules = {
            "pciHostDevices": [
                {"pciVendorSelector": "10de:2330", "resourceName": "nvidia.com/gpu"},
                {"pciVendorSelector": "10ee:903f", "resourceName": "xilinx.com/fpga"},
            ]
        }
        assert api.put("/v1/config/permittedHostDevices", json=rules).status_code == 200
    raw = (MANIFESTS / manifest).read_bytes()
    created = api.post(INSTANCES, content=raw, headers={"Content-Type": "application/yaml"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["kind"] == "VirtualMachineInstance" and body["apiVersion"] == "kubevirt.io/v1"
    assert body["metadata"]["namespace"] == "default" and body["metadata"]["generation"] == 1
    assert body["status"]["phase"] == "Pending"  # status in the request is ignored
    api.delete(f"{INSTANCES}/test-vmi")
    as_json = api.post("/v1/namespaces/other/instances", json=yaml.safe_load(raw))
    assert as_json.status_code == 201, as_json.text
    assert as_json.json()["spec"] == body["spec"]


def test_create_read_replace_patch_delete(api: httpx.Client) -> None:
    created = api.post(INSTANCES, json=vmi("web", app="web"))
    assert created.status_code == 201
    obj = created.json()
    assert created.headers["Location"] == f"{INSTANCES}/web"
    assert created.headers["ETag"] == f'"{obj["metadata"]["resourceVersion"]}"'
    uid, rv = obj["metadata"]["uid"], int(obj["metadata"]["resourceVersion"])

    read = api.get(f"{INSTANCES}/web")
    assert read.status_code == 200 and read.json() == obj

    obj["spec"]["runStrategy"] = "Manual"
    replaced = api.put(f"{INSTANCES}/web", json=obj)
    assert replaced.status_code == 200, replaced.text
    new = replaced.json()
    assert new["spec"]["runStrategy"] == "Manual" and new["metadata"]["generation"] == 2
    assert int(new["metadata"]["resourceVersion"]) > rv and new["metadata"]["uid"] == uid

    patched = api.patch(
        f"{INSTANCES}/web",
        json={"metadata": {"labels": {"tier": "front", "app": None}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["metadata"]["labels"] == {"tier": "front"}
    assert patched.json()["metadata"]["generation"] == 2  # labels are not spec

    deleted = api.delete(f"{INSTANCES}/web")
    assert deleted.status_code == 202
    assert deleted.json()["metadata"]["deletionTimestamp"]
    problem(api.put(f"{INSTANCES}/web", json=patched.json()), 409)  # no edits while terminating


def test_patch_accepts_yaml_and_rejects_plain_json(api: httpx.Client) -> None:
    api.post(INSTANCES, json=vmi("p1"))
    ok = api.patch(
        f"{INSTANCES}/p1",
        content=b"spec:\n  runStrategy: Halted\n",
        headers={"Content-Type": "application/yaml"},
    )
    assert ok.status_code == 200 and ok.json()["spec"]["runStrategy"] == "Halted"
    problem(api.patch(f"{INSTANCES}/p1", json={"spec": {}}), 415)


def test_generate_name(api: httpx.Client) -> None:
    body = vmi("x")
    body["metadata"] = {"generateName": "batch-"}
    first, second = api.post(INSTANCES, json=body).json(), api.post(INSTANCES, json=body).json()
    assert first["metadata"]["name"].startswith("batch-") and len(first["metadata"]["name"]) == 11
    assert first["metadata"]["name"] != second["metadata"]["name"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"metadata": {"name": "a"}, "spec": {"bogus": 1}}, "spec.bogus"),
        (
            {"metadata": {"name": "a"}, "spec": {"domain": {"devices": {"gpus": [{"name": "g"}]}}}},
            "spec.domain.devices.gpus[0].deviceName",
        ),
        ({"metadata": {"name": "a"}, "spec": {"runStrategy": "Sometimes"}}, "spec.runStrategy"),
        (
            {"metadata": {"name": "a"}, "spec": {"domain": {"resources": {"requests": {"memory": "lots"}}}}},
            "spec.domain.resources.requests.memory",
        ),
        ({"metadata": {"name": "a"}, "spec": {"domain": {"cpu": {"cores": "two"}}}}, "spec.domain.cpu.cores"),
        ({"metadata": {"name": "Bad_Name"}}, "metadata.name"),
        ({"metadata": {"name": "a" * 64}}, "metadata.name"),
        ({"metadata": {"name": "a", "labels": {"k": "v" * 64}}}, "metadata.labels"),
        ({"metadata": {"name": "a", "ownerReferences": []}}, "metadata.ownerReferences"),
        ({"metadata": {"name": "a", "annotations": {"note": "nul\u0000byte"}}}, "metadata.annotations"),
        ({"metadata": None}, "metadata"),
        ({"metadata": {"name": "a"}, "spec": None}, "spec"),
        ({"metadata": {"name": "a"}, "extra": True}, "extra"),
        ({"metadata": {"name": "a"}, "apiVersion": "kubevirt.io/v2"}, "apiVersion"),
        ({"metadata": {"name": "a"}, "kind": "Node"}, "kind"),
        ({"metadata": {"name": "a", "namespace": "elsewhere"}}, "metadata.namespace"),
        ({"metadata": {}}, "metadata.name"),
        ({"metadata": {"name": "a"}, "spec": {"volumes": [{"name": "v"}]}}, "spec.volumes[0]"),
    ],
)
def test_invalid_bodies_get_422_naming_the_field_and_write_nothing(
    api: httpx.Client, body: dict, field: str
) -> None:
    before = api.get(INSTANCES).json()["metadata"]["resourceVersion"]
    body = problem(api.post(INSTANCES, json=body), 422)
    assert any(e["field"].startswith(field) for e in body["errors"]), body["errors"]
    after = api.get(INSTANCES).json()
    assert after["items"] == [] and after["metadata"]["resourceVersion"] == before


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"metadata": {"name": "a"', "application/json", 400),
        (b"metadata: [unclosed", "application/yaml", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"- just\n- a list\n", "application/yaml", 400),
        (b"name=a", "application/x-www-form-urlencoded", 415),
        (b"42", "application/json", 400),
    ],
)
def test_malformed_bodies(api: httpx.Client, content: bytes, content_type: str, status: int) -> None:
    problem(api.post(INSTANCES, content=content, headers={"Content-Type": content_type}), status)
    assert count(api) == 0


def test_bad_names_and_query_parameters(api: httpx.Client) -> None:
    problem(api.get(f"{INSTANCES}/Not_A_Name"), 422)
    problem(api.get("/v1/namespaces/UPPER/instances"), 422)
    problem(api.get(INSTANCES, params={"limit": "many"}), 422)
    problem(api.get(INSTANCES, params={"limit": 0}), 422)
    problem(api.get(INSTANCES, params={"labelSelector": "a in (b"}), 400)
    problem(api.get(INSTANCES, params={"continue": "garbage!"}), 400)
    problem(api.get(f"{INSTANCES}/missing"), 404)
    problem(api.get("/v1/no-such-thing"), 404)


def test_duplicate_name_is_409(api: httpx.Client) -> None:
    assert api.post(INSTANCES, json=vmi("dup")).status_code == 201
    body = problem(api.post(INSTANCES, json=vmi("dup")), 409)
    assert body["reason"] == "AlreadyExists"


def test_stale_resource_version_is_409_by_body_and_by_if_match(api: httpx.Client) -> None:
    obj = api.post(INSTANCES, json=vmi("cas")).json()
    stale = dict(obj)
    fresh = api.patch(
        f"{INSTANCES}/cas",
        json={"spec": {"runStrategy": "Halted"}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).json()
    body = problem(api.put(f"{INSTANCES}/cas", json=stale), 409)
    assert body["reason"] == "StaleResourceVersion"
    problem(
        api.delete(f"{INSTANCES}/cas", headers={"If-Match": f'"{obj["metadata"]["resourceVersion"]}"'}), 409
    )
    problem(
        api.patch(
            f"{INSTANCES}/cas",
            json={"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]}},
            headers={"Content-Type": "application/merge-patch+json"},
        ),
        409,
    )
    assert api.get(f"{INSTANCES}/cas").json() == fresh  # nothing written
    ok = api.put(
        f"{INSTANCES}/cas", json=fresh, headers={"If-Match": f'"{fresh["metadata"]["resourceVersion"]}"'}
    )
    assert ok.status_code == 200


def test_patch_cannot_rename_or_break_the_spec(api: httpx.Client) -> None:
    api.post(INSTANCES, json=vmi("keep"))
    headers = {"Content-Type": "application/merge-patch+json"}
    problem(api.patch(f"{INSTANCES}/keep", json={"metadata": {"name": "other"}}, headers=headers), 422)
    body = problem(api.patch(f"{INSTANCES}/keep", json={"spec": {"runStrategy": 5}}, headers=headers), 422)
    assert body["errors"][0]["field"] == "spec.runStrategy"
    assert api.get(f"{INSTANCES}/keep").json()["metadata"]["generation"] == 1


def test_list_label_selectors_and_paging(api: httpx.Client) -> None:
    for i in range(7):
        api.post(INSTANCES, json=vmi(f"vm-{i}", tier="web" if i % 2 else "db", idx=str(i)))
    names = lambda r: [o["metadata"]["name"] for o in r.json()["items"]]  # noqa: E731
    assert names(api.get(INSTANCES, params={"labelSelector": "tier=web"})) == ["vm-1", "vm-3", "vm-5"]
    assert names(api.get(INSTANCES, params={"labelSelector": "tier!=web,idx in (0,2,3)"})) == ["vm-0", "vm-2"]
    assert names(api.get(INSTANCES, params={"labelSelector": "!tier"})) == []
    assert len(names(api.get(INSTANCES, params={"labelSelector": "idx notin (1)"}))) == 6

    seen, token, pages = [], None, 0
    while True:
        params = {"limit": 3, "labelSelector": "tier"} | ({"continue": token} if token else {})
        page = api.get(INSTANCES, params=params).json()
        seen += [o["metadata"]["name"] for o in page["items"]]
        pages += 1
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == [f"vm-{i}" for i in range(7)] and pages == 3


def test_namespaces_are_separate(api: httpx.Client) -> None:
    api.post("/v1/namespaces/team-a/instances", json=vmi("same"))
    api.post("/v1/namespaces/team-b/instances", json=vmi("same"))
    assert count(api, "/v1/namespaces/team-a/instances") == 1
    api.delete("/v1/namespaces/team-a/instances/same")
    assert "deletionTimestamp" in api.get("/v1/namespaces/team-a/instances/same").json()["metadata"]
    assert "deletionTimestamp" not in api.get("/v1/namespaces/team-b/instances/same").json()["metadata"]


def test_every_namespace_at_once_for_a_cluster_wide_viewer(api: httpx.Client, anon: httpx.Client) -> None:
    for namespace in ("team-a", "team-b"):
        api.post(f"/v1/namespaces/{namespace}/instances", json=vmi("same", tier="web"))
    api.post("/v1/namespaces/team-b/instances", json=vmi("other"))
    everywhere = api.get("/v1/instances", params={"labelSelector": "tier=web"}).json()
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in everywhere["items"]] == [
        ("team-a", "same"),
        ("team-b", "same"),
    ]
    first = api.get("/v1/instances", params={"limit": 2}).json()
    rest = api.get("/v1/instances", params={"continue": first["metadata"]["continue"]}).json()
    assert [i["metadata"]["name"] for i in first["items"] + rest["items"]] == ["same", "other", "same"]
    # A namespace's own viewer sees its namespace, not every one (Kubernetes answers the same).
    viewer = bearer(make_token(api, "a-viewer", [{"namespace": "team-a", "role": "viewer"}]))
    assert problem(anon.get("/v1/instances", headers=viewer), 403)["detail"].endswith("cluster-wide")
    with api.stream("GET", "/v1/instances", params={"watch": "true", "timeoutSeconds": 1}) as stream:
        names = {json.loads(line)["object"]["metadata"]["namespace"] for line in stream.iter_lines() if line}
    assert names == {"team-a", "team-b"}


def test_nodes_are_cluster_scoped_and_validated(api: httpx.Client) -> None:
    created = api.post(
        "/v1/nodes", json={"metadata": {"name": "n2"}, "spec": {"uri": "qemu+tcp://10.0.0.2/system"}}
    )
    assert created.status_code == 201, created.text
    assert "namespace" not in created.json()["metadata"]
    assert created.headers["Location"] == "/v1/nodes/n2"
    # libvirt's test driver inside libvirtd: one state for every client (several workers share the host)
    shared = api.post("/v1/nodes", json={"metadata": {"name": "n5"}, "spec": {"uri": "test+unix:///default"}})
    assert shared.status_code == 201, shared.text
    for uri in (
        "http://example.com",
        "test+http:///default",
        "test+unix://",
        "qemu+tcp://host/nowhere",
        "qemu:///system extra",
        "test://",
        "test:///default\u0000",
        "qemu:///systém",
    ):
        body = problem(api.post("/v1/nodes", json={"metadata": {"name": "bad"}, "spec": {"uri": uri}}), 422)
        assert body["errors"][0]["field"] == "spec.uri"
    problem(
        api.post(
            "/v1/nodes",
            json={"metadata": {"name": "n3", "namespace": "default"}, "spec": {"uri": "test:///default"}},
        ),
        422,
    )
    problem(
        api.post(
            "/v1/nodes",
            json={"metadata": {"name": "n4"}, "spec": {"uri": "test:///default", "virtType": "xen"}},
        ),
        422,
    )


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/nodes", "GET, POST"),
        ("DELETE", "/v1/tokens", "GET, POST"),
        ("PATCH", "/v1/nodes/local/drain", "DELETE, GET, POST"),
        ("POST", "/v1/namespaces/default/instances/x", "DELETE, GET, PATCH, PUT"),
    ],
)
def test_405_names_every_allowed_method(api: httpx.Client, method: str, path: str, allowed: str) -> None:
    answer = api.request(method, path)
    assert answer.status_code == 405 and answer.headers["Allow"] == allowed
    body = problem(answer, 405)
    assert body["title"] == "Method Not Allowed" and allowed in body["detail"]


PCI_RULE = {"pciVendorSelector": "10de:1eb8", "resourceName": "nvidia.com/T4", "externalResourceProvider": 0}
NODE = {"metadata": {"name": "n"}, "spec": {"uri": "test:///default", "unschedulable": "yes"}}
POOL = {"metadata": {"name": "p"}, "spec": {"template": {}, "paused": 1}}


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        (
            "PUT",
            "/v1/config/permittedHostDevices",
            {"pciHostDevices": [PCI_RULE]},
            "pciHostDevices[0].externalResourceProvider",
        ),
        ("POST", "/v1/nodes", NODE, "spec.unschedulable"),
        ("POST", "/v1/namespaces/default/pools", POOL, "spec.paused"),
    ],
)
def test_booleans_must_be_booleans(
    api: httpx.Client, method: str, path: str, body: object, field: str
) -> None:
    answer = problem(api.request(method, path, json=body), 422)
    assert answer["errors"][0]["field"] == field
