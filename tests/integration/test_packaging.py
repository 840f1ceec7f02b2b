"""The wheel as a user gets it: built from the repository, installed into an empty virtualenv, `corral serve`
on a fresh SQLite file starts, migrates to the head revision and answers ready."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from app.migrate import head_revision
from tests.conftest import wait_for
from tests.integration.test_serve import answers_ready, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_into_an_empty_venv_and_serves_a_fresh_database(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], check=True, timeout=600)
    (wheel,) = wheels.glob("corral-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "app/migrations/env.py" in names
    assert len([n for n in names if n.startswith("app/migrations/versions/")]) == len(
        list((ROOT / "migrations" / "versions").glob("*.py"))
    )

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "--disable-pip-version-check", "-q", "install", str(wheel)],
        check=True,
        timeout=900,
    )
    version = subprocess.run([bin_dir / "corral", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("corral ")

    data, port = tmp_path / "data", free_port()
    settings = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    settings |= {"CORRAL_DATA_DIR": str(data), "CORRAL_LIBVIRT_URI": "test:///default"}
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(
            [bin_dir / "corral", "serve", "--port", str(port)],
            env=settings,
            cwd=tmp_path,  # not the repository: nothing may come from the source tree
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: answers_ready(url), timeout=60, what=f"the installed corral ready ({tmp_path}/serve.log)"
        )
        with sqlite3.connect(data / "corral.db") as conn:
            (revision,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert revision == head_revision()
    finally:
        serve.terminate()
        serve.wait(20)
