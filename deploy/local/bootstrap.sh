#!/usr/bin/env bash
# Creates .venv with the project and its dev tools; does nothing when pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python 3.11+ is required (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ]; then
  exit 0
fi
echo "bootstrap: installing the project into .venv (pip) ..."
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -m pip install -q -e ".[dev]" > .venv/pip.log 2>&1; then
  echo "bootstrap: pip install failed; see $(pwd)/.venv/pip.log" >&2
  tail -20 .venv/pip.log >&2
  exit 1
fi
rm -f .venv/.installed-*
touch "$stamp"
