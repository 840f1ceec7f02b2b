"""The CLI's client commands fail with one line saying what is wrong, never a traceback; `get` shows each
kind's own columns."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app import __version__
from app.cli.tables import age, table

CORRAL = str(Path(sys.executable).with_name("corral"))
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def corral(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    return subprocess.run([CORRAL, *args], capture_output=True, text=True, env=env, timeout=30, check=False)


def test_an_unreachable_server_is_one_line() -> None:
    done = corral("get", "instances", "--server", NOWHERE)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"error: cannot reach the Corral API at {NOWHERE}")
    assert "HTTP Request" not in done.stderr  # no per-request log lines


def test_a_missing_manifest_is_one_line() -> None:
    done = corral("apply", "-f", "/no/such/manifest.yaml", "--server", NOWHERE)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: No such file or directory: /no/such/manifest.yaml"


def test_version_and_server_help() -> None:
    assert corral("--version").stdout.strip() == f"corral {__version__}"
    assert "the Corral API's URL" in corral("get", "--help").stdout


def test_ages_read_like_kubectls() -> None:
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    for delta, shown in (
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=12), "12m"),
        (timedelta(hours=5), "5h"),
        (timedelta(days=3, hours=4), "3d"),
    ):
        assert age((now - delta).isoformat().replace("+00:00", "Z"), now) == shown
    assert age(None) == ""


def test_each_kind_has_its_columns() -> None:
    created = datetime.now(UTC).isoformat()
    pool = {
        "metadata": {"name": "web", "creationTimestamp": created},
        "status": {"replicas": 3, "readyReplicas": 2, "availableReplicas": 2, "claimed": 1},
    }
    rows = table("pools", [pool]).splitlines()
    assert rows[0].split() == ["NAME", "DESIRED", "READY", "AVAILABLE", "CLAIMED", "AGE"]
    assert rows[1].split()[:5] == ["web", "3", "2", "2", "1"]
    vmi = {
        "metadata": {"name": "a", "namespace": "ns", "creationTimestamp": created},
        "status": {
            "phase": "Running",
            "nodeName": "local",
            "interfaces": [{"name": "default"}, {"ipAddress": "10.88.0.5"}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "AgentConnected", "status": "True"}],
        },
    }
    wide = table("instances", [vmi], wide=True, namespaces=True).splitlines()
    assert wide[0].split() == ["NAMESPACE", "NAME", "PHASE", "NODE", "IP", "READY", "AGE", "AGENT", "DOMAIN"]
    assert wide[1].split()[:6] == ["ns", "a", "Running", "local", "10.88.0.5", "True"]
    migration = {
        "metadata": {"name": "m"},
        "spec": {"vmiName": "a"},
        "status": {
            "phase": "Running",
            "migrationState": {
                "sourceNode": "n1",
                "targetNode": "n2",
                "dataTotalBytes": 200,
                "dataProcessedBytes": 50,
            },
        },
    }
    assert table("migrations", [migration]).splitlines()[1].split() == [
        "m",
        "a",
        "Running",
        "n1",
        "n2",
        "25%",
    ]
    secret = {"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "", "b": ""}}
    assert table("secrets", [secret]).splitlines()[1].split() == ["s", "Opaque", "2"]


def test_every_command_has_help_and_bad_usage_exits_2() -> None:
    from app.cli import root

    for name in root.list_commands(None):  # type: ignore[arg-type]
        helped = corral(name, "--help")
        assert helped.returncode == 0 and helped.stdout.startswith(f"Usage: corral {name}"), name
    misused = corral("get")
    assert misused.returncode == 2 and "Missing argument 'RESOURCE'" in misused.stderr
    assert "Traceback" not in misused.stderr


def test_shell_completion() -> None:
    for shell in ("bash", "zsh", "fish"):
        script = corral("completion", shell)
        assert script.returncode == 0 and "_CORRAL_COMPLETE" in script.stdout, shell
    env = {
        **os.environ,
        "_CORRAL_COMPLETE": "bash_complete",
        "COMP_WORDS": "corral get in",
        "COMP_CWORD": "2",
    }
    offered = subprocess.run([CORRAL], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert offered.stdout.split() == ["plain,instances"]
    env |= {"COMP_WORDS": "corral des", "COMP_CWORD": "1"}
    offered = subprocess.run([CORRAL], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert offered.stdout.split() == ["plain,describe"]


def test_a_closed_pipe_is_not_an_error() -> None:
    piped = subprocess.run(
        f"{CORRAL} openapi | head -c 10", shell=True, capture_output=True, text=True, timeout=60, check=False
    )
    assert piped.stdout == '{\n  "compo' and piped.stderr == ""


def test_a_broken_config_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "corral").mkdir()
    (tmp_path / "corral" / "config.yaml").write_text("- not\n- a mapping\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")} | {
        "XDG_CONFIG_HOME": str(tmp_path)
    }
    done = subprocess.run(
        [CORRAL, "get", "vmi"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("config.yaml: expected a mapping with 'contexts'")
