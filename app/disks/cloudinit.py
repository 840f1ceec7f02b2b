"""cloud-init seeds: the NoCloud (`cidata`) and ConfigDrive (`config-2`) ISO 9660 images cloud-init looks for
at boot, built with pycdlib (no mkisofs, no loop mount)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Literal

import pycdlib
import yaml

SeedKind = Literal["noCloud", "configDrive"]
LABELS = {"noCloud": "cidata", "configDrive": "config-2"}


@dataclass(frozen=True)
class Seed:
    kind: SeedKind
    instance_id: str  # the instance's uid: a restart keeps it (first-boot modules do not run again)
    hostname: str
    user_data: bytes | None = None
    network_data: bytes | None = None
    public_keys: tuple[str, ...] = ()  # cloud-init gives them to the image's default user


def files_of(seed: Seed) -> dict[str, bytes]:
    """The seed's files by path, as cloud-init's datasource reads them."""
    if seed.kind == "noCloud":
        meta: dict[str, object] = {"instance-id": seed.instance_id, "local-hostname": seed.hostname}
        if seed.public_keys:
            meta["public-keys"] = list(seed.public_keys)
        files = {"meta-data": yaml.safe_dump(meta).encode(), "user-data": seed.user_data or b""}
        if seed.network_data is not None:
            files["network-config"] = seed.network_data
        return files
    meta_json: dict[str, object] = {
        "uuid": seed.instance_id,
        "hostname": seed.hostname,
        "name": seed.hostname,
    }
    if seed.public_keys:
        meta_json["public_keys"] = {f"key{i}": key for i, key in enumerate(seed.public_keys)}
    files = {"openstack/latest/meta_data.json": json.dumps(meta_json).encode()}
    if seed.user_data is not None:
        files["openstack/latest/user_data"] = seed.user_data
    if seed.network_data is not None:
        files["openstack/latest/network_data.json"] = seed.network_data
    return files


def build_iso(seed: Seed) -> bytes:
    """The seed as an ISO 9660 image (Rock Ridge and Joliet names, so long lowercase names survive)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=4, joliet=3, rock_ridge="1.09", vol_ident=LABELS[seed.kind])
    made: set[str] = set()
    for path, data in sorted(files_of(seed).items()):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in made:
                made.add(directory)
                iso.add_directory(
                    iso_path="/" + directory.upper().replace("-", "_"),
                    rr_name=parts[depth - 1],
                    joliet_path="/" + directory,
                )
        iso_path = "/" + "/".join(p.upper().replace("-", "_").replace(".", "_") for p in parts) + ";1"
        iso.add_fp(io.BytesIO(data), len(data), iso_path, rr_name=parts[-1], joliet_path="/" + path)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()
