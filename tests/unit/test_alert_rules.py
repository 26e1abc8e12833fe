"""The shipped Prometheus alert rules parse and fire as intended (promtool's rule unit tests).

Every metric an alert names must be one the watcher declares, so a rename cannot
silently disarm an alert.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from watcher import metrics

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: `make test` installs Debian's prometheus package")
    return found


def test_rules_pass_promtool_unit_tests() -> None:
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alerts_only_name_declared_metrics() -> None:
    declared = {m.name for m in metrics.REGISTRY.collect()}
    declared |= {f"{n}_total" for n in declared}
    used = set(re.findall(r"\b(watcher_[a-z_]+)", (RULES / "alerts.yml").read_text()))
    assert used, "no watcher metric named in alerts.yml"
    assert used <= declared, f"alerts name undeclared metrics: {sorted(used - declared)}"
