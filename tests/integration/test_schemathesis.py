"""Schemathesis over the whole OpenAPI document against `corral serve` (SQLite, libvirt's test driver):
every check, the examples, coverage, fuzzing and stateful phases, at least 5,000 cases, no failure.
The rules the document cannot state, and why, are in schemathesis.toml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import libvirt

from tests.integration.test_serve import TOKEN, launch, stop

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = str(Path(sys.executable).parent / "st")
SEED = "20261202"  # fixed, so a CI failure can be replayed; change it to explore further


def real_guests() -> set[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return {domain.name() for domain in conn.listAllDomains()}
    finally:
        conn.close()


def destroy_and_undefine(names: set[str]) -> None:
    conn = libvirt.open("qemu:///system")
    try:
        for name in names:
            domain = conn.lookupByName(name)
            if domain.isActive():
                domain.destroy()
            if domain.isPersistent():
                domain.undefine()
    finally:
        conn.close()


def first_sections(output: str, names: tuple[str, ...]) -> str:
    """The named sections of schemathesis' output, whole: a CI log keeps a failure's head and tail, and an
    error's traceback sits in the middle of a long run's output."""
    heading = r"^=+ ([A-Z ]+) =+$"
    sections = re.split(f"(?={heading})", output, flags=re.MULTILINE)
    return "".join(
        section
        for section in sections
        if (title := re.match(heading, section, re.MULTILINE)) and title[1] in names
    )


def test_schemathesis_finds_no_failure_over_the_whole_document(tmp_path: Path) -> None:
    guests_before = real_guests()
    proc, served = launch(tmp_path / "data", "test:///default")
    try:
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "--config-file",
                str(ROOT / "schemathesis.toml"),
                "run",
                f"{served.url}/openapi.json",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--workers",
                "2",
                "--max-examples",
                "40",
                "--seed",
                SEED,
            ],
            cwd=ROOT,  # the hooks module is imported from here
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    finally:
        stop(proc, served)
    # Generated nodes stay on the test driver (the hooks' rule): nothing may boot on this machine's libvirtd.
    leaked = real_guests() - guests_before
    destroy_and_undefine(leaked)
    assert not leaked, f"the run defined guests on qemu:///system: {sorted(leaked)}"
    report = first_sections(run.stdout, ("ERRORS", "FAILURES")) + run.stdout[-20000:] + run.stderr[-2000:]
    assert run.returncode == 0, report
    generated = re.search(r"(\d+) generated", run.stdout)
    assert generated is not None, report
    assert int(generated[1]) >= 5000, report
