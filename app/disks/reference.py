"""OCI image references (`host[:port]/repo/path[:tag][@sha256:...]`) and short-name resolution.

The grammar is the distribution project's: the first path component names a registry when it holds a dot or
a colon or is `localhost`; otherwise the name is short and resolves against an ordered search list of
`host[/namespace]` prefixes (KubeVirt's containerDisks live under `quay.io/containerdisks`), the way a
container runtime uses its unqualified-search registries.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOST = rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"sha256:[a-f0-9]{64}"
REFERENCE_PATTERN = rf"^(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?$"
_REFERENCE = re.compile(
    rf"^(?P<path>(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"  # docker.io's name for people; its API lives here


class InvalidReference(ValueError):
    pass


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port] as written (docker.io for Docker Hub)
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        return text + (f"@{self.digest}" if self.digest else "")

    @property
    def target(self) -> str:
        """What the manifest endpoint is asked for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    @property
    def api_host(self) -> str:
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)


def _split(text: str) -> tuple[str | None, str, str | None, str | None]:
    """(registry or None for a short name, path, tag, digest); raises InvalidReference."""
    match = _REFERENCE.match(text)
    if match is None or len(text) > 255:
        raise InvalidReference(f"{text!r} is not an image reference (host/repository:tag or @sha256:...)")
    path, tag, digest = match["path"], match["tag"], match["digest"]
    first, slash, rest = path.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag, digest
    if not _PATH.match(path):  # the first component is no host, so it must be a lowercase path component
        raise InvalidReference(f"{text!r} is not an image reference (repository names are lowercase)")
    return None, path, tag, digest


def is_qualified(text: str) -> bool:
    """Whether the name says its registry (no search list is consulted)."""
    return _split(text)[0] is not None


def candidates(text: str, search: Sequence[str]) -> list[Reference]:
    """The references `text` may mean, in the order to try them. A name without a tag means `latest`."""
    registry, path, tag, digest = _split(text)
    tag = tag or (None if digest else "latest")
    if registry is not None:
        return [_reference(registry, path, tag, digest)]
    found = []
    for prefix in search:
        host, _, namespace = prefix.strip("/").partition("/")
        found.append(_reference(host, f"{namespace}/{path}" if namespace else path, tag, digest))
    return found


def _reference(registry: str, path: str, tag: str | None, digest: str | None) -> Reference:
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"  # Docker Hub's official images
    return Reference(registry, path, tag, digest)
