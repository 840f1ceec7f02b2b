"""The `corral` client commands, run as a user runs them (the installed entry point, in a subprocess)
against a live API and worker on libvirt's test driver: tables, outputs, namespaces, selectors, watches,
describe, multi-document apply, every action verb, claim, delete --wait, contexts, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ADMIN_TOKEN, wait_for
from tests.controllers.test_instances import instance
from tests.controllers.test_pools import pool, settled

CORRAL = str(Path(sys.executable).with_name("corral"))


class Cli:
    def __init__(self, url: str, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        self.env = env | {
            "CORRAL_SERVER": url,
            "CORRAL_TOKEN": ADMIN_TOKEN,
            "XDG_CONFIG_HOME": str(config),
            "COLUMNS": "200",
        }

    def __call__(
        self, *args: str, stdin: str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [CORRAL, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, done.stderr
        return done


@pytest.fixture
def cli(api: httpx.Client, server: Any, tmp_path: Path) -> Cli:
    return Cli(server.url, tmp_path / "config")


def vm(name: str, run_strategy: str = "Always", **labels: str) -> dict[str, Any]:
    """An instance manifest as a user writes one: with its kind."""
    body = instance(name, run_strategy)
    body["metadata"]["labels"] = labels
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", **body}


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def test_apply_takes_files_directories_and_stdin_and_lists_every_failure(cli: Cli, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    first = vm("one", "Halted")
    (manifests / "a.yaml").write_text(yaml.safe_dump_all([first, vm("two", "Halted")]))
    (manifests / "b.json").write_text(json.dumps({"kind": "List", "items": [vm("three", "Halted")]}))
    (manifests / "notes.txt").write_text("not a manifest")
    applied = cli("apply", "-f", str(manifests))
    assert applied.stdout.splitlines() == [
        "instances/one created",
        "instances/two created",
        "instances/three created",
    ]
    again = cli("apply", "-f", str(manifests / "a.yaml"))
    assert again.stdout.splitlines() == ["instances/one unchanged", "instances/two unchanged"]
    first["metadata"]["labels"] = {"tier": "web"}
    mixed = cli("apply", "-f", "-", stdin=yaml.safe_dump_all([first, vm("Bad_Name")]), ok=False)
    assert mixed.returncode == 1 and mixed.stdout.strip() == "instances/one configured"
    assert mixed.stderr.startswith("error: instances/Bad_Name: 422 ") and "metadata.name" in mixed.stderr
    unknown = cli("apply", "-f", "-", stdin="kind: Pod\nmetadata: {name: x}\n", ok=False)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: <stdin>: unknown kind 'Pod'")


def test_get_outputs_namespaces_selectors_and_describe(cli: Cli, api: httpx.Client) -> None:
    api.post("/v1/namespaces/default/instances", json=vm("web", tier="web"))
    api.post("/v1/namespaces/other/instances", json=vm("db"))
    wait_for(
        lambda: api.get("/v1/namespaces/default/instances/web").json()["status"].get("phase") == "Running"
    )
    table = rows(cli("get", "vmi").stdout)
    assert table[0] == ["NAME", "PHASE", "NODE", "IP", "READY", "AGE"]
    assert table[1][:3] == ["web", "Running", "td"] and table[1][-1].endswith("s")
    assert rows(cli("get", "vmi", "-o", "wide").stdout)[0][-2:] == ["AGENT", "DOMAIN"]
    assert cli("get", "vmi", "-n", "other", "-o", "name").stdout.split() == ["instances/db"]
    everywhere = rows(cli("get", "instances", "-A").stdout)
    assert everywhere[0][0] == "NAMESPACE" and [r[:2] for r in everywhere[1:]] == [
        ["default", "web"],
        ["other", "db"],
    ]
    assert cli("get", "vmi", "-A", "-l", "tier=web", "-o", "name").stdout.split() == ["instances/web"]
    assert json.loads(cli("get", "vmi", "web", "-o", "json").stdout)["metadata"]["name"] == "web"
    assert yaml.safe_load(cli("get", "vmi", "-o", "yaml").stdout)["items"][0]["metadata"]["name"] == "web"
    empty = cli("get", "pools")
    assert empty.stdout == "" and empty.stderr.strip() == "No pools found in namespace default."
    nodes = rows(cli("get", "nodes").stdout)
    assert nodes[0] == ["NAME", "STATUS", "READY", "AGE"] and nodes[1][:3] == ["td", "Ready", "True"]

    described = cli("describe", "vmi", "web").stdout
    for line in ("Name:", "Labels:         tier=web", "Spec:", "Status:", "Conditions:", "Phase history:"):
        assert line.split()[0] in described, described
    assert "  Run strategy:  Always" in described and "  Node:   td" in described
    condition = next(line.split() for line in described.splitlines() if line.strip().startswith("Ready "))
    assert condition[:3] == ["Ready", "True", "Running"] and condition[3].endswith("s")
    history = described.split("Phase history:")[1].split()
    assert history[0::4][:4] == ["Scheduling", "Scheduled", "Starting", "Running"]


def test_watch_prints_each_change(cli: Cli, api: httpx.Client) -> None:
    api.post("/v1/namespaces/default/instances", json=vm("watched", "Halted"))
    watcher = subprocess.Popen(
        [CORRAL, "get", "vmi", "watched", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().split()[0] == "NAME"  # the list first
        assert watcher.stdout.readline().split()[0] == "watched"
        api.post("/v1/namespaces/default/instances/watched/start")
        seen: list[str] = []
        deadline = time.monotonic() + 30
        while "Running" not in seen and time.monotonic() < deadline:
            seen.append(watcher.stdout.readline().split()[1])
        assert "Running" in seen
        api.delete("/v1/namespaces/default/instances/watched")
        while (line := watcher.stdout.readline().split()) and line[-1] != "DELETED":
            pass
        assert line[0] == "watched" and line[-1] == "DELETED"
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_every_action_verb_and_delete_wait(cli: Cli, api: httpx.Client) -> None:
    api.post("/v1/namespaces/default/instances", json=vm("acted"))
    wait_for(
        lambda: api.get("/v1/namespaces/default/instances/acted").json()["status"].get("phase") == "Running"
    )
    for verb, phase in (
        ("pause", "Paused"),
        ("unpause", "Running"),
        ("stop", "Stopped"),
        ("start", "Running"),
        ("restart", "Running"),
        ("softreboot", "Running"),
    ):
        assert cli(verb, "acted", "--wait", "--timeout", "30").stdout.strip() == f"instances/acted {phase}"
    assert cli("stop", "acted", "--force").stdout.strip() == "instances/acted stop requested"
    refused = cli("pause", "acted", ok=False)  # a pending stop counts as Stopping
    assert refused.returncode == 1 and refused.stderr.startswith("error: 409 cannot pause instance 'acted'")
    assert cli("delete", "vmi", "acted", "--wait").stdout.strip() == "instances/acted deleted"
    assert api.get("/v1/namespaces/default/instances/acted").status_code == 404
    missing = cli("delete", "vmi", "acted", ok=False)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "error: 404 VirtualMachineInstance 'acted' not found in namespace 'default'"
    )


def test_claim_waits_for_a_member(cli: Cli, api: httpx.Client) -> None:
    api.post("/v1/namespaces/default/pools", json=pool("cold", 0))
    empty = cli("claim", "cold", ok=False)
    assert empty.returncode == 1 and empty.stderr.startswith("error: 503 pool 'cold' has no ready member")
    # The pool grows while the claim waits: the claim takes the first member that becomes ready.
    waiting = subprocess.Popen(
        [CORRAL, "claim", "cold", "--wait", "60", "--name", "mine", "-l", "team=a"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli.env,
    )
    time.sleep(1)
    api.patch(
        "/v1/namespaces/default/pools/cold",
        json={"spec": {"size": 1}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert out.strip() == "instances/mine claimed from pools/cold"
    assert api.get("/v1/namespaces/default/instances/mine").json()["metadata"]["labels"]["team"] == "a"
    settled(api, "cold", 1, claimed=1)
    named = cli("claim", "cold", "--wait", "30", "-o", "name")
    assert named.stdout.strip().startswith("instances/cold-")
    bad = cli("claim", "cold", "-l", "nolabel", ok=False)
    assert bad.returncode == 2 and "expected k=v" in bad.stderr


def test_contexts_are_saved_and_used(cli: Cli, api: httpx.Client, tmp_path: Path) -> None:
    api.post("/v1/namespaces/team/instances", json=vm("ctx", "Halted"))
    server, token = cli.env.pop("CORRAL_SERVER"), cli.env.pop("CORRAL_TOKEN")
    nowhere = cli("get", "vmi", ok=False)  # no context: the local default, where nothing listens
    assert nowhere.returncode == 1 and nowhere.stderr.startswith(
        "error: cannot reach the Corral API at http://"
    )
    assert cli(
        "config", "set-context", "lab", "--server", server, "--token", token, "-n", "team"
    ).stdout.strip() == ("context lab saved (current)")
    assert cli("get", "vmi", "-o", "name").stdout.split() == ["instances/ctx"]
    saved = tmp_path / "config" / "corral" / "config.yaml"
    assert saved.stat().st_mode & 0o777 == 0o600
    cli("config", "set-context", "elsewhere", "--server", "http://127.0.0.1:9")
    listed = rows(cli("config", "get-contexts").stdout)
    assert listed == [
        ["CURRENT", "NAME", "SERVER", "NAMESPACE", "TOKEN"],
        ["elsewhere", "http://127.0.0.1:9"],
        ["*", "lab", server, "team", "set"],
    ]
    assert token not in saved.read_text().replace(token, "", 1)  # stored once, never printed
    cli("config", "use-context", "elsewhere")
    assert cli("config", "current-context").stdout.strip() == "elsewhere"
    assert cli("get", "vmi", "--context", "lab", "-o", "name").stdout.split() == ["instances/ctx"]
    assert cli("get", "vmi", "--context", "nope", ok=False).stderr.startswith("error: no context 'nope'")
    cli("config", "delete-context", "elsewhere")
    assert cli("config", "current-context", ok=False).returncode == 1
