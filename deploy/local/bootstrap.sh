#!/usr/bin/env bash
# Creates .venv with the project and its dev tools; does nothing when pyproject.toml and the C
# sources are unchanged. The editable install compiles chains/bitcoin/_blockwalk.c and
# watcher/core/_probe.c in place (a .so beside each, git-ignored): edit the C and run this
# again, or the old build keeps running.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "bootstrap: Python 3.11+ is required (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
stamp=.venv/.installed-$(cat pyproject.toml chains/bitcoin/_blockwalk.c watcher/core/_probe.c | sha256sum | cut -c1-16)
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
# The C extensions are optional to the build (no compiler: their Python references run); say so.
if ! .venv/bin/python -c 'import chains.bitcoin._blockwalk, watcher.core._probe' 2>/dev/null; then
  echo "bootstrap: chains/bitcoin/_blockwalk.c and watcher/core/_probe.c were not compiled (no C" \
       "compiler or Python headers?): Bitcoin blocks are walked and matched interpreted, ~5-10x" \
       "slower; see .venv/pip.log" >&2
fi
rm -f .venv/.installed-*
touch "$stamp"
