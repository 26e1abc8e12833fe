"""The PromQL of the dashboard and of the alert rules, as the tests read it.

One list of metrics of slices not landed yet (:data:`PENDING`), used by the static check
(tests/unit/test_promql_names.py) and by the live one against a real Prometheus scraping
the watcher (tests/integration/test_prometheus_e2e.py); nowhere else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "watcher-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

PENDING: dict[str, str] = {}
"""Metric names of slices not landed yet, with the issue of the slice that exports them."""

WITHDRAWALS_ONLY = frozenset({
    "watcher_withdrawal_events_total", "watcher_withdrawals_stuck",
    "watcher_withdrawals_waiting_funds", "watcher_hot_wallet_balance",
    "watcher_hot_wallet_low_threshold", "watcher_withdrawal_confirmation_seconds_bucket",
    "watcher_withdrawal_batches_total", "watcher_withdrawal_batched_requests_total",
    "watcher_withdrawals_gathering",
})
"""Exported only by a replica with withdrawals configured (#8; the batch series only where
``batch:`` is set): the static check wants them
declared like any other; the live check, whose watcher follows deposits only, skips them
(tests/integration/test_withdrawals_e2e.py covers their values)."""

SCRAPE_METRICS = {"up"}
"""Written by Prometheus itself for every scrape target."""

GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$chain": ".*"}

COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})
_OFFSET = re.compile(r"\s+offset\s+-?[0-9a-z]+")


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


def substitute(expr: str, variables: dict[str, str] | None = None) -> str:
    """Grafana's variables replaced by values Prometheus accepts."""
    for var, value in (variables or GRAFANA_VARIABLES).items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def metric_names(node: Any) -> set[str]:
    """Names of every vector selector in a parsed expression (the parser's AST, walked)."""
    return {name for name, _ in selectors(node) if name}


def selectors(node: Any) -> list[tuple[str, str]]:
    """(metric name, instant selector text) of every vector selector in a parsed
    expression, matchers kept, range and offset dropped: ``rate(a{x="1"}[5m] offset 1h)``
    gives ``("a", 'a{x="1"}')``."""
    found: list[tuple[str, str]] = []
    if isinstance(node, promql_parser.VectorSelector):
        names = {node.name} if node.name else set()
        names |= {m.value for m in node.matchers.matchers if m.name == "__name__"}
        text = _OFFSET.sub("", str(node))
        return [(name, text) for name in sorted(names)] or [("", text)]
    for attr in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, str | int | float):
            found += selectors(child)
    for arg in getattr(node, "args", None) or ():
        found += selectors(arg)
    return found


def selectors_part(node: Any) -> str:
    """The expression without its thresholds: what an alert rule compares, so that
    evaluating it tells whether the rule has series to judge, firing or not.

    A comparison with a number (``x > 20``, ``0 < x``) becomes its vector side; one between
    two vectors (``x < on (c) y``) becomes ``x and on (c) y`` (the same label matching, so a
    rule whose sides never match gives nothing); ``bool`` comparisons stay (they return every
    series). ``offset`` is dropped: the "existed a window ago" guard of a rule is a fact about
    time, not about which series exist. Comparisons inside function arguments are kept."""
    if isinstance(node, promql_parser.ParenExpr):
        return selectors_part(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        op, mod = str(node.op), node.modifier
        lhs, rhs = node.lhs, node.rhs
        if op in COMPARISONS and not (mod is not None and mod.return_bool):
            if isinstance(rhs, promql_parser.NumberLiteral):
                return selectors_part(lhs)
            if isinstance(lhs, promql_parser.NumberLiteral):
                return selectors_part(rhs)
            matching = str(mod.matching) if mod is not None and mod.matching else ""
            return f"({selectors_part(lhs)}) and {matching} ({selectors_part(rhs)})"
        return f"({selectors_part(lhs)}) {op} {str(mod) if mod is not None else ''} " \
               f"({selectors_part(rhs)})"
    return _OFFSET.sub("", str(node))
