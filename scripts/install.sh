#!/usr/bin/env bash
# Creates .venv and installs Corral into it (editable, with the development tools).
# libvirt-python compiles against the host's libvirt (libvirt-dev, from scripts/setup-host.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; assert sys.version_info >= (3, 11), "Corral needs Python 3.11+"'
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.corral-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
