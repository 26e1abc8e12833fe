"""The shipped Prometheus alert rules parse and fire as intended (promtool's rule unit tests),
every alert is tested both firing and silent, and every alert has a runbook in the README.

Which metrics the rules may name is checked in test_promql_names.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
RUNBOOK_BASE = "https://github.com/chain-watcher/chain-watcher/blob/main/README.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not found: `make test` installs Debian's prometheus package")
    return found


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load((RULES / "alerts.yml").read_text(encoding="utf-8"))["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    check = subprocess.run([promtool(), "check", "rules", "alerts.yml"], cwd=RULES,
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    out = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    tests = yaml.safe_load((RULES / "alerts_test.yml").read_text(encoding="utf-8"))["tests"]
    seen: dict[str, set[bool]] = defaultdict(set)
    for t in tests:
        for a in t["alert_rule_test"]:
            seen[a["alertname"]].add(bool(a["exp_alerts"]))
    for rule in alerts():
        assert seen[str(rule["alert"])] == {True, False}, f"{rule['alert']}: needs a firing and a silent case"


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_runbook_section() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    for match in re.finditer(r"^#{2,4} (.+)\n((?:(?!^#{1,4} ).*\n)*)", readme, re.MULTILINE):
        sections[github_anchor(match.group(1))] = match.group(2)
    for rule in alerts():
        name = str(rule["alert"])
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        anchor = f"runbook-{name.lower()}"
        assert annotations.get("runbook_url") == f"{RUNBOOK_BASE}#{anchor}", name
        body = sections.get(anchor)
        assert body is not None, f"README has no section '### Runbook: {name}'"
        for part in ("**Means**", "**Check**", "**Do**"):
            assert part in body, f"runbook of {name} lacks {part}"


def test_github_anchor() -> None:
    assert github_anchor("Runbook: WatcherHeadStalled") == "runbook-watcherheadstalled"
    assert github_anchor("Metrics catalogue") == "metrics-catalogue"
