"""The registry client's protocol logic against scripted answers (httpx's MockTransport): token and Basic
challenges, indexes by platform, digest checks. The real registry (docker-registry) covers the rest in
tests/controllers/test_image_pulls.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from pathlib import Path

import httpx
import pytest

from app.disks.reference import InvalidReference, Reference, candidates, is_qualified
from app.disks.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    Blob,
    Credentials,
    DigestMismatch,
    ManifestUnknown,
    RegistryClient,
    RegistryError,
)

REF = Reference("reg.example", "disks/app", "1")
LAYER = b"layer bytes"
LAYER_DIGEST = "sha256:" + hashlib.sha256(LAYER).hexdigest()
MANIFEST = json.dumps(
    {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [{"digest": LAYER_DIGEST, "size": len(LAYER)}]}
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def client(handler: object, **options: object) -> RegistryClient:
    return RegistryClient(transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]


def test_a_bearer_challenge_is_answered_with_a_token_for_the_repository() -> None:
    asked: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        if request.url.host == "auth.example":
            assert request.url.params["scope"] == "repository:disks/app:pull"
            assert request.url.params["service"] == "reg"
            assert request.headers["authorization"] == "Basic " + base64.b64encode(b"me:secret").decode()
            return httpx.Response(200, json={"token": "t0k"})
        if request.headers.get("authorization") != "Bearer t0k":
            challenge = (
                'Bearer realm="https://auth.example/token",service="reg",scope="repository:disks/app:pull"'
            )
            return httpx.Response(401, headers={"www-authenticate": challenge})
        return httpx.Response(200, content=MANIFEST, headers={"content-type": OCI_MANIFEST})

    logins = Credentials({"reg.example/disks": ("me", "secret")})  # the most specific key that matches
    manifest = client(answer, credentials=logins).manifest(REF)
    assert manifest.digest == MANIFEST_DIGEST and manifest.layers == (Blob(LAYER_DIGEST, len(LAYER), ""),)
    assert [r.url.host for r in asked] == ["reg.example", "auth.example", "reg.example"]


def test_basic_challenge_and_a_refused_login() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") == "Basic " + base64.b64encode(b"me:right").decode():
            return httpx.Response(200, content=MANIFEST, headers={"content-type": OCI_MANIFEST})
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="reg"'}, json={"errors": []})

    assert client(answer, credentials=Credentials({"reg.example": ("me", "right")})).manifest(REF).layers
    with pytest.raises(RegistryError, match="401"):
        client(answer, credentials=Credentials({"reg.example": ("me", "wrong")})).manifest(REF)
    with pytest.raises(RegistryError, match="401"):
        client(answer).manifest(REF)  # no login at all


def test_an_index_is_followed_to_the_platform_or_refused_naming_what_it_offers() -> None:
    index = json.dumps(
        {
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": MANIFEST_DIGEST, "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
    ).encode()

    def answer(request: httpx.Request) -> httpx.Response:
        target = request.url.path.rsplit("/", 1)[-1]
        body = MANIFEST if target == MANIFEST_DIGEST else index
        return httpx.Response(200, content=body)

    assert client(answer).manifest(REF).digest == MANIFEST_DIGEST
    with pytest.raises(RegistryError, match=r"no linux/s390x image \(offered: linux/amd64, linux/arm64\)"):
        client(answer, platform=("linux", "s390x")).manifest(REF)


def test_digests_are_checked() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if "/blobs/" in request.url.path:
            return httpx.Response(200, content=b"other bytes")
        return httpx.Response(200, content=MANIFEST)

    pinned = REF.with_digest("sha256:" + "0" * 64)
    with pytest.raises(DigestMismatch, match="manifest digest"):
        client(answer).manifest(pinned)
    with pytest.raises(DigestMismatch, match=f"is not the {LAYER_DIGEST}"):
        client(answer).fetch_blob(REF, Blob(LAYER_DIGEST, 11, ""), io.BytesIO(), lambda _n: None)
    with pytest.raises(DigestMismatch, match="over its 4 bytes"):
        client(answer).fetch_blob(REF, Blob(LAYER_DIGEST, 4, ""), io.BytesIO(), lambda _n: None)


def test_unknown_manifests_are_told_apart_from_other_failures() -> None:
    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            404, json={"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
        )

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="boom")

    with pytest.raises(ManifestUnknown, match="MANIFEST_UNKNOWN: manifest unknown"):
        client(missing).manifest(REF)
    with pytest.raises(RegistryError, match="500") as raised:
        client(broken).manifest(REF)
    assert not isinstance(raised.value, ManifestUnknown)


def test_references_and_short_names() -> None:
    search = ["127.0.0.1:5000/containerdisks", "docker.io"]
    assert [str(r) for r in candidates("ubuntu:22.04", search)] == [
        "127.0.0.1:5000/containerdisks/ubuntu:22.04",
        "docker.io/library/ubuntu:22.04",
    ]
    assert [str(r) for r in candidates("quay.io/containerdisks/fedora", search)] == [
        "quay.io/containerdisks/fedora:latest"
    ]
    digest = "sha256:" + "b" * 64
    [pinned] = candidates(f"localhost:5000/app@{digest}", search)
    assert (pinned.registry, pinned.repository, pinned.tag, pinned.target) == (
        "localhost:5000",
        "app",
        None,
        digest,
    )
    assert candidates("busybox", ["docker.io"])[0].api_host == "registry-1.docker.io"
    assert is_qualified("localhost/app") and not is_qualified("corral/test-guest")
    for bad in ("UPPER/case", "a//b", "x:", "@sha256:abc"):
        with pytest.raises(InvalidReference):
            candidates(bad, search)


def test_logins_from_a_containers_auth_file(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(
        json.dumps(
            {
                "auths": {
                    "https://reg.example": {"auth": base64.b64encode(b"me:pw:with:colons").decode()},
                    "reg.example/team": {"username": "team", "password": "t"},
                }
            }
        )
    )
    logins = Credentials.from_file(path)
    assert logins.for_reference(Reference("reg.example", "other/x")) == ("me", "pw:with:colons")
    assert logins.for_reference(Reference("reg.example", "team/x")) == ("team", "t")
    assert logins.for_reference(Reference("elsewhere", "x")) is None
    assert Credentials.from_file(tmp_path / "absent.json").auths == {}
