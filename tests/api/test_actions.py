"""Bad input on the action and claim endpoints: clear 4xx problems, nothing written."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from app.db import Database
from app.models import InstanceRow
from tests.api.test_resources import INSTANCES, problem
from tests.conftest import bearer, make_token, vmi

POOLS = "/v1/namespaces/default/pools"
POOL = {"metadata": {"name": "p"}, "spec": {"size": 0, "template": {}}}


@pytest.mark.parametrize(
    ("action", "body", "status", "field"),
    [
        ("stop", {"force": "maybe"}, 422, "force"),
        ("stop", {"gracePeriodSeconds": -1}, 422, "gracePeriodSeconds"),
        ("stop", {"bogus": 1}, 422, "bogus"),
        ("start", {"force": True}, 400, "body"),
        ("start", "", 400, "body"),  # a JSON string is a body, not the absence of one
        ("stop", "", 422, "body"),
        ("pause", [1, 2], 400, "body"),
    ],
)
def test_action_bodies_are_validated(
    api: httpx.Client, action: str, body: object, status: int, field: str
) -> None:
    api.post(INSTANCES, json=vmi("act"))
    before = api.get(f"{INSTANCES}/act").json()["metadata"]["resourceVersion"]
    answer = problem(api.post(f"{INSTANCES}/act/{action}", json=body), status)
    assert answer["errors"][0]["field"] == field
    assert api.get(f"{INSTANCES}/act").json()["metadata"]["resourceVersion"] == before


def test_actions_check_phase_existence_and_rights(api: httpx.Client, anon: httpx.Client) -> None:
    problem(api.post(f"{INSTANCES}/missing/start"), 404)
    problem(api.post(f"{INSTANCES}/act/reboot"), 404)  # not an action
    api.post(INSTANCES, json=vmi("act"))
    wrong = problem(api.post(f"{INSTANCES}/act/unpause"), 409)  # a Pending instance cannot unpause
    assert "phase Pending" in wrong["detail"] and "legal actions: stop, delete" in wrong["detail"]
    viewer = bearer(make_token(api, "v", [{"namespace": "default", "role": "viewer"}]))
    problem(anon.post(f"{INSTANCES}/act/stop", headers=viewer), 403)
    problem(anon.post(f"{INSTANCES}/act/stop"), 401)
    problem(api.post(f"{INSTANCES}/act/stop", headers={"Idempotency-Key": "k" * 300}), 422)


def test_a_pending_stop_counts_as_stopping(api: httpx.Client, db: Database) -> None:
    """Between a stop and the worker's pass the status still says Paused (or Running): an unpause, restart
    or migration accepted then would be lost when the stop lands, so they answer 409."""
    api.post(INSTANCES, json=vmi("halt"))
    with db.transaction() as session:
        row = session.scalars(select(InstanceRow).where(InstanceRow.name == "halt")).one()
        row.status, row.node_name = {"phase": "Paused", "reason": "PausedByUser"}, "n1"
    assert api.post(f"{INSTANCES}/halt/stop").status_code == 202
    refused = problem(api.post(f"{INSTANCES}/halt/unpause"), 409)
    assert "phase Stopping" in refused["detail"] and "legal actions: stop, delete" in refused["detail"]
    moving = {"metadata": {"name": "m"}, "spec": {"vmiName": "halt"}}
    assert "Stopping" in problem(api.post("/v1/namespaces/default/migrations", json=moving), 409)["detail"]
    assert api.post(f"{INSTANCES}/halt/stop").status_code == 202  # a second stop still escalates


def test_claim_input_is_validated(api: httpx.Client, anon: httpx.Client) -> None:
    assert api.post(POOLS, json=POOL).status_code == 201
    for body, field in [
        ({"name": "Bad_Name"}, "name"),
        ({"labels": {"k": "v" * 64}}, "labels"),
        ({"nope": 1}, "nope"),
        ("x", "body"),
    ]:
        answer = problem(api.post(f"{POOLS}/p/claim", json=body), 422)
        assert answer["errors"][0]["field"].startswith(field)
    problem(api.post(f"{POOLS}/p/claim", params={"waitSeconds": -1}), 422)
    problem(api.post(f"{POOLS}/p/claim", params={"waitSeconds": 301}), 422)
    problem(api.post(f"{POOLS}/nope/claim"), 404)
    problem(anon.post(f"{POOLS}/p/claim"), 401)
    viewer = bearer(make_token(api, "v", [{"namespace": "default", "role": "viewer"}]))
    problem(anon.post(f"{POOLS}/p/claim", headers=viewer), 403)
    miss = problem(api.post(f"{POOLS}/p/claim"), 503)  # nothing warm: the size is 0
    assert miss["reason"] == "ServiceUnavailable"


def test_guest_views_need_a_connected_agent(api: httpx.Client, anon: httpx.Client) -> None:
    api.post(INSTANCES, json=vmi("g"))
    for path in ("guest", "guest/osinfo", "guest/interfaces", "guest/filesystems", "guest/users"):
        answer = problem(api.get(f"{INSTANCES}/g/{path}"), 409)
        assert "AgentConnected" in answer["detail"]
    problem(api.get(f"{INSTANCES}/g/guest", params={"refresh": "true"}), 409)
    problem(api.get(f"{INSTANCES}/g/guest", params={"refresh": "maybe"}), 422)
    problem(api.get(f"{INSTANCES}/nope/guest"), 404)
    problem(api.get(f"{INSTANCES}/g/guest/kernel"), 404)
    problem(anon.get(f"{INSTANCES}/g/guest"), 401)
    other = bearer(make_token(api, "o", [{"namespace": "elsewhere", "role": "admin"}]))
    problem(anon.get(f"{INSTANCES}/g/guest", headers=other), 404)


@pytest.mark.parametrize(
    ("operation", "body", "field"),
    [
        ("exec", {}, "command"),
        ("exec", {"command": []}, "command"),
        ("exec", {"command": [""]}, "command"),
        ("exec", {"command": ["/bin/x", "a\u0000b"]}, "command"),
        ("exec", {"command": ["/bin/x"] * 65}, "command"),
        ("exec", {"command": ["/bin/x"], "timeoutSeconds": 0}, "timeoutSeconds"),
        ("exec", {"command": ["/bin/x"], "stdinBase64": "@@@"}, "body"),
        ("exec", {"command": ["/bin/x"], "stdin": "a", "stdinBase64": "YQ=="}, "body"),
        ("exec", {"command": ["/bin/x"], "shell": True}, "shell"),
        ("file-read", {"path": "relative/file"}, "path"),
        ("file-read", {"path": "/x", "maxBytes": 10**9}, "maxBytes"),
        ("file-write", {"path": "/x", "contentBase64": "not base64!"}, "contentBase64"),
        ("file-write", {"path": "/x"}, "contentBase64"),
        ("file-write", {"path": "/x", "contentBase64": "QUFB" * ((4 << 20) // 3 + 1)}, "contentBase64"),
        ("exec", {"command": ["/bin/cat"], "stdin": "x" * ((1 << 20) + 1)}, "stdin"),
    ],
)
def test_guest_operation_requests_are_validated(
    api: httpx.Client, operation: str, body: dict, field: str
) -> None:
    api.post(INSTANCES, json=vmi("g"))
    answer = problem(api.post(f"{INSTANCES}/g/guest/{operation}", json=body), 422)
    assert answer["errors"][0]["field"].startswith(field), answer["errors"]


def test_bodies_over_8_mib_are_refused(api: httpx.Client) -> None:
    api.post(INSTANCES, json=vmi("g"))
    huge = b'{"path": "/x", "contentBase64": "' + b"A" * (8 << 20) + b'"}'
    answer = problem(
        api.post(
            f"{INSTANCES}/g/guest/file-write", content=huge, headers={"Content-Type": "application/json"}
        ),
        400,
    )
    assert "8 MiB" in answer["detail"]


def test_guest_operations_need_rights_and_an_agent(api: httpx.Client, anon: httpx.Client) -> None:
    api.post(INSTANCES, json=vmi("g"))
    operator = bearer(make_token(api, "op", [{"namespace": "default", "role": "operator"}]))
    problem(anon.post(f"{INSTANCES}/g/guest/exec", json={"command": ["/bin/true"]}, headers=operator), 403)
    problem(
        anon.post(f"{INSTANCES}/g/guest/file-read", json={"path": "/etc/hostname"}, headers=operator), 403
    )
    # Operators may freeze; without a connected agent every operation answers 409 at once.
    assert (
        "AgentConnected" in problem(anon.post(f"{INSTANCES}/g/guest/freeze", headers=operator), 409)["detail"]
    )
    problem(api.post(f"{INSTANCES}/g/guest/exec", json={"command": ["/bin/true"]}), 409)
    problem(api.post(f"{INSTANCES}/g/guest/thaw", json={"unexpected": 1}), 400)
    problem(api.post(f"{INSTANCES}/nope/guest/exec", json={"command": ["/bin/true"]}), 404)
    assert api.get(f"{INSTANCES}/g/guest/operations").json() == {"items": []}
