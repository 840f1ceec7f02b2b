"""The CLI in a real terminal (tmux): `corral claim --wait` draws its live display in place, and a Ctrl-C
ends it with exit 130 and nothing claimed (the claim in flight is answered first, never abandoned)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.test_serve import CORRAL, TOKEN, Serve, launch, stop

POOLS = "/v1/namespaces/default/pools"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Serve]:
    proc, serve = launch(tmp_path / "data", "test:///default")
    try:
        yield serve
    finally:
        stop(proc, serve)


class Terminal:
    """One tmux session of 120x30, running a shell command."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        if shutil.which("tmux") is None:
            raise AssertionError("tmux is not installed (scripts/setup-host.sh installs it)")
        self.session = f"corral-{uuid.uuid4().hex[:8]}"
        exports = [f"-e{k}={v}" for k, v in env.items()]
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.session, "-x", "120", "-y", "30", *exports, command],
            check=True,
        )

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-J", "-t", self.session],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.session, *keys], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.session], check=False)


def test_claim_wait_draws_live_and_ctrl_c_claims_nothing(served: Serve) -> None:
    pool = {"metadata": {"name": "cold"}, "spec": {"size": 0, "template": {"spec": {}}}}
    assert served.client.post(POOLS, json=pool).status_code == 201
    env = {"CORRAL_SERVER": served.url, "CORRAL_TOKEN": TOKEN, "TERM": "xterm-256color"}
    terminal = Terminal(f"{CORRAL} claim cold --wait 120; echo exit=$?; sleep 600", env)
    try:
        waiting = "waiting for a ready member of pools/cold: 0 available, 0 warming;"
        first = wait_for(
            lambda: waiting in (s := terminal.screen()) and s, timeout=30, what="the live display"
        )
        # Redrawn in place: the seconds left change, and the line is never repeated down the screen.
        later = wait_for(
            lambda: (s := terminal.screen()) != first and waiting in s and s, timeout=15, what="a redraw"
        )
        assert later.count(waiting) == 1, later
        terminal.keys("C-c")
        ended = wait_for(lambda: "exit=" in (s := terminal.screen()) and s, timeout=30, what="the end")
        assert "exit=130" in ended and "interrupted: nothing claimed from pools/cold" in ended, ended
        assert waiting not in ended and "Traceback" not in ended  # the live line made way for the outcome
    finally:
        terminal.close()
    assert served.client.get(f"{POOLS}/cold").json()["status"].get("claimed", 0) == 0
    claimed = served.client.get(
        "/v1/namespaces/default/instances", params={"labelSelector": "corral.dev/claimed-from=cold"}
    )
    assert claimed.json()["items"] == []
