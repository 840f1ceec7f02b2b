#!/usr/bin/env bash
# Serves a local OCI registry on 127.0.0.1:5055 holding the test guest as containerDisks
# (containerdisks/test-guest:latest, and containerdisks/ubuntu:22.04 so the founding manifests run verbatim:
# it is the tiny test guest, not Ubuntu). Needs scripts/setup-host.sh and scripts/install.sh first.
# Then run Corral against it:
#   CORRAL_IMAGE_REGISTRIES=127.0.0.1:5055/containerdisks CORRAL_INSECURE_REGISTRIES=127.0.0.1:5055 scripts/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m tests.registry --port "${PORT:-5055}" --dir "${REGISTRY_DIR:-/var/lib/corral/registry}"
