"""A pull-only client of the OCI distribution (registry v2) API: manifests, blobs, token auth.

What it guarantees: every byte it hands on was checked against the digest that named it (a manifest asked
for by digest, every blob), so a registry or a proxy in between cannot substitute content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from app.disks.reference import Reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEXES = (OCI_INDEX, DOCKER_LIST)
_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
_CHUNK = 1 << 20
_MAX_MANIFEST = 4 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(Exception):
    """The registry could not give what was asked; the message carries its answer."""


class ManifestUnknown(RegistryError):
    """No such repository, tag or digest (the next search registry may have it)."""


class DigestMismatch(RegistryError):
    pass


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Manifest:
    reference: Reference  # pinned: its digest is the manifest's
    layers: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        assert self.reference.digest is not None
        return self.reference.digest


class Credentials:
    """Logins from a containers-auth.json file (`{"auths": {"host[/path]": {"auth": base64(user:pass)}}}`,
    the format of podman, skopeo and docker's config.json); the most specific key wins."""

    def __init__(self, auths: Mapping[str, tuple[str, str]] | None = None) -> None:
        self.auths = dict(auths or {})

    @classmethod
    def from_file(cls, path: Path | None) -> Credentials:
        if path is None or not path.is_file():
            return cls()
        return cls.from_document(json.loads(path.read_text()))

    @classmethod
    def from_document(cls, document: Any) -> Credentials:
        """Logins from a parsed containers-auth.json / .dockerconfigjson document."""
        if not isinstance(document, dict):
            return cls()
        auths: dict[str, tuple[str, str]] = {}
        entries = document.get("auths")
        for key, entry in (entries if isinstance(entries, dict) else {}).items():
            if not isinstance(entry, dict):
                continue  # a document from a user's Secret: what cannot be a login is skipped
            try:
                if entry.get("auth"):
                    user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
                else:
                    user, password = str(entry.get("username", "")), str(entry.get("password", ""))
            except (binascii.Error, UnicodeDecodeError):
                continue
            auths[key.removeprefix("https://").removeprefix("http://").rstrip("/")] = (user, password)
        return cls(auths)

    def overridden_by(self, other: Credentials) -> Credentials:
        """These logins with `other`'s over them (an instance's pull Secret over the node's file)."""
        return Credentials({**self.auths, **other.auths})

    def for_reference(self, reference: Reference) -> tuple[str, str] | None:
        path = f"{reference.registry}/{reference.repository}"
        while True:
            if path in self.auths:
                return self.auths[path]
            if "/" not in path:
                return None
            path = path.rsplit("/", 1)[0]


class RegistryClient:
    def __init__(
        self,
        *,
        insecure: frozenset[str] = frozenset(),
        credentials: Credentials | None = None,
        platform: tuple[str, str] = ("linux", "amd64"),
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.insecure = insecure  # hosts spoken to over plain HTTP
        self.credentials = credentials or Credentials()
        self.platform = platform
        self._http = httpx.Client(timeout=timeout, follow_redirects=True, transport=transport)
        self._tokens: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        self._http.close()

    # -- manifests -----------------------------------------------------------------------------------
    def manifest(self, reference: Reference) -> Manifest:
        """The image manifest for this platform, following an index (manifest list). Raises
        ManifestUnknown when the registry has no such image, RegistryError otherwise."""
        body, media_type, digest = self._manifest_document(reference, reference.target)
        if media_type in _INDEXES:
            digest = self._platform_manifest(reference, body)
            body, media_type, digest = self._manifest_document(reference, digest)
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise RegistryError(f"{reference}: unsupported manifest type {media_type!r}")
        layers = tuple(
            Blob(str(layer["digest"]), int(layer["size"]), str(layer.get("mediaType", "")))
            for layer in body.get("layers", [])
        )
        if not layers:
            raise RegistryError(f"{reference}: the image has no layers")
        return Manifest(reference.with_digest(digest), layers)

    def _manifest_document(self, reference: Reference, target: str) -> tuple[dict[str, Any], str, str]:
        response = self._get(reference, f"manifests/{target}", headers={"Accept": _ACCEPT})
        raw = response.content
        if len(raw) > _MAX_MANIFEST:
            raise RegistryError(f"{reference}: manifest larger than {_MAX_MANIFEST} bytes")
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if target.startswith("sha256:") and digest != target:
            raise DigestMismatch(f"{reference}: manifest digest {digest} is not the {target} asked for")
        try:
            body = json.loads(raw)
        except ValueError:
            raise RegistryError(f"{reference}: the manifest is not JSON") from None
        media_type = str(body.get("mediaType") or response.headers.get("content-type", "").split(";")[0])
        return body, media_type, digest

    def _platform_manifest(self, reference: Reference, index: dict[str, Any]) -> str:
        os_name, arch = self.platform
        for entry in index.get("manifests", []):
            platform = entry.get("platform") or {}
            if platform.get("os") == os_name and platform.get("architecture") == arch:
                return str(entry["digest"])
        offered = sorted(
            f"{(e.get('platform') or {}).get('os')}/{(e.get('platform') or {}).get('architecture')}"
            for e in index.get("manifests", [])
        )
        raise RegistryError(f"{reference}: no {os_name}/{arch} image (offered: {', '.join(offered)})")

    # -- blobs ---------------------------------------------------------------------------------------
    def fetch_blob(
        self, reference: Reference, blob: Blob, sink: BinaryIO, progress: Callable[[int], None]
    ) -> None:
        """Write the blob to `sink`, calling `progress(bytes so far)`; its digest and size are checked."""
        algorithm, _, expected = blob.digest.partition(":")
        if algorithm != "sha256":
            raise RegistryError(f"{reference}: unsupported digest algorithm {algorithm!r}")
        url = self._url(reference, f"blobs/{blob.digest}")
        hasher, done = hashlib.sha256(), 0
        with self._stream(reference, url) as response:
            for chunk in response.iter_bytes(_CHUNK):
                done += len(chunk)
                if done > blob.size:
                    raise DigestMismatch(f"{reference}: blob {blob.digest} is over its {blob.size} bytes")
                hasher.update(chunk)
                sink.write(chunk)
                progress(done)
        if done != blob.size:
            raise RegistryError(f"{reference}: blob {blob.digest} ended after {done} of {blob.size} bytes")
        if hasher.hexdigest() != expected:
            raise DigestMismatch(
                f"{reference}: blob digest sha256:{hasher.hexdigest()} is not the {blob.digest} asked for"
            )

    # -- HTTP ----------------------------------------------------------------------------------------
    def _url(self, reference: Reference, path: str) -> str:
        scheme = "http" if reference.registry in self.insecure else "https"
        return f"{scheme}://{reference.api_host}/v2/{reference.repository}/{path}"

    def _get(self, reference: Reference, path: str, headers: dict[str, str]) -> httpx.Response:
        url = self._url(reference, path)
        try:
            response = self._http.get(url, headers={**headers, **self._auth_header(reference)})
            if response.status_code == 401 and self._authenticate(reference, response):
                response = self._http.get(url, headers={**headers, **self._auth_header(reference)})
        except httpx.HTTPError as exc:
            raise RegistryError(f"{reference}: {exc.__class__.__name__}: {exc}") from None
        _raise_for(reference, response)
        return response

    @contextmanager
    def _stream(self, reference: Reference, url: str) -> Iterator[httpx.Response]:
        """A streamed GET, answering one 401 challenge."""
        try:
            for attempt in range(2):
                request = self._http.build_request("GET", url, headers=self._auth_header(reference))
                response = self._http.send(request, stream=True)
                if response.status_code == 401 and attempt == 0:
                    response.close()
                    if self._authenticate(reference, response):
                        continue
                break
        except httpx.HTTPError as exc:
            raise RegistryError(f"{reference}: {exc.__class__.__name__}: {exc}") from None
        try:
            if response.status_code >= 400:
                response.read()
                _raise_for(reference, response)
            yield response
        finally:
            response.close()

    def _auth_header(self, reference: Reference) -> dict[str, str]:
        token = self._tokens.get((reference.registry, reference.repository))
        return {"Authorization": token} if token else {}

    def _authenticate(self, reference: Reference, response: httpx.Response) -> bool:
        """Answer the 401's challenge (Bearer token or Basic); whether there is something new to try."""
        challenge = response.headers.get("www-authenticate", "")
        scheme, _, params_text = challenge.partition(" ")
        login = self.credentials.for_reference(reference)
        key = (reference.registry, reference.repository)
        if scheme.lower() == "basic":
            if login is None or key in self._tokens:
                return False
            self._tokens[key] = "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
            return True
        if scheme.lower() != "bearer":
            return False
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        query = {"scope": params.get("scope") or f"repository:{reference.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        try:
            answer = self._http.get(params["realm"], params=query, auth=login)
        except (KeyError, httpx.HTTPError) as exc:
            raise RegistryError(f"{reference}: token request failed: {exc}") from None
        if answer.status_code != 200:
            said = f"{answer.status_code}: {answer.text[:200]}"
            raise RegistryError(f"{reference}: the token service answered {said}")
        document = answer.json()
        token = document.get("token") or document.get("access_token")
        if not token:
            raise RegistryError(f"{reference}: the token service gave no token")
        self._tokens[key] = f"Bearer {token}"
        return True


def _raise_for(reference: Reference, response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    codes, messages = [], []
    try:
        for error in response.json().get("errors", []):
            codes.append(str(error.get("code")))
            messages.append(f"{error.get('code')}: {error.get('message')}")
    except ValueError:
        messages.append(response.text[:200])
    said = "; ".join(messages) or response.reason_phrase
    text = f"{reference}: the registry answered {response.status_code} ({said})"
    if response.status_code == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"} & set(codes):
        raise ManifestUnknown(text)
    raise RegistryError(text)
