"""The committed Grafana dashboard is exactly what deploy/grafana/dashboard.py generates."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "grafana" / "dashboard.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("watcher_dashboard", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


def test_regenerating_gives_the_committed_file() -> None:
    committed = (ROOT / "deploy" / "grafana" / "watcher-dashboard.json").read_text(encoding="utf-8")
    assert generator().render() == committed, "stale: run .venv/bin/python deploy/grafana/dashboard.py"


def test_dashboard_shape() -> None:
    board = json.loads((ROOT / "deploy" / "grafana" / "watcher-dashboard.json").read_text(encoding="utf-8"))
    assert board["uid"] == "chain-watcher"
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == [
        "Chains: following the head", "Deposits", "Reorgs and finality", "Endpoints and RPC", "Kafka",
        "Withdrawals",
        "UTXO mempool (Bitcoin-family chains with mempool.enabled)"]
    # Rows of slices not landed are collapsed (their panels inside them), the others expanded.
    assert [r["collapsed"] for r in rows] == [False] * 5 + [True, False]
    ids = [p["id"] for p in board["panels"]] + [q["id"] for r in rows for q in r["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"] for p in board["panels"]} | {q["title"] for r in rows for q in r["panels"]}
    for wanted in ("Node head and processed height", "Lag (blocks)", "Lag (seconds)",
                   "Block-to-event latency", "Reorgs", "Reorg depth", "Endpoint states", "RPC errors / s",
                   "RPC retries / s",
                   "Deposit events by type", "Reversals after confirmation", "Kafka commit latency",
                   "Kafka transactions by outcome", "Watched addresses", "Registrations and dead letters",
                   "Stuck withdrawals", "Withdrawal events by type", "Hot-wallet balance (base units)",
                   "Unconfirmed deposits by transition"):
        assert wanted in titles
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all('chain=~"$chain"' in t["expr"] or "_total[" in t["expr"] for t in p["targets"])
