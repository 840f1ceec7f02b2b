"""Secrets at rest: a Secret's values are stored sealed (Fernet: AES-CBC with an HMAC-SHA256, keyed from a
file outside the database), so a copy of the database or of its change log reveals nothing. Only the API
answer to a caller allowed to read Secrets, and the worker that writes them into a guest, unseal them."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.config import get_settings

KEY_FILE = "encryption-key"


class UnsealError(Exception):
    """A sealed value this process's keys cannot open (another process's key file, or a corrupted row)."""


class Sealer:
    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("no encryption key")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def seal(self, values: Mapping[str, bytes]) -> str:
        plain = json.dumps({k: base64.b64encode(v).decode() for k, v in sorted(values.items())})
        return self._fernet.encrypt(plain.encode()).decode()

    def unseal(self, token: str) -> dict[str, bytes]:
        try:
            plain = self._fernet.decrypt(token.encode())
        except InvalidToken:
            raise UnsealError(
                "a Secret was sealed with a key this process does not have: every API and worker process "
                "needs the same CORRAL_ENCRYPTION_KEY_FILE"
            ) from None
        return {k: base64.b64decode(v) for k, v in json.loads(plain).items()}


def load_keys(path: Path) -> list[bytes]:
    """The keys in `path`, minting a first one (file mode 0600) when the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent)  # mode 0600
        minted = Path(name)
        with os.fdopen(fd, "w") as out:
            out.write(Fernet.generate_key().decode() + "\n")
        try:
            path.hardlink_to(minted)  # atomic: when an API and a worker start at once, one key wins for both
        except FileExistsError:
            pass
        finally:
            minted.unlink()
    return [line.strip().encode() for line in path.read_text().splitlines() if line.strip()]


@lru_cache(maxsize=1)
def sealer() -> Sealer:
    settings = get_settings()
    return Sealer(load_keys(settings.encryption_key_file or settings.data_dir / KEY_FILE))


def unsealed(spec: Mapping[str, Any]) -> dict[str, bytes]:
    """A stored Secret spec's values."""
    return sealer().unseal(spec["sealedData"])


def shown_secret(stored: Mapping[str, Any]) -> dict[str, Any]:
    """A stored Secret (sealed values in `spec`) in the Kubernetes v1 shape, values unsealed, base64."""
    spec = stored["spec"]
    shown: dict[str, Any] = {
        "apiVersion": stored["apiVersion"],
        "kind": stored["kind"],
        "metadata": stored["metadata"],
        "type": spec["type"],
        "data": {k: base64.b64encode(v).decode() for k, v in unsealed(spec).items()},
    }
    if "immutable" in spec:
        shown["immutable"] = spec["immutable"]
    return shown
