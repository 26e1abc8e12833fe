"""Every PromQL expression of the dashboard and of the alert rules parses, and names only
metrics the watcher declares in ``watcher/metrics.py``, or ones of slices not landed yet.

The pending list (tests/support/promql.py, shared with the live check) is explicit, with
the issue of the slice that will declare each name. A name whose slice has landed may stay
in it until someone tidies up (merging branches must not break the suite);
test_landed_pending_names lists them. The live check, every expression evaluated in a real
Prometheus scraping the watcher, is tests/integration/test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
import re

import promql_parser
import pytest

from tests.support.promql import (
    DASHBOARD,
    PENDING,
    SCRAPE_METRICS,
    alert_exprs,
    dashboard_exprs,
    metric_names,
    selectors,
    selectors_part,
    substitute,
)
from watcher import metrics


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


def test_selectors_keep_matchers_and_drop_ranges_and_offsets() -> None:
    parsed = promql_parser.parse(
        'sum(rate(a_bucket{x="1",y!~"z"}[5m] offset 1h)) / on (c) b or {__name__="e"}')
    assert selectors(parsed) == [("a_bucket", 'a_bucket{x="1",y!~"z"}'), ("b", "b{}"),
                                 ("e", '{__name__="e"}')]


@pytest.mark.parametrize(("rule", "part"), [
    ("increase(a_total[15m]) > 0", "increase(a_total{}[15m])"),
    ("0 < a", "a{}"),
    ("a > 20 and deriv(b[10m]) <= 0", "(a{}) and  (deriv(b{}[10m]))"),
    ("a < on (chain, asset) b", "(a{}) and on (chain, asset) (b{})"),
    ("max by (c) (a) == bool 0", "(max by (c)(a{})) == bool (0)"),
    ('(increase(h_count[1h]) - ignoring (le) increase(h_bucket{le="5.0"}[1h])) > 0',
     '(increase(h_count{}[1h])) - ignoring (le) (increase(h_bucket{le="5.0"}[1h]))'),
    ("(changes(h[10m]) == 0 and h offset 10m) or changes(h[95m]) == 0",
     "((changes(h{}[10m])) and  (h{})) or  (changes(h{}[1h35m]))"),
])
def test_selectors_part_drops_thresholds_and_offsets(rule: str, part: str) -> None:
    assert selectors_part(promql_parser.parse(rule)) == part
    promql_parser.parse(part)  # and it is PromQL still
