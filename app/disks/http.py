"""Downloading a disk from an http(s) URL as untrusted input: where it may come from, and what arrived.

A URL is input too: the worker would fetch whatever host it names from inside the operator's network, so
loopback, link-local (cloud metadata at 169.254.169.254 included), unspecified and multicast addresses are
refused, at the first hop and after every redirect, unless the host is explicitly allowed
(CORRAL_IMPORT_ALLOWED_HOSTS).
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
from collections.abc import Callable, Collection
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from app.disks.untrusted import UnsafeDisk

MAX_REDIRECTS = 5
ATTEMPTS = 3
_METADATA_HOSTS = {"metadata.google.internal", "metadata"}


class DownloadFailed(UnsafeDisk):
    """The source could not be fetched (after retries where a retry could help)."""


def check_url(url: str, allowed_hosts: Collection[str]) -> None:
    """Refuse a URL Corral must not fetch; raises UnsafeDisk naming why."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeDisk(f"GET {url}: only http and https URLs are imported")
    host = parts.hostname or ""
    if not host:
        raise UnsafeDisk(f"GET {url}: no host")
    if host in allowed_hosts:
        return
    if host.lower() in _METADATA_HOSTS:
        raise UnsafeDisk(f"GET {url}: {host} is a cloud metadata service")
    try:
        found = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        addresses = {str(info[4][0]) for info in found}
    except OSError as exc:
        raise DownloadFailed(f"GET {url}: cannot resolve {host}: {exc}") from None
    for text in addresses:
        address = ipaddress.ip_address(text.split("%")[0])
        if address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast:
            raise UnsafeDisk(
                f"GET {url}: {host} is {address}, a loopback, link-local or metadata address "
                "(allow it with CORRAL_IMPORT_ALLOWED_HOSTS)"
            )


def download(
    url: str,
    target: Path,
    *,
    allowed_hosts: Collection[str],
    checksum: str | None,
    progress: Callable[[int, int], None],
    attempts: int = ATTEMPTS,
) -> None:
    """Fetch `url` into `target`, calling progress(done, total). A transfer that ends early is tried again
    (up to `attempts` times); a checksum mismatch fails at once with both values."""
    for attempt in range(1, attempts + 1):
        try:
            digest = _fetch_once(url, target, allowed_hosts, checksum, progress)
            break
        except DownloadFailed:
            if attempt == attempts:
                raise
            time.sleep(attempt)
    if checksum is not None:
        expected = checksum.partition(":")[2]
        if digest != expected:
            algorithm = checksum.partition(":")[0]
            raise UnsafeDisk(f"GET {url}: checksum mismatch: expected {checksum}, got {algorithm}:{digest}")


def _fetch_once(
    url: str,
    target: Path,
    allowed_hosts: Collection[str],
    checksum: str | None,
    progress: Callable[[int, int], None],
) -> str:
    hasher = hashlib.new(checksum.partition(":")[0]) if checksum else None
    with httpx.Client(timeout=60, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(url, allowed_hosts)
            try:
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if response.status_code != 200:
                        answer = f"{response.status_code} {response.reason_phrase}"
                        text = f"GET {url}: the server answered {answer}"
                        if response.status_code >= 500 or response.status_code == 429:
                            raise DownloadFailed(text)
                        raise UnsafeDisk(text)
                    total = int(response.headers.get("content-length") or 0)
                    done = 0
                    # The bytes as sent (no re-chunking) unless a content-encoding must be undone.
                    encoded = response.headers.get("content-encoding", "identity") != "identity"
                    with target.open("wb") as sink:
                        for chunk in response.iter_bytes() if encoded else response.iter_raw():
                            sink.write(chunk)
                            if hasher is not None:
                                hasher.update(chunk)
                            done += len(chunk)
                            progress(done, total)
                    if total and not encoded and done != total:
                        raise DownloadFailed(
                            f"GET {url}: the transfer ended early, after {done} of {total} bytes"
                        )
                    return hasher.hexdigest() if hasher is not None else ""
            except httpx.RemoteProtocolError as exc:
                raise DownloadFailed(f"GET {url}: the transfer ended early: {exc}") from None
            except httpx.HTTPError as exc:
                raise DownloadFailed(f"GET {url}: {exc.__class__.__name__}: {exc}") from None
    raise UnsafeDisk(f"GET {url}: more than {MAX_REDIRECTS} redirects")
