"""Bearer tokens, roles per namespace, and what each answer reveals."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api import deps
from app.db import Database
from app.models import TokenRow
from app.services.auth import Principal
from tests.api.test_resources import INSTANCES, problem
from tests.conftest import ADMIN_TOKEN, LiveServer, bearer, make_token, vmi


def test_missing_and_invalid_tokens_are_401(anon: httpx.Client) -> None:
    body = problem(anon.get(INSTANCES), 401)
    assert "Bearer" in body["detail"]
    assert anon.get(INSTANCES).headers["WWW-Authenticate"].startswith("Bearer")
    problem(anon.get(INSTANCES, headers=bearer("crl_nope")), 401)
    problem(anon.get(INSTANCES, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    problem(anon.post(INSTANCES, json=vmi("x"), headers={"Authorization": "Bearer"}), 401)


def test_health_and_metrics_need_no_token(anon: httpx.Client) -> None:
    assert anon.get("/healthz").json() == {"status": "ok"}
    assert anon.get("/readyz").status_code == 200
    metrics = anon.get("/metrics")
    assert metrics.status_code == 200 and "corral_workqueue_depth" in metrics.text


def test_metrics_name_tenants_only_to_callers_who_see_every_namespace(
    api: httpx.Client, anon: httpx.Client
) -> None:
    pool = {"metadata": {"name": "secretpool"}, "spec": {"size": 0, "template": {}}}
    assert api.post("/v1/namespaces/team-b/pools", json=pool).status_code == 201
    tenant = 'corral_pool_members{namespace="team-b",pool="secretpool"'
    assert tenant not in anon.get("/metrics").text
    scoped = bearer(make_token(api, "team-a-admin", [{"namespace": "team-a", "role": "admin"}]))
    assert tenant not in anon.get("/metrics", headers=scoped).text
    assert tenant in api.get("/metrics").text
    watcher = bearer(make_token(api, "scraper", [{"namespace": "*", "role": "viewer"}]))
    assert tenant in anon.get("/metrics", headers=watcher).text
    problem(anon.get("/metrics", headers=bearer("crl_nope")), 401)


def test_the_bootstrap_and_the_last_admin_token_cannot_be_deleted(
    api: httpx.Client, anon: httpx.Client, db: Database
) -> None:
    answer = problem(api.delete("/v1/tokens/bootstrap-admin"), 409)
    assert answer["errors"][0]["field"] == "name" and "CORRAL_ADMIN_TOKEN" in answer["detail"]
    assert api.get("/v1/tokens").status_code == 200  # still let in
    admin = [{"namespace": "*", "role": "admin"}]
    first, second = bearer(make_token(api, "ops-1", admin)), bearer(make_token(api, "ops-2", admin))
    assert anon.delete("/v1/tokens/ops-1", headers=first).status_code == 204  # itself: others remain
    with db.transaction() as session:  # a database whose bootstrap token is gone (an older install)
        session.delete(session.scalars(select(TokenRow).where(TokenRow.name == "bootstrap-admin")).one())
    answer = problem(anon.delete("/v1/tokens/ops-2", headers=second), 409)
    assert answer["detail"] == "token 'ops-2' is the last cluster admin token and cannot be deleted"
    assert anon.get("/v1/tokens", headers=second).status_code == 200


def test_roles_per_namespace(api: httpx.Client, anon: httpx.Client) -> None:
    viewer = bearer(make_token(api, "alice", [{"namespace": "team-a", "role": "viewer"}]))
    operator = bearer(make_token(api, "bob", [{"namespace": "team-a", "role": "operator"}]))
    a, b = "/v1/namespaces/team-a/instances", "/v1/namespaces/team-b/instances"
    assert api.post(a, json=vmi("shared")).status_code == 201
    assert api.post(b, json=vmi("secret")).status_code == 201

    assert anon.get(a, headers=viewer).status_code == 200
    assert anon.get(f"{a}/shared", headers=viewer).status_code == 200
    problem(anon.post(a, json=vmi("nope"), headers=viewer), 403)
    problem(anon.delete(f"{a}/shared", headers=viewer), 403)

    assert anon.post(a, json=vmi("mine"), headers=operator).status_code == 201
    assert anon.delete(f"{a}/mine", headers=operator).status_code == 202

    # Another namespace's objects are invisible (404), its collections forbidden (403).
    problem(anon.get(f"{b}/secret", headers=operator), 404)
    problem(anon.delete(f"{b}/secret", headers=operator), 404)
    problem(anon.get(b, headers=operator), 403)
    problem(anon.post(b, json=vmi("x"), headers=operator), 403)
    # Cluster-scoped objects and token management are for admins.
    problem(anon.get("/v1/nodes", headers=operator), 403)
    problem(
        anon.post(
            "/v1/nodes",
            json={"metadata": {"name": "n"}, "spec": {"uri": "test:///default"}},
            headers=operator,
        ),
        403,
    )
    problem(anon.get("/v1/tokens", headers=operator), 403)
    assert anon.get("/v1/whoami", headers=operator).json() == {
        "name": "bob",
        "grants": [{"namespace": "team-a", "role": "operator"}],
    }
    assert api.get(f"{b}/secret").json()["metadata"].get("deletionTimestamp") is None


def test_tokens_are_stored_hashed_and_revocable(api: httpx.Client, anon: httpx.Client, db: Database) -> None:
    secret = make_token(api, "ci", [{"namespace": "*", "role": "viewer"}])
    with db.transaction() as session:
        digests = list(session.scalars(select(TokenRow.digest)))
    assert secret not in digests and ADMIN_TOKEN not in digests and all(len(d) == 64 for d in digests)
    assert anon.get("/v1/nodes", headers=bearer(secret)).status_code == 200
    listed = api.get("/v1/tokens").json()["items"]
    assert all(t["createdAt"].endswith("Z") for t in listed)  # RFC 3339 UTC on SQLite too
    names = [t["name"] for t in listed]
    assert names == ["bootstrap-admin", "ci"] and "token" not in api.get("/v1/tokens").json()["items"][0]
    problem(
        api.post("/v1/tokens", json={"name": "ci", "grants": [{"namespace": "*", "role": "viewer"}]}), 409
    )
    assert api.delete("/v1/tokens/ci").status_code == 204
    problem(anon.get("/v1/nodes", headers=bearer(secret)), 401)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "grants": []}, "grants"),
        ({"name": "x", "grants": [{"namespace": "Bad!", "role": "viewer"}]}, "grants[0].namespace"),
        ({"name": "x", "grants": [{"namespace": "a", "role": "root"}]}, "grants[0].role"),
        ({"name": "X Y", "grants": [{"namespace": "a", "role": "viewer"}]}, "name"),
    ],
)
def test_token_requests_are_validated(api: httpx.Client, body: dict, field: str) -> None:
    assert problem(api.post("/v1/tokens", json=body), 422)["errors"][0]["field"] == field


def test_requests_that_miss_the_principal_cache_together_share_one_lookup(
    api: httpx.Client, server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = make_token(api, "burst", [{"namespace": "default", "role": "viewer"}])
    lookups: list[str | None] = []
    real = deps.authenticate

    def counted(session: Session, authorization: str | None) -> Principal:
        lookups.append(authorization)
        time.sleep(0.2)  # the others arrive while this lookup runs
        return real(session, authorization)

    monkeypatch.setattr(deps, "authenticate", counted)

    async def burst(headers: dict[str, str]) -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:
            answers = await asyncio.gather(*(client.get(INSTANCES) for _ in range(20)))
        return [a.status_code for a in answers]

    assert asyncio.run(burst(bearer(token))) == [200] * 20
    assert lookups == [f"Bearer {token}"]
    assert asyncio.run(burst(bearer("crl_not-a-token"))) == [401] * 20  # a refusal is shared, never cached
    assert asyncio.run(burst(bearer("crl_not-a-token"))) == [401] * 20
    assert lookups.count("Bearer crl_not-a-token") == 2
