"""The README's metrics catalogue is the one generated from watcher/metrics.py, and every
declared metric follows the Prometheus naming conventions with bounded labels."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def catalogue() -> ModuleType:
    path = ROOT / "deploy" / "docs" / "metrics_catalogue.py"
    spec = importlib.util.spec_from_file_location("watcher_metrics_catalogue", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_readme_table_matches_the_declared_metrics() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert catalogue().rendered(readme) == readme, \
        "README's metrics catalogue is stale: run .venv/bin/python deploy/docs/metrics_catalogue.py"


def test_catalogue_rows_are_read_from_the_declarations() -> None:
    rows = {r.name: r for r in catalogue().rows()}
    assert rows["watcher_rpc_errors_total"].type == "counter"
    assert rows["watcher_rpc_errors_total"].labels == ("chain", "endpoint", "kind")
    assert rows["watcher_detection_latency_seconds"].type == "histogram"
    assert rows["watcher_lag_blocks"].help == "Node head minus processed height"
    assert len(rows) >= 25


def test_every_metric_follows_the_naming_conventions() -> None:
    mod = catalogue()
    assert mod.naming_problems(list(mod.rows())) == []


def test_naming_problems_are_found() -> None:
    mod = catalogue()
    bad = [mod.Row("watcher_commits", "counter", ("chain",), ""),
           mod.Row("watcher_commit_ms", "histogram", ("address",), ""),
           mod.Row("deposits_total", "gauge", (), "")]
    assert mod.naming_problems(bad) == [
        "watcher_commits: a counter must end in _total",
        "watcher_commit_ms: times are in seconds (base unit)",
        "watcher_commit_ms: a histogram names its unit (_seconds, _bytes, _blocks, _ratio)",
        "watcher_commit_ms: label 'address' is not one of the bounded labels",
        "deposits_total: not under the watcher_ namespace",
        "deposits_total: only counters end in _total",
    ]
