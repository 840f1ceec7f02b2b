"""A real OCI registry for the tests (Debian's docker-registry, the CNCF distribution registry) and a small
pusher that writes containerDisks into it through the registry v2 API, including deliberately broken ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
PLAIN_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def disk_layer(disk: Path, name: str = "disk.qcow2", *, compress: bool = True, padding: int = 0) -> bytes:
    """A containerDisk layer: a tar holding the file under disk/ (KubeVirt's format), and with `padding`
    that many random bytes in another file (a bigger pull)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directory = tarfile.TarInfo("disk")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(directory)
        archive.add(disk, arcname=f"disk/{name}")
        if padding:
            extra = tarfile.TarInfo("padding")
            extra.size = padding
            archive.addfile(extra, io.BytesIO(os.urandom(padding)))
    raw = buffer.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw


@dataclass
class Registry:
    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    login: tuple[str, str] | None = None  # a registry that wants this user and password (htpasswd)

    @property
    def _auth(self) -> httpx.BasicAuth | None:
        return httpx.BasicAuth(*self.login) if self.login else None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = self.port or _free_port()
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        config = self.root / "config.yml"
        auth = ""
        if self.login is not None:
            user, password = self.login
            with warnings.catch_warnings():  # crypt is deprecated; Debian's libxcrypt makes bcrypt with it
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt

                hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
            (self.root / "htpasswd").write_text(f"{user}:{hashed}\n")
            auth = f"auth: {{htpasswd: {{realm: corral-test, path: {self.root / 'htpasswd'}}}}}\n"
        config.write_text(
            "version: 0.1\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root / 'data'}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: {self.host}}}\n"
            "log: {level: error}\n" + auth
        )
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RuntimeError("docker-registry is not installed (scripts/setup-host.sh installs it)")
        with (self.root / "registry.log").open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.host}/v2/", auth=self._auth, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"docker-registry did not answer on {self.host}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    # -- pushing -------------------------------------------------------------------------------------
    def push_blob(self, repository: str, data: bytes, digest: str | None = None) -> str:
        digest = digest or _digest(data)
        base = f"http://{self.host}/v2/{repository}/blobs/uploads/"
        started = httpx.post(base, auth=self._auth, timeout=30)
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        if location.startswith("/"):
            location = f"http://{self.host}{location}"
        joiner = "&" if "?" in location else "?"
        done = httpx.put(f"{location}{joiner}digest={digest}", content=data, auth=self._auth, timeout=120)
        assert done.status_code == 201, done.text
        return digest

    def push_manifest(self, repository: str, tag: str, manifest: dict[str, object], media_type: str) -> str:
        body = json.dumps(manifest).encode()
        answer = httpx.put(
            f"http://{self.host}/v2/{repository}/manifests/{tag}",
            content=body,
            headers={"Content-Type": media_type},
            auth=self._auth,
            timeout=30,
        )
        assert answer.status_code == 201, answer.text
        return _digest(body)

    def push_image(self, repository: str, tag: str, layers: list[bytes], *, compressed: bool = True) -> str:
        """An OCI image of these layers; the manifest's digest."""
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [_digest(_plain(layer)) for layer in layers]},
            }
        ).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": self.push_blob(repository, config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": GZIP_LAYER if compressed else PLAIN_LAYER,
                    "digest": self.push_blob(repository, layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
        return self.push_manifest(repository, tag, manifest, OCI_MANIFEST)

    def push_index(self, repository: str, tag: str, platforms: dict[str, str]) -> str:
        """A multi-platform index over manifests already pushed: {"linux/amd64": digest, ...}."""
        entries = []
        for platform, digest in platforms.items():
            os_name, arch = platform.split("/")
            size = len(
                httpx.get(
                    f"http://{self.host}/v2/{repository}/manifests/{digest}",
                    headers={"Accept": OCI_MANIFEST},
                    auth=self._auth,
                ).content
            )
            entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": size,
                    "platform": {"os": os_name, "architecture": arch},
                }
            )
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return self.push_manifest(repository, tag, index, OCI_INDEX)


def _plain(layer: bytes) -> bytes:
    return gzip.decompress(layer) if layer[:2] == b"\x1f\x8b" else layer


def main() -> None:
    """`python -m tests.registry --port 5055 --dir DIR`: serve a registry holding the test guest as the
    containerDisks `containerdisks/test-guest:latest` and `containerdisks/ubuntu:22.04` until stopped."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--dir", type=Path, default=Path("/var/lib/corral/registry"))
    parser.add_argument(
        "--disk",
        type=Path,
        default=Path(os.environ.get("CORRAL_IMAGE_DIR", "/var/lib/corral/images"))
        / "corral/test-guest/latest/containerdisk.qcow2",
    )
    args = parser.parse_args()
    served = Registry(args.dir, args.port)
    served.start()
    layer = disk_layer(args.disk)
    for repository, tag in (("containerdisks/test-guest", "latest"), ("containerdisks/ubuntu", "22.04")):
        served.push_image(repository, tag, [layer])
    print(
        f"registry on {served.host}: containerdisks/test-guest:latest, containerdisks/ubuntu:22.04",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: served.stop())
    try:
        assert served.process is not None
        served.process.wait()
    except KeyboardInterrupt:
        served.stop()


if __name__ == "__main__":
    main()
