"""Secrets: the Kubernetes v1 shape, values sealed at rest (row and change log), readable by operators only,
immutable when asked, and checked where instances name them."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from app.db import Database
from app.models import EventRow, SecretRow
from app.sealing import Sealer, UnsealError, load_keys
from tests.api.test_resources import problem
from tests.conftest import bearer, make_token, vmi

SECRETS = "/v1/namespaces/default/secrets"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkR3x2cQ7b7Ghn4fqmlR5vZC9eR3Pmn7cG8B0l3w2vQ test@corral"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, **fields}


def test_a_secret_reads_back_in_the_kubernetes_shape(api: httpx.Client) -> None:
    body = secret("keys", data={"a": b64("one")}, stringData={"b": "two", "a": "wins"})
    created = api.post(SECRETS, json=body)
    assert created.status_code == 201, created.text
    obj = created.json()
    assert obj["apiVersion"] == "v1" and obj["kind"] == "Secret" and obj["type"] == "Opaque"
    assert obj["data"] == {"a": b64("wins"), "b": b64("two")}  # stringData merged in, and winning
    assert "stringData" not in obj and "spec" not in obj and "status" not in obj
    assert api.get(f"{SECRETS}/keys").json()["data"] == obj["data"]
    assert [item["data"] for item in api.get(SECRETS).json()["items"]] == [obj["data"]]
    patched = api.patch(
        f"{SECRETS}/keys",
        json={"stringData": {"c": "three"}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert set(patched.json()["data"]) == {"a", "b", "c"}
    again = api.put(f"{SECRETS}/keys", json={**patched.json(), "metadata": {"name": "keys"}})
    assert again.json()["metadata"]["resourceVersion"] == patched.json()["metadata"]["resourceVersion"]


def test_values_are_sealed_in_the_database_and_its_change_log(api: httpx.Client, db: Database) -> None:
    plain = "correct horse battery staple"
    assert api.post(SECRETS, json=secret("pw", stringData={"password": plain})).status_code == 201
    with db.read() as session:
        stored = json.dumps(session.scalars(select(SecretRow.spec)).one())
        events = json.dumps(
            [e.object for e in session.scalars(select(EventRow).where(EventRow.kind == "Secret"))]
        )
    for text in (stored, events):
        assert plain not in text and b64(plain) not in text
    assert "sealedData" in stored


def test_the_key_file_is_minted_once_and_rotation_keeps_old_values_readable(tmp_path: Any) -> None:
    path = tmp_path / "keys"
    first = load_keys(path)
    assert len(first) == 1 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_keys(path) == first
    sealed = Sealer(first).seal({"k": b"v"})
    rotated = Sealer([Fernet.generate_key(), *first])
    assert rotated.unseal(sealed) == {"k": b"v"}
    with pytest.raises(UnsealError, match="CORRAL_ENCRYPTION_KEY_FILE"):
        Sealer([Fernet.generate_key()]).unseal(sealed)


def test_only_operators_and_admins_read_secrets(api: httpx.Client, anon: httpx.Client) -> None:
    assert api.post(SECRETS, json=secret("creds", stringData={"token": "t0p"})).status_code == 201
    viewer = bearer(make_token(api, "viewer", [{"namespace": "default", "role": "viewer"}]))
    operator = bearer(make_token(api, "operator", [{"namespace": "default", "role": "operator"}]))
    problem(anon.get(SECRETS, headers=viewer), 403)
    problem(anon.get(f"{SECRETS}/creds", headers=viewer), 403)
    problem(anon.get(f"{SECRETS}?watch=true", headers=viewer), 403)
    assert anon.get(f"{SECRETS}/creds", headers=operator).json()["data"] == {"token": b64("t0p")}


def test_an_immutable_secret_keeps_its_values(api: httpx.Client) -> None:
    body = secret("fixed", stringData={"k": "v"}, immutable=True)
    assert api.post(SECRETS, json=body).status_code == 201
    merge = {"Content-Type": "application/merge-patch+json"}
    answer = problem(api.patch(f"{SECRETS}/fixed", json={"stringData": {"k": "w"}}, headers=merge), 422)
    assert answer["errors"][0]["field"] == "immutable"
    labelled = api.patch(f"{SECRETS}/fixed", json={"metadata": {"labels": {"a": "b"}}}, headers=merge)
    assert labelled.status_code == 200 and labelled.json()["metadata"]["labels"] == {"a": "b"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"data": {"k": "not base64!"}}, "data.k"),
        ({"data": {"bad/key": b64("v")}}, "data.bad/key"),
        ({"stringData": {"big": "x" * (1 << 20)}}, "data"),
        ({"type": "kubernetes.io/dockerconfigjson", "stringData": {"x": "{}"}}, "data"),
        (
            {"type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "{"}},
            "data[.dockerconfigjson]",
        ),
        ({"spec": {}}, "spec"),
    ],
)
def test_bad_secrets_are_422_naming_the_field(api: httpx.Client, fields: dict[str, Any], field: str) -> None:
    answer = problem(api.post(SECRETS, json=secret("bad", **fields)), 422)
    assert answer["errors"][0]["field"] == field
    problem(api.get(f"{SECRETS}/bad"), 404)


def test_a_deleted_secret_is_gone_at_once_and_watchers_see_it(api: httpx.Client) -> None:
    created = api.post(SECRETS, json=secret("brief", stringData={"k": "v"})).json()
    rv = int(created["metadata"]["resourceVersion"]) - 1
    assert api.delete(f"{SECRETS}/brief").status_code == 202
    problem(api.get(f"{SECRETS}/brief"), 404)
    with api.stream("GET", f"{SECRETS}?watch=true&resourceVersion={rv}") as stream:
        events = []
        for line in stream.iter_lines():
            events.append(json.loads(line))
            if events[-1]["type"] == "DELETED":
                break
    assert events[0]["type"] == "ADDED" and events[0]["object"]["data"] == {"k": b64("v")}
    assert "spec" not in events[-1]["object"]


def test_instances_name_secrets_that_exist(api: httpx.Client) -> None:
    instances = "/v1/namespaces/default/instances"
    body = vmi("keyed")
    body["spec"]["volumes"] = [{"name": "ci", "cloudInitNoCloud": {"userDataSecretRef": {"name": "nope"}}}]
    answer = problem(api.post(instances, json=body), 422)
    assert answer["errors"][0]["field"] == "spec.volumes[0].cloudInitNoCloud.userDataSecretRef.name"
    body["spec"]["volumes"][0]["cloudInitNoCloud"] = {"userData": "#cloud-config\n"}
    credential = {"source": {"secret": {"secretName": "absent"}}, "propagationMethod": {"noCloud": {}}}
    body["spec"]["accessCredentials"] = [{"sshPublicKey": credential}]
    answer = problem(api.post(instances, json=body), 422)
    assert answer["errors"][0]["field"] == "spec.accessCredentials[0].sshPublicKey.source.secret.secretName"
    assert api.post(SECRETS, json=secret("absent", stringData={"key": KEY})).status_code == 201
    assert api.post(instances, json=body).status_code == 201
    body["metadata"]["name"] = "unseeded"
    body["spec"]["volumes"] = []
    answer = problem(api.post(instances, json=body), 422)
    assert "no cloudInitNoCloud volume" in answer["detail"]
