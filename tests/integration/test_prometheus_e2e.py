"""Every expression of the dashboard and of the alert rules evaluates, in a real Prometheus
scraping the real watcher, to a non-empty result: no panel and no rule names a metric or a
label set the watcher does not export.

The watcher (the App, in this process) follows an EVM chain on its own anvil and chain
``btc`` on the session's btcd with the mempool watched, publishing to real Kafka; the
session's Prometheus scrapes its ``/metrics`` every second as job ``watcher``. Traffic
first, so that counters and histograms have moved: ETH and token deposits confirmed, one
reverted by an ``anvil_reorg``, a BTC deposit seen in the mempool then mined, a
registration per chain and one unreadable registration (a dead letter).

How each kind of expression is judged:

* Dashboard panels: the expression exactly as Grafana sends it, its variables replaced
  (``$__rate_interval`` 1m, ``$__range`` 15m, ``$chain`` ``.*``). It must return series,
  and where its series carry a ``chain`` label, one for each chain that can export it
  (both, or ``btc`` alone for mempool metrics): a panel blank for one chain is a bug too.
* Alert rules fire only on trouble, so the rule itself is mostly empty on a healthy
  watcher. What must not be empty is what the rule compares: every vector selector in it,
  with its label matchers (range and offset dropped), and the rule's "selectors part"
  (``tests.support.promql.selectors_part``: thresholds dropped, vector comparisons turned
  into ``and`` with the same matching, offsets dropped), which checks that the operands of
  ``and on (chain)`` and ``ignoring (le)`` really match. The whole rule is evaluated too:
  Prometheus must accept it.

Metrics of slices not landed yet (``tests.support.promql.PENDING``) are skipped.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from tests.support.btc_e2e import btc_config, new_uid, poll_until, running
from tests.support.btc_wallet import RegtestWallet, regtest_payee
from tests.support.promql import (
    DASHBOARD,
    PENDING,
    WITHDRAWALS_ONLY,
    alert_exprs,
    dashboard_exprs,
    metric_names,
    selectors,
    selectors_part,
    substitute,
)
from tests.support.services import (
    AnvilFactory,
    BtcdService,
    KafkaService,
    PrometheusService,
    ServiceManager,
)
from tests.support.solidity import Chain, new_address, produce, registration, scrape, watcher_config
from watcher.config import parse
from watcher.kafka.client import ensure_topics

SKIPPED = PENDING.keys() | WITHDRAWALS_ONLY
"""Names this run cannot export: slices not landed, and withdrawals (not configured here)."""

pytestmark = pytest.mark.integration

VARIABLES = {"$__rate_interval": "1m", "$__range": "15m", "$chain": ".*"}
CHAINS = {"eth", "btc"}
MEMPOOL_ONLY = {"watcher_mempool_deposits_total", "watcher_mempool_tracked_transactions"}
"""Exported only by chains that watch a mempool (here btc alone)."""
ETH = 10**18


def describe(result: list[dict[str, Any]]) -> str:
    return json.dumps([r["metric"] for r in result])[:300]


async def test_every_panel_and_rule_evaluates_to_series(
        kafka: KafkaService, anvil_factory: AnvilFactory, btcd: BtcdService,
        btc_wallet: RegtestWallet, services: ServiceManager, prometheus: PrometheusService,
        tmp_path: Path) -> None:
    anvil = anvil_factory()
    chain = Chain(anvil.url)
    await chain.setup()
    token = await chain.deploy("TestToken", "Test Token", "TKN", 6)
    await chain.mint(token, chain.payer, 10**12)

    uid = new_uid()
    port = services.free_port()
    raw = watcher_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid,
                         endpoints=[("anvil", anvil.url)], start_block=await chain.height(),
                         metrics_port=port,
                         tokens=[{"contract": str(token.address), "symbol": "TKN", "decimals": 6}],
                         confirmations={"ETH": 3, "TKN": 2})
    btc = btc_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid, node=btcd,
                     secrets_dir=tmp_path, start_block=int(btcd.rpc("getblockcount")),
                     metrics_port=port, confirmations=1,
                     mempool={"enabled": True, "poll_interval_ms": 200, "drop_after_s": 600})
    raw["chains"]["btc"] = btc["chains"]["btc"]
    cfg = parse(raw, base_dir=tmp_path, environ={})
    await ensure_topics(cfg.kafka)

    alice = new_address(f"prom-e2e-{uid}-alice")
    payee = regtest_payee("p2wpkh", f"prom-e2e-{uid}")
    await produce(kafka.bootstrap_servers, cfg.kafka.topics.address_registrations, [
        registration("eth", alice, "alice"), registration("btc", payee.address, "bob"),
        (b"eth:garbage", b"{not json"),  # a dead letter
    ])
    prometheus.set_targets("watcher", [f"127.0.0.1:{port}"])

    async with running(cfg) as run:
        key = bytes.fromhex(alice[2:])

        async def watched() -> bool:
            return key in run.app.indexes["eth"]
        await poll_until(watched, "alice to be watched", 30.0, run.alive)
        await run.wait_watched(payee.address)

        def has(type_: str, address: str, asset: str | None = None) -> bool:
            return any(e["type"] == type_ and str(e["address"]).lower() == address.lower()
                       and (asset is None or e["asset"] == asset) for e in run.reader.events)

        # ETH and token deposits, confirmed.
        await chain.send_eth(alice, 2 * ETH)
        await chain.token_transfer(token, alice, 5_000_000)
        await chain.mine(3)
        await run.wait(lambda _: has("deposit.confirmed", alice, "ETH")
                       and has("deposit.confirmed", alice, "TKN"),
                       "ETH and TKN deposits confirmed")
        # One more, pending, then reorganised away: deposit.reverted, a reorg of depth 2.
        before = sum(e["type"] == "deposit.pending" for e in run.reader.events)
        await chain.send_eth(alice, ETH // 2)
        await run.wait(lambda evs: sum(e["type"] == "deposit.pending" for e in evs) > before,
                       "the third ETH deposit pending")
        await chain.reorg(2)
        await chain.mine(1)
        await run.wait(lambda _: has("deposit.reverted", alice), "the reorged deposit")
        # BTC: seen in the mempool, then mined (one confirmation required).
        btc_wallet.pay([(payee.script, 75_000)])
        await run.wait(lambda _: has("deposit.seen", payee.address), "the BTC deposit seen")
        btcd.rpc("generate", 1)
        await run.wait(lambda _: has("deposit.confirmed", payee.address), "the BTC deposit mined")

        async def dead_lettered() -> bool:
            return await scrape(run.metrics, "watcher_dead_letters_total",
                                source="address-registrations") == 1
        await poll_until(dead_lettered, "the garbage registration dead-lettered", 30.0, run.alive)

        # Prometheus has the traffic, and enough samples for rate() over a minute.
        async def scraped() -> bool:
            moved = prometheus.query('watcher_dead_letters_total{job="watcher"} == 1')
            samples = prometheus.query('count_over_time(up{job="watcher"}[1m]) >= 5')
            return bool(moved and samples)
        await poll_until(scraped, "Prometheus to scrape the traffic", 60.0, run.alive)
        # Two scrapes more: the last counter increments fall inside rate()'s window.
        await asyncio.sleep(2.5)

        failures: list[str] = []
        checked = 0
        for where, expr in dashboard_exprs():
            text = substitute(expr, VARIABLES)
            names = metric_names(promql_parser.parse(text))
            if names & SKIPPED:
                continue
            checked += 1
            result = prometheus.query(text)
            if not result:
                failures.append(f"{where}: no series for {text}")
                continue
            chains = {r["metric"]["chain"] for r in result if "chain" in r["metric"]}
            want = {"btc"} if names & MEMPOOL_ONLY else CHAINS
            if chains and not want <= chains:
                failures.append(f"{where}: no series for chain(s) {sorted(want - chains)}: "
                                f"{text} gave {describe(result)}")
        assert checked >= 25, f"only {checked} dashboard expressions checked"
        # The dashboard's chain variable: label_values(<metric>, chain) lists both chains.
        board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
        (variable,) = [v for v in board["templating"]["list"] if v["name"] == "chain"]
        metric = variable["query"].removeprefix("label_values(").split(",")[0]
        listed = {r["metric"].get("chain") for r in prometheus.query(metric)}
        if not listed >= CHAINS:
            failures.append(f"the chain variable ({variable['query']}) lists {sorted(map(str, listed))}")

        rules = 0
        for where, expr in alert_exprs():
            parsed = promql_parser.parse(expr)
            prometheus.query(expr)  # Prometheus accepts the rule (raises otherwise)
            pending = metric_names(parsed) & SKIPPED
            for name, selector in selectors(parsed):
                if name in SKIPPED:
                    continue
                if not prometheus.query(selector):
                    failures.append(f"{where}: selector {selector} has no series")
            if pending:
                continue
            rules += 1
            part = selectors_part(parsed)
            if not prometheus.query(part):
                failures.append(f"{where}: what it compares has no series: {part}")
        assert rules >= 15, f"only {rules} alert rules checked"
        assert not failures, "\n".join(failures)
