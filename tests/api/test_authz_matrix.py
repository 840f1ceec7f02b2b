"""Every operation of the OpenAPI document, called by viewer, operator and admin tokens of one namespace,
in their own namespace, in another namespace that holds an object of the requested name, and on the
cluster-scoped paths: nothing of another namespace or of the cluster answers 2xx, and nothing the role
allows in its own namespace is denied."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from app.cli import openapi_document
from tests.conftest import bearer, make_token, vmi

ROLES = ("viewer", "operator", "admin")
OPEN = {"/healthz", "/readyz", "/metrics", "/v1/whoami"}  # answer any (or no) token
# Running programs in a guest and reading or writing its files are an admin's; other writes, and the history
# of guest operations (the programs run) and Secrets (credentials), an operator's.
ADMIN_ONLY = ("/guest/exec", "/guest/file-read", "/guest/file-write")
OPERATOR_READS = ("/guest/operations", "/secrets", "/secrets/{name}")


def needed(path: str, verb: str) -> str:
    if path.endswith(ADMIN_ONLY):
        return "admin"
    return "viewer" if verb == "GET" and not path.endswith(OPERATOR_READS) else "operator"


def operations() -> list[tuple[str, str]]:
    document = json.loads(openapi_document())
    return sorted((path, verb.upper()) for path, ops in document["paths"].items() for verb in ops)


def url(path: str, namespace: str) -> str:
    filled = path.replace("{namespace}", namespace)
    return re.sub(r"\{[^}]+\}", "x", filled)


@pytest.fixture
def tokens(api: httpx.Client) -> dict[str, dict[str, str]]:
    assert api.post("/v1/namespaces/team-b/instances", json=vmi("x")).status_code == 201
    return {
        role: bearer(make_token(api, f"team-a-{role}", [{"namespace": "team-a", "role": role}]))
        for role in ROLES
    }


def call(client: httpx.Client, verb: str, target: str, headers: dict[str, str]) -> httpx.Response:
    body: dict[str, Any] | None = {} if verb in ("POST", "PUT", "PATCH") else None
    content_type = "application/merge-patch+json" if verb == "PATCH" else "application/json"
    return client.request(verb, target, json=body, headers={**headers, "Content-Type": content_type})


def test_no_operation_leaks_across_namespaces_or_to_the_cluster(
    anon: httpx.Client, tokens: dict[str, dict[str, str]]
) -> None:
    leaks, denied, calls = [], [], 0
    for path, verb in operations():
        if path in OPEN:
            continue
        for role, headers in tokens.items():
            if "{namespace}" not in path:
                answer = call(anon, verb, url(path, ""), headers)
                calls += 1
                if answer.is_success:
                    leaks.append((role, verb, path, answer.status_code))
                continue
            other = call(anon, verb, url(path, "team-b"), headers)
            own = call(anon, verb, url(path, "team-a"), headers)
            calls += 2
            if other.is_success or other.status_code not in (403, 404, 405):
                leaks.append((role, verb, path, other.status_code))
            allowed = ROLES.index(role) >= ROLES.index(needed(path, verb))
            if allowed and own.status_code in (401, 403):
                denied.append((role, verb, path, own.status_code, own.text[:200]))
            if not allowed and own.status_code != 403:
                leaks.append((role, verb, path, own.status_code))
    assert calls > 250
    assert leaks == [], leaks
    assert denied == [], denied
