#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types, and every test
# (unit, component, and integration against real Kafka, anvil, btcd and Prometheus
# that the suite starts itself on free ports).
set -euo pipefail
cd "$(dirname "$0")/../.."
./deploy/local/bootstrap.sh
python3 deploy/local/devstack.py install
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"; exec .venv/bin/python -m pytest "$@"
