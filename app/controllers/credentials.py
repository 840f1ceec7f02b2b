"""What an instance takes from Secrets: cloud-init documents and SSH public keys (KubeVirt's
accessCredentials), read by the worker when it builds a seed or syncs keys through the guest agent."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.disks.registry import Credentials
from app.kinds import SECRETS
from app.repositories.resources import ResourceRepository
from app.schemas.instance import CloudInitSource, InstanceSpec
from app.sealing import unsealed

SecretValues = Mapping[str, Mapping[str, bytes]]  # Secret name -> key -> value
# The keys KubeVirt reads a cloud-init document from, in order.
DOCUMENT_KEYS = {"user_data": ("userdata", "userData"), "network_data": ("networkdata", "networkData")}


class SecretMissing(LookupError):
    """A Secret the instance uses is not there (or lacks the key it needs)."""


def secret_values(session: Session, namespace: str, name: str) -> dict[str, bytes] | None:
    row = ResourceRepository[Any](session, SECRETS).get(namespace, name)
    return None if row is None else unsealed(row.spec)  # a deleted Secret is gone at once


def registry_logins(values: Mapping[str, bytes], *, registry: str | None) -> Credentials:
    """Registry logins in a Secret: a kubernetes.io/dockerconfigjson (`.dockerconfigjson`) or legacy
    `.dockercfg` document, or CDI's `accessKeyId`/`secretKey` pair (a login for `registry`, when given)."""
    try:
        if ".dockerconfigjson" in values:
            return Credentials.from_document(json.loads(values[".dockerconfigjson"]))
        if ".dockercfg" in values:
            return Credentials.from_document({"auths": json.loads(values[".dockercfg"])})
    except ValueError:
        return Credentials()
    if registry is not None and "accessKeyId" in values and "secretKey" in values:
        login = (values["accessKeyId"].decode(errors="replace"), values["secretKey"].decode(errors="replace"))
        return Credentials({registry: login})
    return Credentials()


def load_secrets(session: Session, namespace: str, spec: InstanceSpec) -> dict[str, dict[str, bytes]]:
    """The values of the Secrets the spec names that exist, unsealed."""
    found = {}
    for name in sorted(spec.secret_names()):
        values = secret_values(session, namespace, name)
        if values is not None:
            found[name] = values
    return found


def _secret(secrets: SecretValues, name: str) -> Mapping[str, bytes]:
    values = secrets.get(name)
    if values is None:
        raise SecretMissing(f"Secret {name!r} does not exist")
    return values


def document(
    source: CloudInitSource, what: Literal["user_data", "network_data"], secrets: SecretValues
) -> bytes | None:
    """A cloud-init document, inline or from its Secret. Raises SecretMissing."""
    ref = getattr(source, f"{what}_secret_ref")
    if ref is None:
        return source.decoded(what)
    values = _secret(secrets, ref.name)
    for key in DOCUMENT_KEYS[what]:
        if key in values:
            return values[key]
    raise SecretMissing(f"Secret {ref.name!r} has no key {' or '.join(DOCUMENT_KEYS[what])}")


def public_keys(values: Mapping[str, bytes]) -> list[str]:
    """Every public key in a Secret: each value holds one or more, one per line (comments skipped)."""
    keys: list[str] = []
    for _, value in sorted(values.items()):
        for line in value.decode(errors="replace").splitlines():
            key = line.strip()
            if key and not key.startswith("#") and key not in keys:
                keys.append(key)
    return keys


def seed_keys(
    spec: InstanceSpec, secrets: SecretValues, seed: Literal["noCloud", "configDrive"]
) -> list[str]:
    """The keys propagated through the instance's cloud-init seed. Raises SecretMissing."""
    keys: list[str] = []
    for credential in spec.access_credentials:
        method = credential.ssh_public_key.propagation_method
        if (method.no_cloud if seed == "noCloud" else method.config_drive) is not None:
            source = _secret(secrets, credential.ssh_public_key.source.secret.secret_name)
            keys += [k for k in public_keys(source) if k not in keys]
    return keys


def agent_keys(spec: InstanceSpec, secrets: SecretValues) -> dict[str, list[str]]:
    """Each guest user's authorized keys kept by the guest agent (users named by several credentials get
    all their keys). A missing Secret contributes no keys: the Secret's removal revokes them."""
    wanted: dict[str, list[str]] = {}
    for credential in spec.access_credentials:
        agent = credential.ssh_public_key.propagation_method.qemu_guest_agent
        if agent is None:
            continue
        keys = public_keys(secrets.get(credential.ssh_public_key.source.secret.secret_name, {}))
        for user in agent.users:
            wanted.setdefault(user, [])
            wanted[user] += [k for k in keys if k not in wanted[user]]
    return wanted
