"""Whatever a client sends, the answer is never a 500: random bodies, headers and queries (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from tests.api.test_resources import INSTANCES
from tests.conftest import vmi

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=70),
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "metadata",
        "spec",
        "status",
        "apiVersion",
        "kind",
        "name",
        "labels",
        "domain",
        "resources",
        "requests",
        "runStrategy",
        "volumes",
        "containerDisk",
        "devices",
        "gpus",
        "uri",
        "grants",
        "role",
        "namespace",
        "generateName",
        "resourceVersion",
    ]
)
KEYS = st.one_of(FIELDS, st.text(max_size=10))


def nested(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return JSON
    return st.dictionaries(KEYS, st.one_of(JSON, st.deferred(lambda: nested(depth - 1))), max_size=5)


def shaped_instance() -> st.SearchStrategy[Any]:
    """Mostly valid instances with one part replaced by noise: reaches deep into the validators."""
    return st.builds(
        lambda path, value: _replace(vmi("fuzz"), path, value),
        st.sampled_from(
            [
                ("metadata",),
                ("metadata", "labels"),
                ("metadata", "name"),
                ("spec",),
                ("spec", "domain"),
                ("spec", "domain", "resources", "requests"),
                ("spec", "domain", "devices"),
                ("spec", "volumes"),
                ("spec", "runStrategy"),
                ("metadata", "annotations"),
            ]
        ),
        st.one_of(JSON, nested(2)),
    )


def _replace(body: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = body
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    return body


def check(response: httpx.Response, *, empty_pool: bool = False) -> None:
    # An empty pool answers 503 by design; nothing else may be a 5xx.
    assert response.status_code < 500 or (empty_pool and response.status_code == 503), response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")


FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(body=st.one_of(nested(3), shaped_instance()))
def test_create_instance_never_500(api: httpx.Client, body: Any) -> None:
    check(api.post(INSTANCES, content=json.dumps(body), headers={"Content-Type": "application/json"}))


@FUZZ
@given(body=st.one_of(nested(3), JSON), target=st.sampled_from(["/v1/nodes", "/v1/tokens"]))
def test_create_node_and_token_never_500(api: httpx.Client, body: Any, target: str) -> None:
    check(api.post(target, content=json.dumps(body), headers={"Content-Type": "application/json"}))


@FUZZ
@given(patch=st.one_of(nested(3), shaped_instance()), if_match=st.one_of(st.none(), st.text(max_size=8)))
def test_patch_and_replace_never_500(api: httpx.Client, patch: Any, if_match: str | None) -> None:
    api.post(INSTANCES, json=vmi("fuzz"))
    headers = {"Content-Type": "application/merge-patch+json"}
    # httpx refuses values it cannot send (non-ASCII, control characters, surrounding blanks)
    if (
        if_match is not None
        and if_match.isascii()
        and if_match.isprintable()
        and if_match == if_match.strip()
    ):
        headers["If-Match"] = if_match
    check(api.patch(f"{INSTANCES}/fuzz", content=json.dumps(patch), headers=headers))
    check(
        api.put(f"{INSTANCES}/fuzz", content=json.dumps(patch), headers={"Content-Type": "application/json"})
    )


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["labelSelector", "limit", "continue", "watch", "resourceVersion", "x"]),
        st.text(max_size=30).filter(lambda s: "\x00" not in s),
        max_size=3,
    ),
    raw=st.binary(max_size=200),
    content_type=st.sampled_from(["application/json", "application/yaml", "text/plain", ""]),
)
def test_queries_and_raw_bodies_never_500(
    api: httpx.Client, params: dict[str, str], raw: bytes, content_type: str
) -> None:
    if not _is_true(params.get("watch", "")):  # a valid watch would stream forever
        check(api.get(INSTANCES, params=params))
    check(api.post(INSTANCES, content=raw, headers={"Content-Type": content_type}))


def _is_true(value: str) -> bool:
    """Whether the API reads this query value as true (pydantic's lax bool: t, y, on, 1, ...)."""
    try:
        return TypeAdapter(bool).validate_python(value) is True
    except ValidationError:
        return False


def test_deep_nesting_and_yaml_aliases_are_400(api: httpx.Client) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    check(api.post(INSTANCES, content=deep, headers={"Content-Type": "application/json"}))
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    response = api.post(INSTANCES, content=bomb, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 400 and "aliases" in response.json()["detail"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(nested(2), JSON), action=st.sampled_from(["stop", "start", "restart", "pause"]))
def test_actions_and_claims_never_500(api: httpx.Client, body: Any, action: str) -> None:
    api.post(INSTANCES, json=vmi("fuzz"))
    api.post(
        "/v1/namespaces/default/pools", json={"metadata": {"name": "fz"}, "spec": {"size": 0, "template": {}}}
    )
    headers = {"Content-Type": "application/json"}
    check(api.post(f"{INSTANCES}/fuzz/{action}", content=json.dumps(body), headers=headers))
    claim = api.post("/v1/namespaces/default/pools/fz/claim", content=json.dumps(body), headers=headers)
    check(claim, empty_pool=True)
