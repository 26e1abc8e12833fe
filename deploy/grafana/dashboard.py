"""The watcher's Grafana dashboard, as code (grafana-foundation-sdk's typed builders).

    .venv/bin/python deploy/grafana/dashboard.py          # rewrites watcher-dashboard.json (+ chart copy)
    .venv/bin/python deploy/grafana/dashboard.py --check  # exit 1 if a committed copy is stale

The committed ``watcher-dashboard.json`` is what is imported into Grafana (the Helm chart
ships a copy as a ``grafana_dashboard`` ConfigMap); tests check that regenerating gives
the same bytes and that every metric an expression names is one ``watcher/metrics.py``
declares (or one of an explicit list of metrics of slices not landed yet). Rows of those
slices are collapsed and titled "slice #N not landed yet".

Answers in one minute: is every chain following (head vs processed, lag, halted), are
deposits flowing (events by type, block-to-event latency), is anything alarming (reversals
after credit, deep reorgs, dead letters), and what is broken (endpoints, RPC, Kafka).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

OUT = Path(__file__).with_name("watcher-dashboard.json")
CHART_COPY = Path(__file__).resolve().parents[1] / "helm" / "chain-watcher" / "files" / OUT.name
"""The Helm chart ships the same JSON as a Grafana sidecar ConfigMap (charts read only their own files)."""
UID = "chain-watcher"
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
C = 'chain=~"$chain"'
"""The chain selector every expression applies (the dashboard's ``chain`` variable)."""
RI = "$__rate_interval"
RANGE = "$__range"

Kind = Literal["timeseries", "stat", "state"]


@dataclass(frozen=True, slots=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True, slots=True)
class Spec:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: Kind = "timeseries"
    description: str = ""
    width: int = 8
    height: int = 8
    mappings: tuple[tuple[str, str, str], ...] = ()
    """(value, text, colour) value mappings, for stat and state panels."""


def q(expr: str, legend: str) -> Query:
    return Query(expr, legend)


def quantiles(metric: str, by: str, label: str) -> tuple[Query, ...]:
    return tuple(q(f"histogram_quantile({p}, sum by ({by}, le) (rate({metric}_bucket{{{C}}}[{RI}])))",
                   f"{label} p{int(p * 100)}") for p in (0.5, 0.99))


HALTED = (("0", "following", "green"), ("1", "HALTED", "red"))
IN_SYNC = (("0", "out of sync", "red"), ("1", "in sync", "green"))

ROWS: tuple[tuple[str, bool, tuple[Spec, ...]], ...] = (
    ("Chains: following the head", False, (
        Spec("Node head and processed height", (
            q(f"max by (chain) (watcher_node_head_height{{{C}}})", "{{chain}} node head"),
            q(f"max by (chain) (watcher_processed_height{{{C}}})", "{{chain}} processed"),
            q(f"max by (chain) (watcher_finalized_height{{{C}}})", "{{chain}} finalized")),
            unit="none", description="Processed should track the node head; the gap is the lag."),
        Spec("Lag (blocks)", (q(f"max by (chain) (watcher_lag_blocks{{{C}}})", "{{chain}}"),),
             unit="none", description="Node head minus processed height (alert: WatcherLagging)."),
        Spec("Lag (seconds)", (q(f"max by (chain) (watcher_lag_seconds{{{C}}})", "{{chain}}"),),
             unit="s", description="Now minus the last processed block's timestamp; grows between "
                                   "blocks on slow chains (alert: WatcherLagSecondsHigh)."),
        Spec("Chain halted", (q(f"max by (chain) (watcher_chain_halted{{{C}}})", "{{chain}}"),),
             kind="stat", mappings=HALTED, width=6, height=5,
             description="A reorg beyond the window or below finality, or fencing: see /readyz "
                         "and the runbook of WatcherChainHalted."),
        Spec("Blocks processed / s", (
            q(f"sum by (chain) (rate(watcher_blocks_processed_total{{{C}}}[{RI}]))", "{{chain}}"),),
            unit="ops", width=6, height=5),
        Spec("Follower cycle errors", (
            q(f"sum by (chain, kind) (increase(watcher_cycle_errors_total{{{C}}}[{RI}]))",
              "{{chain}} {{kind}}"),), width=6, height=5),
        Spec("Leading replicas", (q(f"sum by (chain) (watcher_leader{{{C}}})", "{{chain}}"),),
             kind="stat", width=6, height=5,
             description="Replicas leading each chain: 1 when healthy (0: nobody follows, it pages "
                         "as lag); leadership of issue #8, with leadership.enabled."),
    )),
    ("Deposits", False, (
        Spec("Deposit events by type", (
            q(f"sum by (chain, type) (increase(watcher_deposit_events_total{{{C}}}[{RI}]))",
              "{{chain}} {{type}}"),), description="Committed events per interval."),
        Spec("Block-to-event latency", quantiles("watcher_detection_latency_seconds", "chain", "{{chain}}"),
             unit="s", description="Block timestamp to committed deposit event: the payments SLO."),
        Spec("Inclusion to confirmed", quantiles("watcher_deposit_confirmation_seconds", "chain",
                                                 "{{chain}}"),
             unit="s", description="Paying block's timestamp to the committed deposit.confirmed: "
                                   "how long a customer waits for credit."),
        Spec("Reversals after confirmation", (
            q("sum by (chain) (increase("
              f"watcher_deposits_reverted_after_confirmation_total{{{C}}}[{RANGE}]))", "{{chain}}"),),
             kind="stat", width=8,
             description="Confirmed deposits reverted in the selected range: credit may need reversal "
                         "(alert: WatcherDepositReversedAfterCredit)."),
        Spec("Deposits inside the reorg window", (
            q(f"sum by (chain) (watcher_tracked_deposits{{{C}}})", "{{chain}}"),), unit="none"),
        Spec("Watched addresses", (q(f"sum by (chain) (watcher_watched_addresses{{{C}}})", "{{chain}}"),),
             unit="none"),
        Spec("Registrations and dead letters", (
            q(f"sum by (outcome) (increase(watcher_address_registrations_total[{RI}]))",
              "registrations {{outcome}}"),
            q(f"sum by (source) (increase(watcher_dead_letters_total[{RI}]))", "dead letters {{source}}")),
            description="Dead letters: inputs that could not be read (alert: WatcherDeadLetters)."),
    )),
    ("Reorgs and finality", False, (
        Spec("Reorgs", (q(f"sum by (chain) (increase(watcher_reorgs_total{{{C}}}[{RI}]))", "{{chain}}"),)),
        Spec("Reorg depth", (
            q("histogram_quantile(0.99, sum by (chain, le) "
              f"(increase(watcher_reorg_depth_blocks_bucket{{{C}}}[{RANGE}])))", "{{chain}} p99 in range"),),
             unit="none", kind="stat"),
        Spec("Reorgs beyond the window (halts)", (
            q(f"sum by (chain) (increase(watcher_reorg_beyond_window_total{{{C}}}[{RANGE}]))", "{{chain}}"),),
             kind="stat", description="Any value above 0 halted the chain (WatcherReorgBeyondWindow)."),
    )),
    ("Endpoints and RPC", False, (
        Spec("Endpoint in sync", (
            q(f"max by (chain, endpoint) (watcher_endpoint_in_sync{{{C}}})", "{{chain}}/{{endpoint}}"),),
             kind="state", mappings=IN_SYNC, width=12),
        Spec("Endpoint states", (
            q(f"max by (chain, endpoint, state) (watcher_endpoint_state{{{C}}}) == 1",
              "{{chain}}/{{endpoint}} {{state}}"),), kind="state", width=12,
             description="unverified, alive, unreachable, lagging, wrong_chain, misbehaving "
                         "(endpoint pool, issue #6)."),
        Spec("Endpoint heads", (
            q(f"max by (chain, endpoint) (watcher_endpoint_head_height{{{C}}})", "{{chain}}/{{endpoint}}"),),
             unit="none"),
        Spec("RPC errors / s", (
            q(f"sum by (chain, endpoint, kind) (rate(watcher_rpc_errors_total{{{C}}}[{RI}]))",
              "{{chain}}/{{endpoint}} {{kind}}"),), unit="ops"),
        Spec("RPC retries / s", (
            q(f"sum by (chain) (rate(watcher_rpc_retries_total{{{C}}}[{RI}]))", "{{chain}}"),), unit="ops"),
        Spec("RPC latency", quantiles("watcher_rpc_latency_seconds", "chain, endpoint",
                                      "{{chain}}/{{endpoint}}"), unit="s", width=12),
        Spec("Node answers rejected", (
            q(f"sum by (chain, endpoint, check) (increase(watcher_node_answers_rejected_total{{{C}}}[{RI}]))",
              "{{chain}}/{{endpoint}} {{check}}"),
            q(f"sum by (chain) (increase(watcher_confirm_quorum_disagreements_total{{{C}}}[{RI}]))",
              "{{chain}} quorum disagreements"),
            q(f"sum by (chain) (watcher_confirm_quorum_held_deposits{{{C}}})", "{{chain}} deposits held")),
             width=12,
             description="Answers failing a check, and confirmations held for lack of quorum "
                         "(endpoint pool, issue #6)."),
    )),
    ("Kafka", False, (
        Spec("Kafka commit latency", quantiles("watcher_kafka_commit_seconds", "chain", "{{chain}}"),
             unit="s", width=12, description="One transaction: begin, send events and checkpoint, commit."),
        Spec("Kafka transactions by outcome", (
            q(f"sum by (chain, outcome) (increase(watcher_kafka_commits_total{{{C}}}[{RI}]))",
              "{{chain}} {{outcome}}"),), width=12,
             description="Anything but committed is an abort or failure (WatcherKafkaCommitsFailing)."),
    )),
    ("Withdrawals", True, (
        Spec("Withdrawal events by type", (
            q(f"sum by (chain, type) (increase(watcher_withdrawal_events_total{{{C}}}[{RI}]))",
              "{{chain}} {{type}}"),)),
        Spec("Stuck withdrawals", (q(f"sum by (chain) (watcher_withdrawals_stuck{{{C}}})", "{{chain}}"),),
             unit="none", description="Broadcast but not confirming (WatcherWithdrawalStuck)."),
        Spec("Waiting for funds", (
            q(f"sum by (chain, asset) (watcher_withdrawals_waiting_funds{{{C}}})", "{{chain}} {{asset}}"),),
             unit="none"),
        Spec("Hot-wallet balance (base units)", (
            q(f"max by (chain, asset) (watcher_hot_wallet_balance{{{C}}})", "{{chain}} {{asset}}"),
            q(f"max by (chain, asset) (watcher_hot_wallet_low_threshold{{{C}}})", "{{chain}} {{asset}} low")),
             unit="none", width=12),
        Spec("Request to confirmation", quantiles("watcher_withdrawal_confirmation_seconds", "chain",
                                                  "{{chain}}"), unit="s", width=12),
        Spec("Batched payments (chains with batch configured)", (
            q(f"sum by (chain) (increase(watcher_withdrawal_batched_requests_total{{{C}}}[{RI}])) / "
              f"sum by (chain) (increase(watcher_withdrawal_batches_total{{{C}}}[{RI}]))",
              "{{chain}} mean requests per payment"),
            q(f"sum by (chain) (watcher_withdrawals_gathering{{{C}}})", "{{chain}} gathering")),
             unit="none", width=12,
             description="Requests per on-chain payment, and requests held for the next batch "
                         "(at most batch.max_wait_blocks)."),
    )),
    ("UTXO mempool (Bitcoin-family chains with mempool.enabled)", False, (
        Spec("Unconfirmed deposits by transition", (
            q(f"sum by (chain, outcome) (increase(watcher_mempool_deposits_total{{{C}}}[{RI}]))",
              "{{chain}} {{outcome}}"),), width=12,
             description="seen, replaced, double_spent, dropped, mined."),
        Spec("Unconfirmed transactions tracked", (
            q(f"sum by (chain) (watcher_mempool_tracked_transactions{{{C}}})", "{{chain}}"),),
             unit="none", width=12),
    )),
)


def _mappings(spec: Spec) -> list[dm.ValueMapping]:
    if not spec.mappings:
        return []
    return [dm.ValueMap(options={value: dm.ValueMappingResult(text=text, color=colour, index=i)
                                 for i, (value, text, colour) in enumerate(spec.mappings)})]


def panel(spec: Spec, panel_id: int) -> cogbuilder.Builder[dm.Panel]:
    builder: timeseries.Panel | stat.Panel | statetimeline.Panel
    legend = gc.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST) \
        .placement(cm.LegendPlacement.BOTTOM).calcs([])
    tooltip = gc.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
    if spec.kind == "stat":
        builder = stat.Panel().graph_mode(cm.BigValueGraphMode.NONE) \
            .color_mode(cm.BigValueColorMode.BACKGROUND if spec.mappings else cm.BigValueColorMode.VALUE) \
            .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    elif spec.kind == "state":
        builder = statetimeline.Panel().show_value(cm.VisibilityMode.NEVER).merge_values(True) \
            .legend(legend).tooltip(tooltip)
    else:
        builder = timeseries.Panel().fill_opacity(10).line_width(1).legend(legend).tooltip(tooltip)
    builder = builder.id(panel_id).title(spec.title).datasource(DS).unit(spec.unit) \
        .span(spec.width).height(spec.height)
    if spec.description:
        builder = builder.description(spec.description)
    if spec.mappings:
        builder = builder.mappings(_mappings(spec))
    for i, query in enumerate(spec.queries):
        builder = builder.with_target(prometheus.Dataquery().expr(query.expr).legend_format(query.legend)
                                      .ref_id(chr(ord("A") + i)).datasource(DS))
    return builder


def build() -> dict[str, object]:
    board = (gd.Dashboard("chain-watcher").uid(UID).tags(["chain-watcher", "payments"])
             .description("Deposits and withdrawals flowing? Per chain: head, lag, latency, reorgs, "
                          "endpoints, Kafka. Generated by deploy/grafana/dashboard.py; do not edit.")
             .refresh("30s").time("now-6h", "now").timezone("utc").editable()
             .tooltip(dm.DashboardCursorSync.CROSSHAIR)
             .with_variable(gd.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
             .with_variable(gd.QueryVariable("chain").label("chain").datasource(DS)
                            .query("label_values(watcher_processed_height, chain)")
                            .multi(True).include_all(True).all_value(".*")
                            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                            .sort(dm.VariableSort.ALPHABETICAL_ASC)))
    panel_id = 1
    for title, collapsed, specs in ROWS:
        row = gd.Row(title).id(panel_id).collapsed(collapsed)
        panel_id += 1
        built: Sequence[cogbuilder.Builder[dm.Panel]] = []
        built = [panel(spec, panel_id + i) for i, spec in enumerate(specs)]
        panel_id += len(specs)
        if collapsed:
            # A collapsed row holds its panels (Grafana's model); expanded rows are followed by them.
            for p in built:
                row = row.with_panel(p)
            board = board.with_row(row)
        else:
            board = board.with_row(row)
            for p in built:
                board = board.with_panel(p)
    doc: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return doc


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str]) -> int:
    text = render()
    if "--check" in argv:
        stale = [p for p in (OUT, CHART_COPY) if not p.exists() or p.read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"{path} is stale: run deploy/grafana/dashboard.py", file=sys.stderr)
        return 1 if stale else 0
    for path in (OUT, CHART_COPY):
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
