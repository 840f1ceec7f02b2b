"""The CLI's client commands fail with one line saying what is wrong, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app import __version__

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
