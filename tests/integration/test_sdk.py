"""A Python SDK generated from openapi/openapi.json by openapi-python-client, driven against a live Corral
with a real TCG guest and its qemu-guest-agent: every operation of the document goes through the SDK's
typed functions and models (streams and the Prometheus text excepted), and the generator warns of nothing."""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from app.cli import openapi_document
from tests.conftest import ADMIN_TOKEN, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NS = "default"
GUEST_SPEC = {"domain": {"resources": {"requests": {"memory": "192Mi"}}}}
# Not driven here, each for its reason: a watch streams (the list operations are driven without `watch`),
# /metrics is Prometheus text, and an upload's body is a disk image (tests/integration/test_datavolumes_qemu).
NOT_DRIVEN = {"metrics", "uploadDataVolume"}


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("sdk")
    generated = subprocess.run(
        [
            BIN / "openapi-python-client",
            "generate",
            "--path",
            ROOT / "openapi" / "openapi.json",
            "--meta",
            "none",
            "--output-path",
            out / "corral_client",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},  # it formats with ruff
        timeout=300,
        check=False,
    )
    report = generated.stdout + generated.stderr
    assert generated.returncode == 0, report
    assert "warning" not in report.lower(), report  # no schema or body it had to drop
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("corral_client")
    finally:
        sys.path.remove(str(out))


class Driver:
    """Calls SDK operations by module path, checks the typed answer, and records which operations ran."""

    def __init__(self, sdk: ModuleType, base_url: str) -> None:
        self.sdk = sdk
        self.client = sdk.AuthenticatedClient(
            base_url=base_url, token=ADMIN_TOKEN, timeout=httpx.Timeout(120), raise_on_unexpected_status=True
        )
        self.models = importlib.import_module("corral_client.models")
        self.driven: set[str] = set()

    def model(self, name: str, data: dict[str, Any]) -> Any:
        return getattr(self.models, name).from_dict(data)

    def __call__(self, operation: str, expect: str | None = None, status: int = 200, **kwargs: Any) -> Any:
        """Run `operation` (e.g. "instances.create_instance"); `expect` names the model the answer parses
        into (None: no body), `status` the HTTP status."""
        module = importlib.import_module(f"corral_client.api.{operation}")
        response = module.sync_detailed(client=self.client, **kwargs)
        problem = response.parsed if isinstance(response.parsed, self.models.Problem) else None
        assert response.status_code == status, f"{operation}: {response.status_code} {problem or ''}"
        if expect is not None:
            assert type(response.parsed).__name__ == expect, (operation, type(response.parsed))
        self.driven.add(operation.rsplit(".", 1)[1])
        return response.parsed

    def resend(
        self,
        group: str,
        kind: str,
        answer: str,
        body_model: str,
        name: str,
        edit: Callable[[dict[str, Any]], dict[str, Any]] = lambda spec: spec,
        **scope: str,
    ) -> Any:
        """Read an object and replace it with its own spec, `edit`ed (a GET-edit-PUT round trip), labels
        dropped."""
        spec = self(f"{group}.read_{kind}", answer, name=name, **scope).to_dict()["spec"]
        body = self.model(body_model, {"metadata": {"name": name}, "spec": edit(spec)})
        return self(f"{group}.replace_{kind}", answer, name=name, body=body, **scope)

    def lifecycle(
        self, group: str, kind: str, answer: str, body_model: str, body: dict[str, Any], **scope: str
    ) -> None:
        """Create, read, patch (a label), replace, list and delete one object of a kind."""
        name = body["metadata"]["name"]
        self(f"{group}.create_{kind}", answer, 201, body=self.model(body_model, body), **scope)
        self(f"{group}.read_{kind}", answer, name=name, **scope)
        labels = self.model(f"Patch{body_model}", {"metadata": {"labels": {"a": "b"}}})
        assert (
            self(f"{group}.patch_{kind}", answer, name=name, body=labels, **scope).metadata.labels["a"] == "b"
        )
        self(f"{group}.replace_{kind}", answer, name=name, body=self.model(body_model, body), **scope)
        listed = self(f"{group}.list_{kind}s", f"{answer.removesuffix('Object')}List", **scope)
        assert name in [item.metadata.name for item in listed.items]
        if scope:
            everywhere = self(
                f"{group}.list_{kind}s_for_all_namespaces", f"{answer.removesuffix('Object')}List"
            )
            assert name in [item.metadata.name for item in everywhere.items]
        self(f"{group}.delete_{kind}", answer, 202, name=name, **scope)


def camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(part.title() for part in rest)


def test_the_generated_sdk_drives_every_operation(sdk: ModuleType, api: httpx.Client) -> None:
    run = Driver(sdk, str(api.base_url))
    model = run.model

    # -- system and tokens ----------------------------------------------------------------------------
    run("system.healthz", "HealthzResponseHealthz")
    run("system.readyz")
    assert run("tokens.who_am_i", "WhoAmI").name == "bootstrap-admin"
    created = run(
        "tokens.create_token",
        "TokenCreated",
        201,
        body=model("TokenRequest", {"name": "sdk-viewer", "grants": [{"namespace": NS, "role": "viewer"}]}),
    )
    assert created.token.startswith("crl_")
    assert "sdk-viewer" in [t.name for t in run("tokens.list_tokens", "TokenList").items]
    run("tokens.delete_token", None, 204, name="sdk-viewer")

    # -- instances, their actions and the guest agent ----------------------------------------------
    body = {"metadata": {"name": "sdk-vm", "labels": {"from": "sdk"}}, "spec": GUEST_SPEC}
    made = run("instances.create_instance", "Instance", 201, namespace=NS, body=model("InstanceBody", body))
    assert made.metadata.name == "sdk-vm"

    def phase(name: str = "sdk-vm") -> str:
        return str(run("instances.read_instance", "Instance", namespace=NS, name=name).status.phase)

    def settles(want: str, name: str = "sdk-vm") -> None:
        wait_for(lambda: phase(name) == want, timeout=180, interval=0.5, what=f"{name} {want}")

    settles("Running")
    listed = run("instances.list_instances", "InstanceList", namespace=NS, label_selector="from=sdk")
    assert [i.metadata.name for i in listed.items] == ["sdk-vm"]
    everywhere = run("instances.list_instances_for_all_namespaces", "InstanceList", label_selector="from=sdk")
    assert [i.metadata.namespace for i in everywhere.items] == [NS]
    patched = run(
        "instances.patch_instance",
        "Instance",
        namespace=NS,
        name="sdk-vm",
        body=model("PatchInstanceBody", {"metadata": {"labels": {"tier": "web"}}}),
    )
    assert patched.metadata.labels.additional_properties == {"from": "sdk", "tier": "web"}
    replaced = run.resend("instances", "instance", "Instance", "InstanceBody", "sdk-vm", namespace=NS)
    assert replaced.metadata.labels.additional_properties == {}

    def agent_connected() -> bool:
        status = run("instances.read_instance", "Instance", namespace=NS, name="sdk-vm").status
        return any(c.type_ == "AgentConnected" and c.status == "True" for c in status.conditions)

    wait_for(agent_connected, timeout=120, interval=0.5, what="AgentConnected")
    guest = run("guest.read_instance_guest", "GuestView", namespace=NS, name="sdk-vm", refresh=True)
    assert guest.agent_version.version
    for section, expected in (
        ("os_info", "OSInfo"),
        ("interfaces", "Items"),
        ("filesystems", "Items"),
        ("users", "Items"),
    ):
        run(f"guest.read_instance_guest_{section}", expected, namespace=NS, name="sdk-vm")
    ran = run(
        "guest.guest_exec",
        "ExecResult",
        namespace=NS,
        name="sdk-vm",
        body=model("ExecRequest", {"command": ["/bin/sh", "-c", "echo hello; exit 3"]}),
    )
    assert (ran.exit_code, ran.stdout, ran.timed_out) == (3, "hello\n", False)
    payload = b"\x00corral\xff"
    written = run(
        "guest.guest_file_write",
        "FileWriteResult",
        namespace=NS,
        name="sdk-vm",
        body=model(
            "FileWriteRequest", {"path": "/tmp/sdk.bin", "contentBase64": base64.b64encode(payload).decode()}
        ),
    )
    assert written.size == len(payload)
    read = run(
        "guest.guest_file_read",
        "FileReadResult",
        namespace=NS,
        name="sdk-vm",
        body=model("FileReadRequest", {"path": "/tmp/sdk.bin"}),
    )
    assert base64.b64decode(read.content_base_64) == payload
    for verb, state in (("freeze", "frozen"), ("thaw", "thawed")):
        answer = run(f"guest.guest_{verb}", "FreezeResult", namespace=NS, name="sdk-vm")
        assert answer.fs_freeze_status.value == state and answer.filesystems >= 1
    history = run("guest.list_guest_operations", "OperationList", namespace=NS, name="sdk-vm")
    assert [op.kind for op in history.items][:3] == ["thaw", "freeze", "file-read"]

    for action, after in (("pause", "Paused"), ("unpause", "Running"), ("stop", "Stopped")):
        run(f"instances.{action}_instance", "Instance", 202, namespace=NS, name="sdk-vm")
        settles(after)
    run("instances.start_instance", "Instance", 202, namespace=NS, name="sdk-vm")
    settles("Running")
    restarts = run("instances.read_instance", "Instance", namespace=NS, name="sdk-vm").status
    before = len(restarts.phase_transition_timestamps)
    run("instances.restart_instance", "Instance", 202, namespace=NS, name="sdk-vm")
    wait_for(
        lambda: (
            len(
                (
                    i := run("instances.read_instance", "Instance", namespace=NS, name="sdk-vm")
                ).status.phase_transition_timestamps
            )
            > before
            and i.status.phase == "Running"
        ),
        timeout=180,
        interval=0.5,
        what="sdk-vm running again after the restart",
    )
    wait_for(agent_connected, timeout=120, interval=0.5, what="AgentConnected after the restart")
    run("instances.soft_reboot_instance", "Instance", 202, namespace=NS, name="sdk-vm")

    # -- migrations (one node: each fails Unschedulable, which is still a typed object) -------------
    shortcut = run("migrations.migrate_instance", "Migration", 201, namespace=NS, name="sdk-vm")
    named = model("MigrationBody", {"metadata": {"name": "sdk-move"}, "spec": {"vmiName": "sdk-vm"}})

    def finished(name: str) -> Any:
        return wait_for(
            lambda: (
                (m := run("migrations.read_migration", "Migration", namespace=NS, name=name)).status.phase
                in ("Succeeded", "Failed")
                and m
            ),
            timeout=60,
            what=f"migration {name} finished",
        )

    assert finished(shortcut.metadata.name).status.reason == "Unschedulable"
    run("migrations.create_migration", "Migration", 201, namespace=NS, body=named)
    finished("sdk-move")
    run("migrations.cancel_migration", None, 409, namespace=NS, name="sdk-move")  # already over
    run(
        "migrations.patch_migration",
        "Migration",
        namespace=NS,
        name="sdk-move",
        body=model("PatchMigrationBody", {"metadata": {"labels": {"seen": "yes"}}}),
    )
    run.resend("migrations", "migration", "Migration", "MigrationBody", "sdk-move", namespace=NS)
    assert len(run("migrations.list_migrations", "MigrationList", namespace=NS).items) == 2
    assert len(run("migrations.list_migrations_for_all_namespaces", "MigrationList").items) == 2
    run("migrations.delete_migration", "Migration", 202, namespace=NS, name="sdk-move")

    # -- pools and claims -----------------------------------------------------------------------------
    pool = {
        "metadata": {"name": "sdk-pool"},
        "spec": {"size": 1, "template": {"metadata": {"labels": {"app": "sdk"}}, "spec": GUEST_SPEC}},
    }
    run("pools.create_pool", "Pool", 201, namespace=NS, body=model("PoolBody", pool))
    claimed = run(
        "pools.claim_pool",
        "Instance",
        201,
        namespace=NS,
        name="sdk-pool",
        body=model("ClaimRequest", {"name": "sdk-claimed"}),
        wait_seconds=180,
    )
    assert claimed.status.phase == "Running"
    run(
        "pools.patch_pool",
        "Pool",
        namespace=NS,
        name="sdk-pool",
        body=model("PatchPoolBody", {"spec": {"autoReplenish": False}}),
    )
    emptied = run.resend(
        "pools", "pool", "Pool", "PoolBody", "sdk-pool", namespace=NS, edit=lambda spec: spec | {"size": 0}
    )
    assert emptied.to_dict()["spec"]["size"] == 0
    assert [p.metadata.name for p in run("pools.list_pools", "PoolList", namespace=NS).items] == ["sdk-pool"]
    assert [p.metadata.name for p in run("pools.list_pools_for_all_namespaces", "PoolList").items] == [
        "sdk-pool"
    ]
    run("pools.delete_pool", "Pool", 202, namespace=NS, name="sdk-pool")
    run("instances.delete_instance", "Instance", 202, namespace=NS, name="sdk-claimed")

    # -- Secrets, Networks, DataVolumes: the six object operations each --------------------------------
    secret = {"metadata": {"name": "sdk-secret"}, "stringData": {"userdata": "#cloud-config\n"}}
    run.lifecycle("secrets", "secret", "SecretObject", "SecretBody", secret, namespace=NS)
    network = {"metadata": {"name": "sdk-net"}, "spec": {"nat": {"cidr": "10.77.0.0/24"}}}
    run.lifecycle("networks", "network", "NetworkObject", "NetworkBody", network)
    disk = {
        "metadata": {"name": "sdk-disk"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "16Mi"}}}},
    }
    run.lifecycle("datavolumes", "data_volume", "DataVolume", "DataVolumeBody", disk, namespace=NS)

    # -- host devices and their permission -------------------------------------------------------------
    permitted = run("devices.read_permitted_host_devices", "PermittedHostDevices")
    run(
        "devices.replace_permitted_host_devices",
        "PermittedHostDevices",
        body=model("PermittedHostDevices", permitted.to_dict()),
    )
    on_node = run("devices.list_node_devices", "HostDeviceList", name="local")
    assert on_node.items, "the node reports its PCI devices"
    first = on_node.items[0].spec.device_name
    run("devices.read_node_device", "HostDevice", name="local", device=first)
    run("devices.list_host_devices", "HostDeviceList")

    # -- nodes and drains (last: a drain cordons the node) ----------------------------------------------
    assert [n.metadata.name for n in run("nodes.list_nodes", "NodeList").items] == ["local"]
    run(
        "nodes.patch_node",
        "Node",
        name="local",
        body=model("PatchNodeBody", {"metadata": {"labels": {"rack": "a"}}}),
    )
    run.resend("nodes", "node", "Node", "NodeBody", "local")
    drain = run("nodes.drain_node", "DrainStatus", 202, name="local")
    assert drain.to_dict()["unschedulable"] is True
    run("nodes.read_node_drain", "DrainStatus", name="local")
    run("nodes.cancel_node_drain", "DrainStatus", name="local")
    run(
        "nodes.patch_node",
        "Node",
        name="local",
        body=model("PatchNodeBody", {"spec": {"unschedulable": False}}),
    )
    spare = {"metadata": {"name": "sdk-node"}, "spec": {"uri": "test:///default"}}
    run("nodes.create_node", "Node", 201, body=model("NodeBody", spare))
    run("nodes.delete_node", "Node", 202, name="sdk-node")
    run("instances.delete_instance", "Instance", 202, namespace=NS, name="sdk-vm")

    document = json.loads(openapi_document())
    every = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    assert {camel(name) for name in run.driven} == every - NOT_DRIVEN


TYPESCRIPT_USE = """
import type { components, paths } from "./corral";
type Instance = components["schemas"]["Instance"];
type Create = paths["/v1/namespaces/{namespace}/instances"]["post"];
type Exec = paths["/v1/namespaces/{namespace}/instances/{name}/guest/exec"]["post"];
export const body: Create["requestBody"]["content"]["application/json"] = {
  metadata: { name: "web" },
  spec: { domain: { resources: { requests: { memory: "1Gi" } } } },
};
export const phase: Instance["status"]["phase"] = "Running";
export const ran: Exec["responses"]["200"]["content"]["application/json"]["exitCode"] = 0;
export const problem: components["schemas"]["Problem"]["detail"] = "why";
"""


# A default makes a field optional to send, not always present: requests and answers share the schemas.
LENIENT = ["--default-non-nullable", "false"]


def test_the_document_type_checks_as_typescript(tmp_path: Path) -> None:
    package = {
        "private": True,
        "devDependencies": {"openapi-typescript": "7.13.0", "typescript": "5.9.3"},
    }
    (tmp_path / "package.json").write_text(json.dumps(package))
    npm = ["npm", "--no-audit", "--no-fund", "--loglevel=error"]
    subprocess.run([*npm, "install"], cwd=tmp_path, check=True, timeout=600)
    bin_dir = tmp_path / "node_modules" / ".bin"
    subprocess.run(
        [bin_dir / "openapi-typescript", ROOT / "openapi" / "openapi.json", "-o", "corral.d.ts", *LENIENT],
        cwd=tmp_path,
        check=True,
        timeout=120,
    )
    types = (tmp_path / "corral.d.ts").read_text()
    assert "app__schemas__" not in types and "MigrationStatus" in types
    (tmp_path / "use.ts").write_text(TYPESCRIPT_USE)
    checked = subprocess.run(
        [bin_dir / "tsc", "--noEmit", "--strict", "use.ts", "corral.d.ts"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
