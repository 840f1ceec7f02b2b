"""Warm pools on libvirt's test driver: the reconciler, claims (racing ones too), rollouts, deletion."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.api.pools import ClaimDesk
from app.db import Database
from app.errors import AlreadyExists, Invalid
from app.services.pools import PoolService
from tests.conftest import ADMIN_TOKEN, bearer, conditions, wait_for

POOLS = "/v1/namespaces/default/pools"
INSTANCES = "/v1/namespaces/default/instances"
MERGE = {"Content-Type": "application/merge-patch+json"}


def pool(name: str, size: int, min_available: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "pool.kubevirt.io/v1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": name},
        "spec": {
            "size": size,
            "minAvailable": min_available,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "domain": {"resources": {"requests": {"cpu": "1", "memory": "128Mi"}}},
                },
            },
            **extra,
        },
    }


def status(api: httpx.Client, name: str) -> dict[str, Any]:
    return api.get(f"{POOLS}/{name}").json()["status"]


def settled(api: httpx.Client, name: str, available: int, **expect: int) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        s = status(api, name)
        ok = s.get("availableReplicas") == available and all(s.get(k) == v for k, v in expect.items())
        return s if ok else None

    try:
        return wait_for(check, timeout=30, what=f"pool {name}: {available} available, {expect}")
    except AssertionError as exc:
        now = [(m["metadata"]["name"], m["status"].get("phase")) for m in members(api, name)]
        raise AssertionError(f"{exc}; now {status(api, name)}, members {now}") from None


def members(api: httpx.Client, name: str) -> list[dict[str, Any]]:
    items = api.get(INSTANCES, params={"labelSelector": f"corral.dev/pool={name}"}).json()["items"]
    return [i for i in items if "deletionTimestamp" not in i["metadata"]]


def test_pool_fills_claims_replenish_and_count(api: httpx.Client) -> None:
    assert api.post(POOLS, json=pool("web", 3, 2)).status_code == 201
    full = settled(api, "web", 3, replicas=3, warming=0, claimed=0)
    assert conditions({"status": full})["BelowMinAvailable"] == "False"
    assert sorted(m["metadata"]["name"] for m in members(api, "web")) == ["web-0", "web-1", "web-2"]

    claimed = api.post(f"{POOLS}/web/claim", json={"name": "mine", "labels": {"owner": "me"}})
    assert claimed.status_code == 201, claimed.text
    obj = claimed.json()
    assert obj["metadata"]["name"] == "mine" and obj["status"]["phase"] == "Running"
    assert obj["metadata"]["labels"] == {"app": "web", "corral.dev/claimed-from": "web", "owner": "me"}
    assert claimed.headers["Location"] == f"{INSTANCES}/mine"
    domain = obj["status"]["domainName"]
    assert domain.startswith("default.web-")  # the running domain was not touched
    settled(api, "web", 3, replicas=3, claimed=1)  # replenished
    metrics = api.get("/metrics").text
    assert 'corral_pool_members{namespace="default",pool="web",state="available"} 3.0' in metrics
    assert 'corral_pool_claims_total{namespace="default",pool="web",result="hit"} 1.0' in metrics
    assert api.get(f"{INSTANCES}/mine").json()["status"]["phase"] == "Running"

    # A claimed instance is ordinary: actions work, deleting it leaves the pool alone.
    assert api.post(f"{INSTANCES}/mine/stop").status_code == 202
    api.delete(f"{INSTANCES}/mine")
    wait_for(lambda: api.get(f"{INSTANCES}/mine").status_code == 404, what="claimed instance deleted")
    settled(api, "web", 3, replicas=3, claimed=0)

    conflict = api.post(f"{POOLS}/web/claim", json={"name": "web-0"})
    assert conflict.status_code == 409


def test_a_pool_with_the_longest_name_names_its_members_within_63_characters(api: httpx.Client) -> None:
    name = "p" * 63
    assert api.post(POOLS, json=pool(name, 2)).status_code == 201
    settled(api, name, 2, replicas=2)
    assert sorted(m["metadata"]["name"] for m in members(api, name)) == ["p" * 61 + "-0", "p" * 61 + "-1"]


def test_empty_pool_answers_503_with_retry_after_or_waits(api: httpx.Client) -> None:
    api.post(POOLS, json=pool("slow", 0))
    settled(api, "slow", 0, replicas=0)
    miss = api.post(f"{POOLS}/slow/claim")
    assert miss.status_code == 503 and miss.headers["Retry-After"] == "5"
    assert miss.headers["content-type"].startswith("application/problem+json")

    def grow() -> None:
        api.patch(f"{POOLS}/slow", json={"spec": {"size": 1}}, headers=MERGE)

    threading.Timer(0.3, grow).start()
    waited = api.post(f"{POOLS}/slow/claim", params={"waitSeconds": 20})
    assert waited.status_code == 201, waited.text
    assert api.post(f"{POOLS}/missing/claim").status_code == 404


def concurrently(
    server: Any, calls: Callable[[httpx.Client], list[httpx.Response]], clients: int
) -> list[httpx.Response]:
    """`calls` run by `clients` threads at once, each with its own connection; every answer they got."""
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def run() -> None:
        with httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=30) as client:
            mine = calls(client)
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_racing_claims_never_share_a_member(api: httpx.Client, server: Any) -> None:
    api.post(POOLS, json=pool("race", 4))
    settled(api, "race", 4)

    def claimer(client: httpx.Client) -> list[httpx.Response]:
        return [client.post(f"{POOLS}/race/claim") for _ in range(3)]

    answers = concurrently(server, claimer, clients=8)
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {201, 503} and codes[201] >= 4
    uids = [r.json()["metadata"]["uid"] for r in answers if r.status_code == 201]
    assert len(uids) == len(set(uids)), "a member was handed out twice"
    settled(api, "race", 4, replicas=4)  # the pool refills


@pytest.mark.parametrize("taking_in_seconds", [0.0, 0.0015], ids=["one-per-loop-turn", "each-after-1.5ms"])
def test_a_burst_of_claims_is_served_in_one_transaction(
    api: httpx.Client, db: Database, monkeypatch: pytest.MonkeyPatch, taking_in_seconds: float
) -> None:
    """Claims that come in while the event loop takes in a burst wait for the rest of it: one transaction
    serves them all (a first claim served alone would fight the burst for the GIL, the rest queued
    behind it). The loop takes requests in one by one, each parsed and authenticated first: a burst that
    keeps coming for ~12 ms is still one transaction, its last claims not left to a second one."""
    api.post(POOLS, json=pool("burst", 3))
    settled(api, "burst", 3)
    batches: list[int] = []
    serve = PoolService.claim_many

    def counted(self: PoolService, namespace: str, name: str, bodies: list[Any]) -> Any:
        batches.append(len(bodies))
        return serve(self, namespace, name, bodies)

    monkeypatch.setattr(PoolService, "claim_many", counted)

    async def burst() -> list[Any]:
        desk = ClaimDesk(db)
        waiting = []
        for _ in range(8):
            waiting.append(asyncio.create_task(desk.claim("default", "burst", None)))
            time.sleep(taking_in_seconds)  # the loop busy taking in the next request
            await asyncio.sleep(0)
        return list(await asyncio.gather(*waiting))

    answers = asyncio.run(burst())
    assert batches == [8]
    assert sum(answer is not None for answer in answers) == 3


def test_claims_racing_deletes_of_claimed_instances_answer_no_5xx(api: httpx.Client, server: Any) -> None:
    """16 clients claim and at once delete what they claimed (Postgres, real worker): every answer is a 201,
    a 503 with Retry-After or a 2xx delete; no deadlock reaches a client, no connection drops."""
    api.post(POOLS, json=pool("churn", 6))
    settled(api, "churn", 6)
    deadline = time.monotonic() + 8

    def churn(client: httpx.Client) -> list[httpx.Response]:
        answers = []
        while time.monotonic() < deadline:
            claimed = client.post(f"{POOLS}/churn/claim")
            answers.append(claimed)
            if claimed.status_code == 201:
                answers.append(client.delete(f"{INSTANCES}/{claimed.json()['metadata']['name']}"))
        return answers

    answers = concurrently(server, churn, clients=16)
    codes = Counter(r.status_code for r in answers)
    assert set(codes) <= {200, 201, 202, 503}, {
        r.status_code: r.text for r in answers if r.status_code >= 500
    }
    assert codes[201] >= 6 and all(r.headers.get("Retry-After") for r in answers if r.status_code == 503)


def test_scale_template_rollout_and_deletion(api: httpx.Client) -> None:
    api.post(POOLS, json=pool("roll", 3, 2))
    settled(api, "roll", 3)
    api.patch(f"{POOLS}/roll", json={"spec": {"size": 2}}, headers=MERGE)
    settled(api, "roll", 2, replicas=2)
    before = {m["metadata"]["uid"] for m in members(api, "roll")}
    new_template = {"spec": {"template": {"metadata": {"labels": {"app": "roll", "v": "2"}}}}}
    api.patch(f"{POOLS}/roll", json=new_template, headers=MERGE)

    lowest = [2]

    def rolled() -> bool:
        current, now = members(api, "roll"), status(api, "roll")
        lowest[0] = min(lowest[0], now["availableReplicas"])
        return (
            len(current) == 2
            and all(m["metadata"]["labels"].get("v") == "2" for m in current)
            and now["availableReplicas"] == 2
        )

    wait_for(rolled, timeout=40, what="template rolled through")
    assert not before & {m["metadata"]["uid"] for m in members(api, "roll")}
    assert lowest[0] >= 2, "the rollout went below minAvailable"

    kept = api.post(f"{POOLS}/roll/claim", json={"name": "keeper"}).json()
    api.delete(f"{POOLS}/roll")
    wait_for(lambda: api.get(f"{POOLS}/roll").status_code == 404, timeout=30, what="pool deleted")
    assert members(api, "roll") == []
    assert api.get(f"{INSTANCES}/keeper").json()["metadata"]["uid"] == kept["metadata"]["uid"]


def test_kubevirt_spelling_replicas_and_virtual_machine_template(api: httpx.Client) -> None:
    member_spec = {
        "terminationGracePeriodSeconds": 0,
        "domain": {"resources": {"requests": {"memory": "128Mi"}}},
    }
    labels = {"kubevirt.io/vmpool": "kv"}
    member = {"metadata": {"labels": labels}, "spec": member_spec}
    vm_template = {"metadata": {"labels": labels}, "spec": {"runStrategy": "Always", "template": member}}
    body = {
        "apiVersion": "pool.kubevirt.io/v1alpha1",
        "kind": "VirtualMachinePool",
        "metadata": {"name": "kv"},
        "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "virtualMachineTemplate": vm_template},
    }
    created = api.post(POOLS, json=body)
    assert created.status_code == 201, created.text
    settled(api, "kv", 2, replicas=2)
    assert {m["metadata"]["labels"]["kubevirt.io/vmpool"] for m in members(api, "kv")} == {"kv"}
    mismatched = body | {"metadata": {"name": "kv2"}}
    mismatched["spec"] = body["spec"] | {"selector": {"matchLabels": {"kubevirt.io/vmpool": "other"}}}
    assert api.post(POOLS, json=mismatched).status_code == 422


def test_paused_pool_and_validation(api: httpx.Client) -> None:
    api.post(POOLS, json=pool("frozen", 2, paused=True))
    frozen = wait_for(lambda: (s := status(api, "frozen")).get("conditions") and s, what="status")
    assert conditions({"status": frozen})["Paused"] == "True" and members(api, "frozen") == []
    for bad, field in [
        ({"size": 1}, "spec"),
        ({"size": 2, "replicas": 3, "template": {}}, "spec"),
        ({"size": 1, "minAvailable": 2, "template": {}}, "spec"),
        ({"size": -1, "template": {}}, "spec.size"),
        ({"size": 1, "template": {}, "warmState": "Frozen"}, "spec.warmState"),
        ({"size": 1, "template": {"spec": {"bogus": True}}}, "spec.template.spec.bogus"),
    ]:
        response = api.post(POOLS, json={"metadata": {"name": "bad"}, "spec": bad})
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["errors"][0]["field"].startswith(field)


def test_a_member_whose_image_cannot_be_pulled_waits_and_the_pool_says_why(api: httpx.Client) -> None:
    """Replacing it would only pull again: the member stays, ReplicaFailure names the registry's answer."""
    broken = pool("broken", 1)
    broken["spec"]["template"]["spec"]["volumes"] = [
        {"name": "root", "containerDisk": {"image": "no/such:1"}}
    ]
    api.post(POOLS, json=broken)
    failing = wait_for(
        lambda: (
            conditions({"status": status(api, "broken")}).get("ReplicaFailure") == "True"
            and status(api, "broken")
        ),
        timeout=30,
        what="ReplicaFailure",
    )
    condition = next(c for c in failing["conditions"] if c["type"] == "ReplicaFailure")
    assert condition["reason"] in ("ErrImagePull", "ImagePullBackOff") and "no/such:1" in condition["message"]
    assert (failing["replicas"], failing["warming"], failing["failed"]) == (1, 1, 0)


def test_claims_served_together_each_get_their_own_answer(api: httpx.Client, pg: Database) -> None:
    """A burst of claims is served in one transaction: each claim still gets its own member, its own refusal
    or nothing, in the order they came."""
    api.post(POOLS, json=pool("batch", 2))
    settled(api, "batch", 2)
    with pg.transaction() as session:
        answers = PoolService(session).claim_many(
            "default", "batch", [{"name": "mine"}, {"name": "mine"}, {"labels": 5}, {}, {}]
        )
    first, same_name, bad, second, none_left = answers
    assert isinstance(first, dict) and first["metadata"]["name"] == "mine"
    assert isinstance(same_name, AlreadyExists) and isinstance(bad, Invalid)
    assert isinstance(second, dict) and none_left is None
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert (
        api.get("/v1/namespaces/default/instances/mine").json()["metadata"]["uid"] == first["metadata"]["uid"]
    )
