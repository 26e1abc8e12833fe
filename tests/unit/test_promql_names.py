"""Every PromQL expression of the dashboard and of the alert rules parses, and names only
metrics the watcher declares in ``watcher/metrics.py``, or ones of slices not landed yet.

The pending list below is explicit, with the issue of the slice that will declare each
name. A name whose slice has landed may stay in it until someone tidies up (merging
branches must not break the suite); test_landed_pending_names lists them. The end-to-end
check against a live Prometheus scraping the watcher comes with issue #9's e2e test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from watcher import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "watcher-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

PENDING: dict[str, str] = {
    # issue #6, endpoint pool
    "watcher_endpoint_state": "#6",
    "watcher_node_answers_rejected_total": "#6",
    "watcher_confirm_quorum_disagreements_total": "#6",
    "watcher_confirm_quorum_held_deposits": "#6",
    # issue #7, UTXO chains' mempool
    "watcher_mempool_deposits_total": "#7",
    "watcher_mempool_tracked_transactions": "#7",
}
SCRAPE_METRICS = {"up"}
"""Written by Prometheus itself for every scrape target."""

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$chain": ".*"}


def declared_series() -> set[str]:
    """Every series name the watcher's registry can expose (counter and histogram suffixes)."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, expression) for every panel target of the generated dashboard."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for p in board["panels"]:
        for inner in [p, *p.get("panels", [])]:
            for t in inner.get("targets", []):
                yield f"dashboard panel {inner['title']!r}", t["expr"]


def alert_exprs() -> Iterator[tuple[str, str]]:
    for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]


def substitute(expr: str) -> str:
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def metric_names(node: Any) -> set[str]:
    """Names of every vector selector in a parsed expression (the parser's AST, walked)."""
    found: set[str] = set()
    if isinstance(node, promql_parser.VectorSelector):
        if node.name:
            found.add(node.name)
        for m in node.matchers.matchers:
            if m.name == "__name__":
                found.add(m.value)
        return found
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, str | int | float):
            found |= metric_names(child)
    for arg in getattr(node, "args", None) or ():
        found |= metric_names(arg)
    return found


ALL = [*dashboard_exprs(), *alert_exprs()]


def test_the_walker_finds_every_selector() -> None:
    parsed = promql_parser.parse(
        'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="1"}[5m]))) / on (c) b '
        'or max_over_time(c[1h:5m]) and -d offset 5m unless {__name__="e"}')
    assert metric_names(parsed) == {"a_bucket", "b", "c", "d", "e"}


def test_there_are_expressions_to_check() -> None:
    assert sum(1 for w, _ in ALL if w.startswith("dashboard")) >= 25
    assert sum(1 for w, _ in ALL if w.startswith("alert")) >= 15


@pytest.mark.parametrize(("where", "expr"), ALL, ids=[f"{w}#{i}" for i, (w, _) in enumerate(ALL)])
def test_expression_parses_and_names_only_known_metrics(where: str, expr: str) -> None:
    try:
        parsed = promql_parser.parse(substitute(expr))
    except ValueError as exc:
        pytest.fail(f"{where}: does not parse: {exc}\n{expr}")
    names = metric_names(parsed)
    assert names, f"{where}: names no metric: {expr}"
    unknown = names - declared_series() - PENDING.keys() - SCRAPE_METRICS
    assert not unknown, f"{where}: names metrics the watcher does not export: {sorted(unknown)}"


def test_landed_pending_names(capsys: pytest.CaptureFixture[str]) -> None:
    """Every pending entry names its issue; those already declared are reported, not failed."""
    assert all(re.fullmatch(r"#\d+", issue) for issue in PENDING.values())
    assert all(re.fullmatch(r"watcher_[a-z_]+", name) for name in PENDING)
    landed = sorted(PENDING.keys() & declared_series())
    if landed:
        with capsys.disabled():
            print(f"\nPENDING names now declared (may leave the list): {', '.join(landed)}")


def test_panels_on_pending_metrics_say_which_slice() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for p in board["panels"]:
        for inner in p.get("panels", []) if p["type"] == "row" else [p]:
            row_title = p["title"] if p["type"] == "row" else ""
            names: set[str] = set()
            for t in inner.get("targets", []):
                names |= metric_names(promql_parser.parse(substitute(t["expr"])))
            for name in names & PENDING.keys():
                said = f"{row_title} {inner.get('title', '')} {inner.get('description', '')}"
                assert PENDING[name] in said, \
                    f"panel {inner['title']!r} uses {name} without naming {PENDING[name]}"


def test_chain_variable_reads_a_declared_metric() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (chain,) = [v for v in board["templating"]["list"] if v["name"] == "chain"]
    metric = re.fullmatch(r"label_values\((\w+), chain\)", chain["query"])
    assert metric is not None and metric.group(1) in declared_series()
