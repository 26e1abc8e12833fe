"""The follower's mempool step against a simulated UTXO node and the in-memory transactional sink."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.chainsim import HexCodec, SimChain, Watched, addr, key_of
from tests.component.conftest import chain_config
from tests.memsink import MemorySink
from watcher.core.mempool import MempoolChange, UnconfirmedTx
from watcher.ports import WatchedAddressLookup
from watcher.runtime.follower import ChainFollower, StepOutcome
from watcher.types import (
    Address,
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    Outpoint,
    Spend,
    Transfer,
    TxId,
)

ALICE, BOB, STRANGER = addr(0xA11CE), addr(0xB0B), addr(0x5757)
DROP = 300.0


@dataclass
class UtxoSim(SimChain):
    """SimChain whose blocks also list the inputs they spend, plus a node mempool."""

    block_spends: dict[BlockHash, tuple[Spend, ...]] = field(default_factory=dict)
    pool: dict[TxId, UnconfirmedTx] = field(default_factory=dict)
    baseline: list[TxId] = field(default_factory=list)
    polls: list[bool] = field(default_factory=list)
    watched_outpoints: frozenset[Outpoint] = frozenset()

    def send(self, tx: UnconfirmedTx) -> None:
        for txid in [t for t, other in self.pool.items() if set(other.spends) & set(tx.spends)]:
            del self.pool[txid]
        self.pool[tx.txid] = tx

    def mine_txs(self, *txs: UnconfirmedTx) -> BlockRef:
        ref = self.mine(*(t for tx in txs for t in tx.transfers))
        self.block_spends[ref.hash] = tuple(Spend(o, tx.txid) for tx in txs for o in tx.spends)
        for tx in txs:
            self.pool.pop(tx.txid, None)
        return ref

    async def contents(self, refs: Sequence[BlockRef],
                       watched: WatchedAddressLookup) -> list[BlockContents]:
        out = await super().contents(refs, watched)
        # As a real source may: only the inputs spending what the follower said it tracks.
        return [BlockContents(c.ref, c.transfers,
                              tuple(s for s in self.block_spends.get(c.ref.hash, ())
                                    if s.outpoint in self.watched_outpoints))
                for c in out]

    def watch_outpoints(self, outpoints: frozenset[Outpoint]) -> None:
        self.watched_outpoints = outpoints

    async def mempool(self, watched: WatchedAddressLookup, *, full: bool) -> MempoolChange:
        self._touch()
        self.polls.append(full)
        current = list(self.pool)
        new = current if full else [t for t in current if t not in self.baseline]
        gone = () if full else tuple(t for t in self.baseline if t not in self.pool)
        self.baseline = current
        added = tuple(UnconfirmedTx(tx.txid, tuple(t for t in tx.transfers
                                                   if key_of(t.to_address) in watched),
                                    tx.spends, tx.rbf) for tx in (self.pool[t] for t in new))
        return MempoolChange(added, gone, self.ref_at(self.height).hash,
                             frozenset(current) if full else None)


def utx(txid: str, pays: Sequence[tuple[Address, int]], coin: str, rbf: bool = True) -> UnconfirmedTx:
    transfers = tuple(Transfer(TxId(txid), f"vout:{n}", AssetSymbol("ETH"), None, to, None, amount, 18)
                      for n, (to, amount) in enumerate(pays))
    return UnconfirmedTx(TxId(txid), transfers, (Outpoint(TxId(coin), 0),), rbf)


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def follower(sim: UtxoSim, sink: MemorySink, clock: Clock) -> ChainFollower:
    watched = Watched(ALICE, BOB, labels={ALICE: "customer-1"})
    return ChainFollower(chain_config(), sim, sink, watched, HexCodec(), "payments.deposits",
                         clock=clock, mempool=sim, mempool_drop_after_s=DROP)


async def settle(f: ChainFollower) -> None:
    for _ in range(50):
        if await f.step() is not StepOutcome.PROGRESS:
            break
    await f.mempool_step()


def short(sink: MemorySink) -> list[tuple[Any, ...]]:
    return [(e["type"], e["deposit_id"], e.get("reason"), e["block_number"]) for e in sink.events()]


async def started(sim: UtxoSim, sink: MemorySink, clock: Clock) -> ChainFollower:
    f = follower(sim, sink, clock)
    await f.start()
    await settle(f)
    return f


A = utx("0xaa", [(ALICE, 10**18), (STRANGER, 5)], "coin1")


async def test_seen_then_mined_then_confirmed() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = await started(sim, sink, clock)
    sim.send(A)
    await settle(f)
    seen = sink.events()[-1]
    assert (seen["type"], seen["deposit_id"], seen["block_number"], seen["block_hash"],
            seen["rbf"], seen["label"], seen["confirmations"], seen["amount"]) == (
        "deposit.seen", "eth:0xaa:vout:0", None, None, True, "customer-1", 0, str(10**18))
    sim.mine_txs(A)
    await settle(f)
    sim.mine_empty(2)
    await settle(f)
    assert short(sink) == [("deposit.seen", "eth:0xaa:vout:0", None, None),
                           ("deposit.pending", "eth:0xaa:vout:0", None, 1),
                           ("deposit.confirmed", "eth:0xaa:vout:0", None, 1)]
    assert f.state is not None and len(f.state.mempool) == 0


async def test_replacement_paying_elsewhere_reverts_and_one_paying_bob_is_a_new_deposit() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = await started(sim, sink, clock)
    sim.send(A)
    await settle(f)
    sim.send(utx("0xbb", [(STRANGER, 10**18)], "coin1"))
    await settle(f)
    sim.send(utx("0xcc", [(ALICE, 1)], "coin2"))
    await settle(f)
    sim.send(utx("0xdd", [(BOB, 2)], "coin2", rbf=False))
    await settle(f)
    assert short(sink) == [("deposit.seen", "eth:0xaa:vout:0", None, None),
                           ("deposit.reverted", "eth:0xaa:vout:0", "replaced", None),
                           ("deposit.seen", "eth:0xcc:vout:0", None, None),
                           ("deposit.reverted", "eth:0xcc:vout:0", "replaced", None),
                           ("deposit.seen", "eth:0xdd:vout:0", None, None)]
    assert sink.events()[-1]["rbf"] is False
    assert sink.events()[1]["previous_type"] == "deposit.seen"


async def test_double_spend_in_a_block_is_committed_with_that_block() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = await started(sim, sink, clock)
    sim.send(A)
    await settle(f)
    commits = sink.commits
    ref = sim.mine_txs(utx("0xee", [(STRANGER, 1)], "coin1"))
    sim.pool.pop(TxId("0xaa"))
    assert await f.step() is StepOutcome.CAUGHT_UP
    assert sink.commits == commits + 1
    assert short(sink)[-1] == ("deposit.reverted", "eth:0xaa:vout:0", "double_spent", None)
    assert f.state is not None and f.state.tip == ref


async def test_dropped_only_after_the_timeout() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = await started(sim, sink, clock)
    sim.send(A)
    await settle(f)
    del sim.pool[TxId("0xaa")]
    clock.now += 10
    await settle(f)
    clock.now += DROP - 1
    await settle(f)
    assert [e[0] for e in short(sink)] == ["deposit.seen"]
    clock.now += 1
    await settle(f)
    assert short(sink)[-1] == ("deposit.reverted", "eth:0xaa:vout:0", "dropped", None)


async def test_failed_commits_and_restarts_publish_each_fact_once() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = await started(sim, sink, clock)
    sim.send(A)
    sink.fail_commits = 1
    await settle(f)                      # seen lost with the aborted transaction
    assert sink.events() == []
    await settle(f)                      # state back to the checkpoint: a full listing
    assert sim.polls[-1] is True
    f = await started(sim, sink, clock)  # a restart lists everything again: nothing new
    sim.send(utx("0xbb", [(BOB, 7)], "coin1"))
    await settle(f)
    ids = [e["event_id"] for e in sink.events()]
    assert short(sink) == [("deposit.seen", "eth:0xaa:vout:0", None, None),
                           ("deposit.reverted", "eth:0xaa:vout:0", "replaced", None),
                           ("deposit.seen", "eth:0xbb:vout:0", None, None)]
    assert len(set(ids)) == len(ids)


async def test_reorged_out_transaction_seen_again_is_a_new_fact() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = await started(sim, sink, clock)
    sim.send(A)
    await settle(f)
    ref = sim.mine_txs(A)
    await settle(f)
    sim.fork_at(ref.number)
    sim.mine_empty(2)
    sim.pool[A.txid] = A                 # the node puts it back into its mempool
    await settle(f)                      # the reorg asks for a full listing at once
    assert short(sink) == [("deposit.seen", "eth:0xaa:vout:0", None, None),
                           ("deposit.pending", "eth:0xaa:vout:0", None, ref.number),
                           ("deposit.reverted", "eth:0xaa:vout:0", "reorg", ref.number),
                           ("deposit.seen", "eth:0xaa:vout:0", None, None)]
    first, again = sink.events()[0]["event_id"], sink.events()[-1]["event_id"]
    assert first != again
    assert Counter(e["type"] for e in sink.events())["deposit.seen"] == 2


async def test_run_loop_polls_the_mempool_when_caught_up() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = follower(sim, sink, clock)
    await f.start()
    sim.send(A)
    stop = asyncio.Event()
    task = asyncio.create_task(f.run(stop))
    for _ in range(200):
        if sink.events():
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert short(sink) == [("deposit.seen", "eth:0xaa:vout:0", None, None)]


async def test_prefetched_blocks_fetched_before_a_seen_tx_are_fetched_again() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = await started(sim, sink, clock)
    sim.mine_empty(6)
    sim.mine_txs(utx("0xee", [(STRANGER, 1)], "coin1"))   # block 7 spends coin1
    sim.mine_empty(3)
    assert await f.step() is StepOutcome.PROGRESS          # blocks 1-5; 6-10 prefetched
    sim.send(A)                                            # A spends coin1 too
    await f.mempool_step()
    for _ in range(10):
        if await f.step() is not StepOutcome.PROGRESS:
            break
    assert short(sink) == [("deposit.seen", "eth:0xaa:vout:0", None, None),
                           ("deposit.reverted", "eth:0xaa:vout:0", "double_spent", None)]


async def test_run_loop_polls_the_mempool_at_its_own_interval() -> None:
    sim, sink, clock = UtxoSim(), MemorySink(), Clock()
    f = ChainFollower(chain_config(), sim, sink, Watched(ALICE), HexCodec(), "payments.deposits",
                      clock=clock, mempool=sim, mempool_interval_s=3600)
    await f.start()
    stop = asyncio.Event()
    task = asyncio.create_task(f.run(stop))
    calls = sim.calls
    for _ in range(500):
        if sim.calls > calls + 20:           # many block-path polls (poll interval 10 ms)
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert sim.calls > calls + 20 and sim.polls == [True]
