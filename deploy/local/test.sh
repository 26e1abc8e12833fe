#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types, and every test
# (unit, component, and integration against real Kafka, anvil, btcd and Prometheus
# that the suite starts itself on free ports).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The C extensions (chains/bitcoin/_blockwalk.c, watcher/core/_probe.c) need a C compiler and
# Python's headers; the suite runs with WATCHER_BTC_WALK=compiled, so a build without them fails
# here rather than testing only the slow fallback.
py_h=$(python3 -c 'import os, sysconfig; print(os.path.join(sysconfig.get_paths()["include"], "Python.h"))')
if ! command -v cc >/dev/null || [ ! -f "$py_h" ]; then
  echo "== installing a C compiler and Python headers (apt-get)"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq gcc libc6-dev python3-dev >/dev/null || { apt-get update -qq && apt-get install -y -qq gcc libc6-dev python3-dev >/dev/null; }
  else echo "test: no C compiler: run 'sudo apt-get install -y gcc libc6-dev python3-dev'" >&2; fi
fi
./deploy/local/bootstrap.sh
if ! .venv/bin/python -c 'import chains.bitcoin._blockwalk, watcher.core._probe' 2>/dev/null; then
  rm -f .venv/.installed-*  # built before the compiler was there: build again
  ./deploy/local/bootstrap.sh
fi
export WATCHER_BTC_WALK=compiled
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
echo "== pytest: Bitcoin parsing with the interpreted walk (the fallback; ~10 s)"
WATCHER_BTC_WALK=interpreted .venv/bin/python -m pytest -q tests/unit/test_btc_block.py \
  tests/unit/test_btc_walker.py tests/component/test_bitcoin_source.py
echo "== pytest"; exec .venv/bin/python -m pytest "$@"
