#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types, and every test
# (unit, component, and integration against real Kafka, anvil, btcd and Prometheus
# that the suite starts itself on free ports).
set -euo pipefail
cd "$(dirname "$0")/../.."
./deploy/local/bootstrap.sh
python3 deploy/local/devstack.py install
# The image test runs the entry point in bubblewrap (read-only root); the chart test renders
# with helm (built once with `go install`, cached in the dev cache).
if ! command -v bwrap >/dev/null; then
  echo "== installing bubblewrap (apt-get)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq bubblewrap >/dev/null || { apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null; }
  else echo "test: bubblewrap missing: run 'sudo apt-get install -y bubblewrap'" >&2; fi
fi
./deploy/local/install-helm.sh
export PATH="${WATCHER_DEV_HOME:-$HOME/.cache/watcher-dev}/bin:$PATH"
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/python -m pytest "$@"
