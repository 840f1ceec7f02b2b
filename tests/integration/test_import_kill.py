"""kill -9 of a separate `corral worker` in the middle of a DataVolume import: the next worker starts the
import again and finishes it; nothing half-written stays (scratch files, a second volume)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import Database
from app.virt.driver import STORAGE_POOL
from app.virt.libvirt_driver import connect
from tests.conftest import ADMIN_TOKEN, bearer, wait_for
from tests.http_source import HttpSource

DVS = "/v1/namespaces/default/datavolumes"


@pytest.fixture
def db(pg: Database) -> Database:
    return pg


def start_worker(pg_url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env |= {
        "CORRAL_DATABASE_URL": pg_url,
        "CORRAL_DATA_DIR": str(data_dir),
        "CORRAL_LIBVIRT_URI": "qemu:///system",
        "CORRAL_IMPORT_ALLOWED_HOSTS": "127.0.0.1",
        "CORRAL_LOG_LEVEL": "WARNING",
    }
    with (data_dir / "worker.log").open("ab") as log:  # the child keeps its own descriptor
        corral = str(Path(sys.executable).with_name("corral"))
        return subprocess.Popen([corral, "worker"], env=env, stdout=log, stderr=log)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[HttpSource]:
    (tmp_path / "files").mkdir()
    with (tmp_path / "files" / "disk.raw").open("wb") as sink:
        sink.write(os.urandom(48 << 20))  # ~6 s at the slow route's pace
    served = HttpSource(tmp_path / "files")
    yield served
    served.stop()


@pytest.mark.qemu
def test_kill_9_mid_import_restarts_and_converges(
    pg: Database, pg_url: str, server: Any, source: HttpSource, tmp_path: Path
) -> None:
    data_dir = tmp_path / "worker"
    data_dir.mkdir()
    worker = start_worker(pg_url, data_dir)
    try:
        with httpx.Client(base_url=server.url, headers=bearer(ADMIN_TOKEN), timeout=30) as api:
            wait_for(
                lambda: api.get("/v1/nodes/local").status_code == 200, timeout=30, what="node registered"
            )
            spec = {"source": {"http": {"url": source.url("slow/disk.raw")}}}
            assert api.post(DVS, json={"metadata": {"name": "big"}, "spec": spec}).status_code == 201

            def importing() -> bool:
                status = api.get(f"{DVS}/big").json()["status"]
                return status.get("phase") == "ImportInProgress" and status.get("progress") not in (
                    "0.0%",
                    "N/A",
                )

            wait_for(importing, timeout=60, interval=0.1, what="import under way")
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            scratch = list((data_dir / "pulls").glob("dv-*"))
            assert scratch, "the killed import left its scratch directory (the next pass removes it)"
            assert api.get(f"{DVS}/big").json()["status"]["phase"] == "ImportInProgress"

            worker = start_worker(pg_url, data_dir)
            status = wait_for(
                lambda: (
                    (s := api.get(f"{DVS}/big").json()["status"])["phase"] in ("Succeeded", "Failed") and s
                ),
                timeout=120,
                interval=0.2,
                what="import finished by the next worker",
            )
            assert status["phase"] == "Succeeded", status
            uid = api.get(f"{DVS}/big").json()["metadata"]["uid"]
            assert not list((data_dir / "pulls").glob("dv-*"))
            assert source.requests.count("/slow/disk.raw") == 2  # started again from the start
            hv = connect("qemu:///system")
            try:
                path = hv.volume_path(STORAGE_POOL, f"dv-{uid}.qcow2")
                hv.refresh_pool(STORAGE_POOL)
            finally:
                hv.close()
            assert path is not None
            same = subprocess.run(
                ["qemu-img", "compare", "-q", str(source.root / "disk.raw"), path], check=False
            )
            assert same.returncode == 0
            api.delete(f"{DVS}/big")
            wait_for(lambda: api.get(f"{DVS}/big").status_code == 404, timeout=30, what="DataVolume deleted")
    finally:
        worker.kill()
        worker.wait(10)
