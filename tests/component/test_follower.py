"""The follower against a simulated chain with forks and an in-memory transactional sink."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from tests.chainsim import HexCodec, SimChain, Watched, addr, transfer
from tests.component.conftest import chain_config
from tests.memsink import MemorySink
from watcher.runtime.follower import ChainFollower, StepOutcome

ALICE, BOB, STRANGER = addr(0xA11CE), addr(0xB0B), addr(0x5757)


def follower(sim: SimChain, sink: MemorySink, **cfg: Any) -> ChainFollower:
    watched = Watched(ALICE, BOB, labels={ALICE: "customer-1"})
    return ChainFollower(chain_config(**cfg), sim, sink, watched, HexCodec(), "payments.deposits",
                         clock=lambda: 1_800_000_000.0)


async def drain(f: ChainFollower, limit: int = 100) -> StepOutcome:
    outcome = StepOutcome.IDLE
    for _ in range(limit):
        outcome = await f.step()
        if outcome is not StepOutcome.PROGRESS:
            return outcome
    raise AssertionError("follower never caught up")


def kinds(sink: MemorySink) -> list[tuple[Any, ...]]:
    return [(e["type"], e["deposit_id"], e["block_number"], e["confirmations"]) for e in sink.events()]


async def test_pending_then_confirmed_with_contract_fields() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine(transfer("0xt1", ALICE, 10**18), transfer("0xt2", STRANGER, 5))
    assert await drain(f) is StepOutcome.CAUGHT_UP
    sim.mine_empty(2)
    await drain(f)
    assert kinds(sink) == [("deposit.pending", "eth:0xt1:tx", 1, 1),
                           ("deposit.confirmed", "eth:0xt1:tx", 1, 3)]
    ev = sink.events()[1]
    assert ev["amount"] == "1000000000000000000" and ev["decimals"] == 18
    assert ev["label"] == "customer-1" and ev["required_confirmations"] == 3
    assert ev["block_hash"] == sim.ref_at(1).hash and ev["schema_version"] == 1
    assert sink.records[0].key == b"eth:0xt1:tx"


async def test_reorg_reverts_pending_and_remined_tx_starts_new_lifecycle() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine_empty(2)
    sim.mine(transfer("0xt1", ALICE, 10**18))          # height 3
    await drain(f)
    old_hash = sim.ref_at(3).hash
    sim.fork_at(3)
    sim.mine_empty(1)                                  # new 3: empty
    sim.mine(transfer("0xt1", ALICE, 10**18))          # re-mined at 4
    await drain(f)
    evs = sink.events()
    assert [(e["type"], e["block_hash"] == old_hash) for e in evs] == [
        ("deposit.pending", True), ("deposit.reverted", True), ("deposit.pending", False)]
    assert evs[1]["previous_type"] == "deposit.pending"
    assert evs[2]["block_number"] == 4


async def test_reorg_after_confirmation_reverts_with_previous_type_confirmed() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine(transfer("0xt1", ALICE, 10**18))
    sim.mine_empty(4)
    await drain(f)
    sim.fork_at(1)
    sim.mine_empty(6)
    await drain(f)
    types = [(e["type"], e.get("previous_type")) for e in sink.events()]
    assert types == [("deposit.confirmed", None), ("deposit.reverted", "deposit.confirmed")]


async def test_reorg_deeper_than_window_halts_and_publishes_nothing_more() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink, reorg_window=6, confirmations={"ETH": 3, "USDC": 1},
                 finality={"mode": "depth", "depth": 100})
    await f.start()
    sim.mine_empty(10)
    await drain(f)
    committed = sink.commits
    sim.fork_at(2)
    sim.mine_empty(12)
    assert await drain(f) is StepOutcome.HALTED
    assert f.status.halted_reason is not None and "window" in f.status.halted_reason
    assert sink.commits == committed


async def test_reorg_below_finality_halts() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink, finality={"mode": "depth", "depth": 3})
    await f.start()
    sim.mine_empty(10)
    await drain(f)
    sim.fork_at(5)
    sim.mine_empty(7)
    assert await drain(f) is StepOutcome.HALTED
    assert "finalized" in (f.status.halted_reason or "")


async def test_node_behind_the_tip_is_not_a_reorg() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine(transfer("0xt1", ALICE, 10**18))
    sim.mine_empty(1)
    await drain(f)
    behind = SimChain(blocks=dict(sim.blocks), canonical=list(sim.canonical[:2]))
    f.source = behind
    assert await f.step() is StepOutcome.LAGGING_NODE
    assert await f.step() is StepOutcome.LAGGING_NODE
    assert "behind" in (f.status.last_error or "")
    assert [e["type"] for e in sink.events()] == ["deposit.pending"]
    f.source = sim          # the node catches up: following resumes where it was
    sim.mine_empty(1)
    await drain(f)
    assert f.status.processed_height == sim.height and f.status.last_error is None


async def test_failed_commit_reloads_state_and_loses_nothing() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine(transfer("0xt1", ALICE, 10**18))
    await drain(f)
    sim.mine(transfer("0xt2", BOB, 10**18))
    sim.mine_empty(2)
    sink.fail_commits = 2
    assert await f.step() is StepOutcome.IDLE
    assert await f.step() is StepOutcome.IDLE
    await drain(f)
    got = Counter((e["type"], e["deposit_id"]) for e in sink.events())
    # Blocks 2..4 arrive in one batch after the failures, so t2 is first seen 3 deep: confirmed alone.
    assert got == Counter({("deposit.pending", "eth:0xt1:tx"): 1, ("deposit.confirmed", "eth:0xt1:tx"): 1,
                           ("deposit.confirmed", "eth:0xt2:tx"): 1})


async def test_restart_resumes_from_checkpoint_without_duplicates() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine(transfer("0xt1", ALICE, 10**18))
    await drain(f)
    sim.mine_empty(5)
    g = follower(sim, sink)   # a new process: only the sink's committed state survives
    await g.start()
    await drain(g)
    assert [e["type"] for e in sink.events()] == ["deposit.pending", "deposit.confirmed"]


async def test_a_start_waits_for_a_broker_not_ready_yet_then_follows() -> None:
    """Kafka back from a pause, its broker not yet registered: the producer's start is
    refused a few times; the start is tried again instead of ending the process."""
    sim, sink = SimChain(), MemorySink(fail_starts=2)
    f = follower(sim, sink)
    await f.start()
    assert sink.starts == 3 and f.status.started
    sim.mine(transfer("0xt1", ALICE, 10**18))
    await drain(f)
    assert [e["type"] for e in sink.events()] == ["deposit.pending"]


async def test_fenced_instance_halts_for_good() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine(transfer("0xt1", ALICE, 10**18))
    sink.fenced = True
    assert await f.step() is StepOutcome.HALTED
    assert f.status.fenced
    sink.fenced = False
    assert await f.step() is StepOutcome.HALTED
    assert sink.events() == []


async def test_node_errors_are_survived() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine(transfer("0xt1", ALICE, 10**18))
    sim.down = True
    assert await f.step() is StepOutcome.IDLE
    assert f.status.last_error is not None
    sim.down = False
    await drain(f)
    assert [e["type"] for e in sink.events()] == ["deposit.pending"]


@pytest.mark.parametrize("start", [0, 7])
async def test_catch_up_in_batches_confirms_deep_deposits_directly(start: int) -> None:
    sim, sink = SimChain(), MemorySink()
    for i in range(1, 40):
        sim.mine(transfer(f"0x{i:x}", ALICE, 10**18)) if i % 4 == 0 else sim.mine_empty(1)
    f = follower(sim, sink, start_block=start)
    await f.start()
    await drain(f)
    evs = sink.events()
    heights = sorted({e["block_number"] for e in evs})
    assert heights == [i for i in range(max(start, 1), 40) if i % 4 == 0]
    # Each deposit exactly once confirmed; the ones in the last 2 blocks still pending.
    confirmed = [e for e in evs if e["type"] == "deposit.confirmed"]
    assert len(confirmed) == len({e["deposit_id"] for e in confirmed})
    assert all(e["confirmations"] >= 3 for e in confirmed)
    assert f.status.processed_height == 39 and sink.commits >= 39 // 5


async def test_unreadable_checkpoint_halts_without_crashing() -> None:
    sim, sink = SimChain(), MemorySink()
    sink.checkpoints["chain:eth"] = b'{"version": 1, "chain": "eth", "window": "garbage"}'
    f = follower(sim, sink)
    await f.start()
    assert await f.step() is StepOutcome.HALTED
    assert "checkpoint unreadable" in (f.status.halted_reason or "")
    assert await f.step() is StepOutcome.HALTED
    assert sink.commits == 0


async def test_finalized_tag_mode_halts_on_a_reorg_below_the_nodes_finalized_block() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink, finality={"mode": "finalized"})
    await f.start()
    sim.mine_empty(10)
    sim.finalized_number = 6
    await drain(f)
    assert f.state is not None and f.state.window.finalized_number == 6
    sim.fork_at(8)                      # above finality: an ordinary reorg
    sim.mine_empty(4)
    await drain(f)
    assert f.status.halted_reason is None
    sim.fork_at(5)                      # replaces finalized block 6
    sim.mine_empty(10)
    assert await drain(f) is StepOutcome.HALTED
    assert "finalized" in (f.status.halted_reason or "")


async def test_finalized_tag_never_runs_ahead_of_the_verified_tip() -> None:
    sim, sink = SimChain(), MemorySink()
    sim.mine_empty(30)
    sim.finalized_number = 25          # the node is far ahead; we start at block 0
    f = follower(sim, sink, finality={"mode": "finalized"}, batch_size=5)
    await f.start()
    assert await f.step() is StepOutcome.PROGRESS
    assert f.state is not None and f.state.window.finalized_number == f.status.processed_height


async def test_start_block_above_the_node_head_waits_for_it() -> None:
    sim, sink = SimChain(), MemorySink()
    sim.mine(transfer("0xearly", ALICE, 10**18))
    f = follower(sim, sink, start_block=5)
    await f.start()
    assert await f.step() is StepOutcome.IDLE
    assert sink.commits == 0
    sim.mine_empty(3)
    sim.mine(transfer("0xlate", ALICE, 10**18))   # height 5
    await drain(f)
    assert [e["deposit_id"] for e in sink.events()] == ["eth:0xlate:tx"]
    assert f.state is not None and f.state.window.bottom is not None
    assert f.state.window.bottom.number == 5


def test_confirmed_deposits_observe_the_wait_for_credit() -> None:
    """watcher_deposit_confirmation_seconds: paying block's timestamp to deposit.confirmed
    (the follower's clock is 1_800_000_000); pending and reverted events are not waits."""
    from watcher.core.deposits import DepositEvent, TrackedDeposit
    from watcher.metrics import REGISTRY
    from watcher.types import (
        Address,
        AssetSymbol,
        BlockHash,
        BlockRef,
        DepositEventType,
        DepositId,
        Transfer,
        TxId,
    )

    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    chain = str(f.cfg.id)

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"chain": chain}) or 0.0

    block = BlockRef(7, BlockHash("0xb7"), BlockHash("0xb6"), timestamp=1_800_000_000 - 600)
    t = Transfer(TxId("0xt"), "tx", AssetSymbol("ETH"), None, Address(ALICE), None, 5, 18)
    d = TrackedDeposit(DepositId(f"{chain}:0xt:tx"), block, t, 3, None)
    def events(kind: str) -> float:
        return REGISTRY.get_sample_value("watcher_deposit_events_total",
                                         {"chain": chain, "type": kind}) or 0.0

    count, total = sample("watcher_deposit_confirmation_seconds_count"), \
        sample("watcher_deposit_confirmation_seconds_sum")
    kinds = ("deposit.pending", "deposit.confirmed", "deposit.reverted", "deposit.seen")
    before = [events(k) for k in kinds]
    for _ in range(2):  # the second time through the follower's cached series
        f._count_events([DepositEvent(DepositEventType.PENDING, d, 1),
                         DepositEvent(DepositEventType.CONFIRMED, d, 3),
                         DepositEvent(DepositEventType.REVERTED, d, 0, DepositEventType.CONFIRMED)])
    assert sample("watcher_deposit_confirmation_seconds_count") == count + 2
    assert sample("watcher_deposit_confirmation_seconds_sum") == total + 1200
    assert [events(k) for k in kinds] == [b + n for b, n in zip(before, (2, 2, 2, 0), strict=True)]


class RecordingSim(SimChain):
    """Records the order of header requests and of contents requests and answers; each
    contents request yields to the event loop first, as a network round trip does."""

    def __init__(self) -> None:
        super().__init__()
        self.trace: list[tuple[str, int]] = []

    async def headers(self, start: int, count: int) -> list[Any]:
        self.trace.append(("headers", start))
        return await super().headers(start, count)

    async def contents(self, refs: Any, watched: Any) -> list[Any]:
        self.trace.append(("contents", refs[0].number))
        for _ in range(3):
            await asyncio.sleep(0)
        got = await super().contents(refs, watched)
        self.trace.append(("contents-answered", refs[0].number))
        return got


async def test_headers_of_the_next_final_range_are_asked_while_contents_are_fetched() -> None:
    """Batches of 5, finality depth 12, head 40: the ranges up to block 28 are final."""
    sim, sink = RecordingSim(), MemorySink()
    for i in range(1, 41):
        sim.mine(transfer(f"0x{i:x}", ALICE, 10**18)) if i % 5 == 0 else sim.mine_empty(1)
    f = follower(sim, sink, start_block=1)
    await f.start()
    assert await drain(f) is StepOutcome.CAUGHT_UP
    assert f.status.processed_height == 40
    t = sim.trace.index
    # 6-10, 11-15 and 16-20 asked before the contents of the range before them were answered.
    assert t(("headers", 6)) < t(("contents-answered", 1))
    assert t(("headers", 11)) < t(("contents-answered", 6))
    assert t(("headers", 16)) < t(("contents-answered", 11))
    # 31-35 would end above block 28: asked only once 26-30 is done.
    assert t(("headers", 31)) > t(("contents-answered", 26))
    # Every header asked once; every deposit confirmed once, in order.
    starts = [start for kind, start in sim.trace if kind == "headers"]
    assert len(starts) == len(set(starts))
    assert [e["block_number"] for e in sink.events() if e["type"] == "deposit.confirmed"] == \
        [5, 10, 15, 20, 25, 30, 35]


async def test_no_header_is_asked_ahead_above_finality_so_a_reorg_there_publishes_nothing_orphaned(
        ) -> None:
    """Batches of 5, finality depth 12, head 20: after the first step, blocks 6-10 are being
    prefetched; 11-15 lie above finality (8), so they are not asked ahead. The chain then
    reorgs from 11: the deposit of the orphaned block 12 is never published, the new
    branch's deposit at 12 is."""
    sim, sink = RecordingSim(), MemorySink()
    for i in range(1, 21):
        sim.mine(transfer("0xold", ALICE, 10**18)) if i == 12 else sim.mine_empty(1)
    f = follower(sim, sink, start_block=1)
    await f.start()
    assert await f.step() is StepOutcome.PROGRESS         # blocks 1-5; 6-10 prefetched
    for _ in range(10):
        await asyncio.sleep(0)                             # the prefetch runs to its end
    assert ("headers", 11) not in sim.trace
    sim.fork_at(11)
    for i in range(11, 22):
        sim.mine(transfer("0xnew", ALICE, 10**18)) if i == 12 else sim.mine_empty(1)
    assert await drain(f) is StepOutcome.CAUGHT_UP
    assert f.status.processed_height == 21
    published = {(e["deposit_id"], e["block_hash"]) for e in sink.events()}
    assert published == {("eth:0xnew:tx", sim.ref_at(12).hash)}
