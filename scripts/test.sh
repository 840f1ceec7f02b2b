#!/usr/bin/env bash
# Sets up this host (libvirt/QEMU, PostgreSQL, the test guest image), installs Corral, then runs the static
# checks and the whole test suite against real PostgreSQL, libvirtd and QEMU. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
scripts/install.sh
echo "[test] ruff, mypy, import-linter" >&2
.venv/bin/ruff check app tests migrations bench
.venv/bin/ruff format --check app tests migrations bench
.venv/bin/mypy
.venv/bin/lint-imports
echo "[test] pytest" >&2
exec .venv/bin/pytest "$@"
