"""SIGKILL chaos on Bitcoin: the watcher daemon killed at random moments (at least 20
times) while deposits, blocks, ``invalidateblock`` reorgs and RBF replacements keep
coming on a real btcd, mempool watching on; the committed stream must still tell every
fact exactly once.

The model is ``test_crash_recovery.py`` (same daemon handling and kill schedule). Reorgs
invalidate the top 1-2 blocks; btcd puts their transactions back in its mempool, where
about half of the replaceable deposits among them are replaced by a transaction paying a
stranger; a longer branch is then mined. At the end the chain stands still, the watcher
catches up and stops on SIGTERM, and the topic is read with ``read_committed`` and checked
against btcd's chain.

Reproduce with ``CRASH_TEST_SEED=<seed>``; ``BTC_CRASH_TEST_SECONDS`` sets the chaos
phase's length (default 60).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_crash_recovery import MIN_KILLS, Daemon, chaos_kills
from tests.support.btc_e2e import CHAIN, btc_config, new_uid, own_btcd
from tests.support.btc_wallet import Payee, RegtestWallet, Tx, regtest_payee
from tests.support.oracle import lifecycle_problems
from tests.support.services import BtcdService, KafkaService, ServiceManager
from tests.support.solidity import (
    Event,
    TopicReader,
    http_get,
    produce,
    registration,
    scrape,
    summary,
)
from watcher.config import parse
from watcher.kafka.client import ensure_topics

pytestmark = pytest.mark.integration

CHAOS_SECONDS = float(os.environ.get("BTC_CRASH_TEST_SECONDS", "60"))
TIERS = [{"below": 10_000_000, "required": 1}, {"required": 2}]


def required_for(amount: int) -> int:
    return 1 if amount < 10_000_000 else 2


@pytest.fixture(scope="module")
def node(services: ServiceManager, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[BtcdService]:
    with own_btcd(services, tmp_path_factory.mktemp("btcd-crash")) as n:
        yield n


@dataclass
class Sending:
    deposits: list[tuple[Tx, list[tuple[int, Payee, int]]]] = field(default_factory=list)
    """(transaction, [(vout, watched payee, satoshis)])"""
    noise: list[str] = field(default_factory=list)
    reorgs: list[int] = field(default_factory=list)
    replaced: int = 0
    blocks_mined: int = 0


class Driver:
    """Deposits, noise, blocks, reorgs and replacements, the node's RPC off the loop."""

    def __init__(self, node: BtcdService, wallet: RegtestWallet, watched: Sequence[Payee],
                 stranger: Payee, rng: random.Random, log: Sending) -> None:
        self.node, self.wallet, self.watched = node, wallet, watched
        self.stranger, self.rng, self.log = stranger, rng, log

    async def rpc(self, method: str, *params: Any) -> Any:
        return await asyncio.to_thread(self.node.rpc, method, *params)

    def _deposit(self) -> None:
        rng = self.rng
        targets = rng.sample(list(self.watched), rng.randint(1, 2))
        outs = [(p, rng.choice((rng.randrange(1_000, 10_000_000),
                                rng.randrange(10_000_000, 50_000_000)))) for p in targets]
        tx = self.wallet.build([(p.script, a) for p, a in outs], rbf=rng.random() < 0.6)
        self.wallet.send(tx)
        self.log.deposits.append((tx, [(n, p, a) for n, (p, a) in enumerate(outs)]))

    def _noise(self) -> None:
        self.log.noise.append(self.wallet.pay([(self.stranger.script,
                                                self.rng.randrange(1_000, 10**6))]))

    def _reorg(self) -> None:
        depth = self.rng.randint(1, 2)
        # A block holding the pending deposits, and time for the watcher (when it is up) to
        # announce it: the reorg must undo announced deposits, not only unseen blocks.
        self.node.rpc("generate", 1)
        self.log.blocks_mined += 1
        time.sleep(self.rng.uniform(0.3, 1.0))
        height = int(self.node.rpc("getblockcount"))
        self.node.rpc("invalidateblock", self.node.rpc("getblockhash", height - depth + 1))
        pool = set(self.node.rpc("getrawmempool"))
        for tx, _ in self.log.deposits:
            signals = tx.inputs[0][1] < 0xFFFFFFFE
            if tx.txid in pool and signals and self.rng.random() < 0.5:
                rival = self.wallet.build([(self.stranger.script, 5_000)],
                                          coin=tx.inputs[0][0], fee=150_000, rbf=True)
                try:
                    self.wallet.send(rival, replaces=tx)
                except RuntimeError:  # DevStackError: the node refused
                    continue  # e.g. an ancestor was replaced first: nothing to replace
                self.log.replaced += 1
                pool = set(self.node.rpc("getrawmempool"))
        self._noise()  # the new branch's blocks must differ from the invalidated ones
        self.node.rpc("generate", depth + 1)
        self.log.reorgs.append(depth)

    async def run(self, until: float) -> None:
        last_reorg = time.monotonic()
        rng = self.rng
        while time.monotonic() < until:
            roll = rng.random()
            if roll < 0.40:
                await asyncio.to_thread(self._deposit)
            elif roll < 0.50:
                await asyncio.to_thread(self._noise)
            elif roll < 0.85 or time.monotonic() - last_reorg < 2.5:
                n = rng.randint(1, 2)
                await self.rpc("generate", n)
                self.log.blocks_mined += n
            else:
                await asyncio.to_thread(self._reorg)
                last_reorg = time.monotonic()
            await asyncio.sleep(rng.uniform(0.02, 0.25))


async def test_sigkill_chaos_on_bitcoin(kafka: KafkaService, services: ServiceManager,
                                        node: BtcdService, tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"bitcoin crash test seed: {seed} (CRASH_TEST_SEED={seed} to repeat)")
    rng = random.Random(seed)
    wallet = RegtestWallet(node)
    uid = new_uid()
    watched = [regtest_payee(k, f"{uid}-{i}")
               for i, k in enumerate(("p2wpkh", "p2tr", "p2sh", "p2pkh", "p2wsh"))]
    stranger = regtest_payee("p2wpkh", f"{uid}-stranger")
    port = services.free_port()
    metrics = f"http://127.0.0.1:{port}"
    raw = btc_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid, node=node,
                     secrets_dir=tmp_path, start_block=int(node.rpc("getblockcount")),
                     metrics_port=port, confirmations=TIERS,
                     mempool={"enabled": True, "poll_interval_ms": 200, "drop_after_s": 3600})
    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse(raw, base_dir=tmp_path, environ={})
    await ensure_topics(cfg.kafka)
    await produce(kafka.bootstrap_servers, cfg.kafka.topics.address_registrations,
                  [registration(CHAIN, p.address, f"customer-{i}")
                   for i, p in enumerate(watched)])
    node.rpc("generate", 5)  # reorgs stay above the start block

    daemon = Daemon(config, tmp_path / "watcher.log", metrics)
    sending = Sending()
    driver = Driver(node, wallet, watched, stranger, random.Random(rng.random()), sending)
    started = time.monotonic()
    until = started + CHAOS_SECONDS
    try:
        killer = asyncio.create_task(chaos_kills(daemon, rng, until))
        driving = asyncio.create_task(driver.run(until))
        try:
            await asyncio.gather(killer, driving)
        finally:
            for task in (killer, driving):
                task.cancel()
            await asyncio.gather(killer, driving, return_exceptions=True)
        chaos_s = time.monotonic() - started

        node.rpc("generate", 5)  # everything left in the mempool is mined, deep enough
        height = int(node.rpc("getblockcount"))

        async def caught_up() -> bool:
            daemon.check_alive()
            try:
                return await scrape(metrics, "watcher_processed_height", chain=CHAIN) == height
            except (OSError, TimeoutError, AssertionError):
                return False
        deadline = time.monotonic() + 60
        while not await caught_up():
            if time.monotonic() > deadline:
                raise AssertionError(f"the watcher did not reach height {height} within 60s "
                                     f"(seed {seed}); log tail:\n{daemon.tail()}")
            await asyncio.sleep(0.2)  # polling: the daemon's progress has no event
        status, body = await http_get(f"{metrics}/readyz")
        assert status == 200, f"/readyz after catching up: {status} {body}"
        assert daemon.terminate() == 0, f"exit code after SIGTERM; log:\n{daemon.tail()}"
    finally:
        daemon.close()

    reader = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.deposits)
    await reader.start()
    try:
        events = await reader.read_to_end()
    finally:
        await reader.stop()
    canonical = {n: str(node.rpc("getblockhash", n)) for n in range(height + 1)}
    mined: dict[str, tuple[int, str] | None] = {}
    for tx, _ in sending.deposits:
        mined[tx.txid] = where_mined(node, tx.txid)

    print(f"seed {seed}: {chaos_s:.0f}s of chaos, {daemon.kills} SIGKILLs "
          f"({daemon.kills_while_ready} while ready), {len(sending.deposits)} deposits, "
          f"{len(sending.noise)} noise, {len(sending.reorgs)} reorgs {sending.reorgs}, "
          f"{sending.replaced} replaced, {len(events)} events "
          f"{dict(Counter((e['type'], e.get('reason')) for e in events))}, "
          f"final height {height}")
    problems = check(events, canonical, height, sending, mined)
    assert not problems, (f"seed {seed}: {len(problems)} problems:\n" + "\n".join(problems[:40])
                          + f"\nstream:\n{summary(events, 80)}")
    assert daemon.kills >= MIN_KILLS
    assert sending.reorgs, "no reorg happened: the run proves nothing about them"


def where_mined(node: BtcdService, txid: str) -> tuple[int, str] | None:
    """(height, block hash) of the main-chain block holding ``txid``, None if none does."""
    try:
        tx = node.rpc("getrawtransaction", txid, 1)
    except RuntimeError:  # DevStackError: the node refused
        return None  # replaced, or evicted with a replaced ancestor
    bh = tx.get("blockhash")
    if not bh:
        return None
    return int(node.rpc("getblockheader", bh)["height"]), str(bh)


def check(events: list[Event], canonical: dict[int, str], height: int, sending: Sending,
          mined: dict[str, tuple[int, str] | None]) -> list[str]:
    problems: list[str] = []
    ids = Counter(e["event_id"] for e in events)
    problems += [f"(a) event_id {i} appears {n} times" for i, n in ids.items() if n > 1]
    # Mempool facts (no block) may repeat per episode (seen again after a reorg); each
    # has its own event_id, checked above.
    in_blocks = [e for e in events if e["block_hash"] is not None]
    facts = Counter((e["deposit_id"], e["block_hash"], e["type"]) for e in in_blocks)
    problems += [f"(a) {f} appears {n} times" for f, n in facts.items() if n > 1]
    for e in events:
        if e["block_hash"] is None and e["type"] not in ("deposit.seen", "deposit.reverted"):
            problems.append(f"(b) {e['type']} without a block: {e}")
        if e["block_hash"] is None and e["type"] == "deposit.reverted" and \
                e.get("reason") not in ("replaced", "double_spent", "dropped"):
            problems.append(f"(b) a seen deposit reverted without a mempool reason: {e}")

    problems += lifecycle_problems(in_blocks, canonical, height)

    confirmed = {(e["deposit_id"], e["block_hash"]): e for e in events
                 if e["type"] == "deposit.confirmed"}
    expected: set[tuple[str, str]] = set()
    for tx, outs in sending.deposits:
        where = mined[tx.txid]
        if where is None:
            continue  # replaced (or evicted with a replaced ancestor)
        number, bh = where
        for vout, payee, amount in outs:
            if canonical.get(number) != bh or height - number + 1 < required_for(amount):
                problems.append(f"(e) setup: {tx.txid} is not in a canonical deep block")
                continue
            key = (f"{CHAIN}:{tx.txid}:vout:{vout}", bh)
            expected.add(key)
            ev = confirmed.get(key)
            if ev is None:
                problems.append(f"(e) lost: {amount} sat to {payee.address} in {key} has no "
                                "deposit.confirmed")
            elif (ev["amount"], ev["address"], ev["required_confirmations"]) != (
                    str(amount), payee.address, required_for(amount)):
                problems.append(f"(e) {key}: confirmed as {ev['amount']} to {ev['address']} "
                                f"(required {ev['required_confirmations']}), sent {amount} "
                                f"to {payee.address}")
    for key, ev in confirmed.items():
        if canonical.get(ev["block_number"]) == key[1] and key not in expected:
            problems.append(f"(e) unexpected confirmed deposit {key}: {ev}")
    noise = set(sending.noise)
    problems += [f"noise published: {e}" for e in events if e["txid"] in noise]
    # Every deposit sent was seen in the mempool before (or while) it was mined: the
    # watcher may have been down then, so only a deposit seen at all must be consistent.
    seen = {e["deposit_id"] for e in events if e["type"] == "deposit.seen"}
    if sending.deposits and not seen:
        problems.append("(f) mempool watching on, yet no deposit.seen at all")
    return problems
