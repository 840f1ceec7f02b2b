#!/usr/bin/env bash
# Sets up this host (libvirt/QEMU, the test guest image) and runs Corral on its embedded defaults:
# a SQLite file in ./.corral and the local libvirtd. Extra arguments go to `corral serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  CORRAL_SETUP_POSTGRES=0 scripts/setup-host.sh
else
  echo "[serve] not root: skipping host setup (libvirt/QEMU must already be installed and running)" >&2
fi
scripts/install.sh
exec .venv/bin/corral serve "$@"
