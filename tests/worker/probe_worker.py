"""A worker process for the exclusivity test: a reconciler that logs when it holds each key.

usage: probe_worker.py DATABASE_URL LOGFILE SECONDS
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

from app.controllers.base import Result
from app.db import Database
from app.virt.driver import HypervisorEvent
from app.worker.runner import Worker


class Probe:
    kind = "VirtualMachineInstance"

    def __init__(self, log: str) -> None:
        self.log = log

    def reconcile(self, namespace: str, name: str) -> Result:
        start = time.time()
        time.sleep(random.uniform(0.005, 0.04))
        end = time.time()
        with Path(self.log).open("a") as out:  # one short append per pass; O_APPEND keeps lines whole
            out.write(f"{namespace}/{name} {os.getpid()} {start:.6f} {end:.6f}\n")
        return Result(requeue_after=0.01 if random.random() < 0.3 else None)

    def keys_for_events(self, session: object, events: list[tuple[str, HypervisorEvent]]) -> list[str]:
        return []


def main() -> None:
    url, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    db = Database(url)
    worker = Worker(
        db, {"VirtualMachineInstance": Probe(log)}, concurrency=4, lease_seconds=5, resync_seconds=3600
    )
    worker.start()
    time.sleep(seconds)
    worker.stop()


if __name__ == "__main__":
    main()
