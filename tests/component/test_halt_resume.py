"""An operator's resume of a chain halted by a reorg deeper than its window, on a simulated
chain and an in-memory sink: what is reverted, what is announced again, and that it follows."""

from __future__ import annotations

from typing import Any

from tests.chainsim import HexCodec, SimChain, Watched, addr, transfer
from tests.component.conftest import chain_config
from tests.memsink import MemorySink
from watcher import metrics
from watcher.core.chainstate import operator_resume
from watcher.ops.halt import resume_chain
from watcher.runtime.follower import ChainFollower, StepOutcome

ALICE, BOB = addr(0xA11CE), addr(0xB0B)
CFG: dict[str, Any] = {"reorg_window": 6, "confirmations": {"ETH": 3, "USDC": 1},
                       "finality": {"mode": "depth", "depth": 100}}


def follower(sim: SimChain, sink: MemorySink) -> ChainFollower:
    return ChainFollower(chain_config(**CFG), sim, sink, Watched(ALICE, BOB), HexCodec(),
                         "payments.deposits", clock=lambda: 1_800_000_000.0)


async def drain(f: ChainFollower) -> StepOutcome:
    for _ in range(100):
        outcome = await f.step()
        if outcome is not StepOutcome.PROGRESS:
            return outcome
    raise AssertionError("never settled")


def resumes() -> float:
    return metrics.REGISTRY.get_sample_value("watcher_operator_resumes_total", {"chain": "eth"}) or 0.0


async def test_resume_reverts_the_lost_branch_and_follows_the_new_one() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine_empty(5)
    sim.mine(transfer("0xc0ffee", ALICE, 10))       # block 6: confirmed by tip 8
    sim.mine_empty(2)
    sim.mine(transfer("0xbeef", BOB, 20))           # block 9: pending at tip 10
    sim.mine_empty(1)
    assert await drain(f) is StepOutcome.CAUGHT_UP
    before = [(e["type"], e["deposit_id"]) for e in sink.events()]
    assert before == [("deposit.confirmed", "eth:0xc0ffee:tx"), ("deposit.pending", "eth:0xbeef:tx")]

    sim.fork_at(3)                                  # below the window 5..10: halts
    sim.mine_empty(1)
    sim.mine(transfer("0xfeed", ALICE, 30))         # block 4 of the new branch
    sim.mine_empty(9)
    assert await drain(f) is StepOutcome.HALTED
    assert "window" in (f.status.halted_reason or "")

    sink.records.clear()
    _plan, record = await resume_chain(sim, sink, f.cfg, 3, "node operator confirmed the fork",
                                      "payments.deposits", 1_800_000_100.0)
    reverted = [(e["type"], e["deposit_id"], e.get("previous_type")) for e in sink.events()]
    assert reverted == [("deposit.reverted", "eth:0xc0ffee:tx", "deposit.confirmed"),
                        ("deposit.reverted", "eth:0xbeef:tx", "deposit.pending")]
    assert record["previous_tip"] == 10 and record["from_block"] == 3
    resume = operator_resume(sink.checkpoints["chain:eth"])
    assert resume is not None and resume["reason"] == "node operator confirmed the fork"

    counted = resumes()
    sink.records.clear()
    g = follower(sim, sink)
    await g.start()
    assert await drain(g) is StepOutcome.CAUGHT_UP
    assert resumes() == counted + 1
    after = [(e["type"], e["deposit_id"], e["block_number"]) for e in sink.events()]
    assert after == [("deposit.confirmed", "eth:0xfeed:tx", 4)]
    assert g.status.processed_height == sim.height
    # The next snapshot no longer carries the resume record: it is counted once.
    assert operator_resume(sink.checkpoints["chain:eth"]) is None


async def test_resume_keeps_canonical_deposits_below_and_rederives_those_above() -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    sim.mine_empty(5)
    sim.mine(transfer("0xa", ALICE, 1))             # block 6
    sim.mine(transfer("0xb", BOB, 2))               # block 7
    assert await drain(f) is StepOutcome.CAUGHT_UP  # tip 7: both pending
    first = {e["deposit_id"]: e["event_id"] for e in sink.events()}
    sink.records.clear()
    plan, _ = await resume_chain(sim, sink, f.cfg, 7, "replay block 7", "payments.deposits", 0.0)
    assert [d.deposit_id for d in plan.kept] == ["eth:0xa:tx"]
    assert [d.deposit_id for d in plan.rederived] == ["eth:0xb:tx"]
    assert sink.events() == []
    g = follower(sim, sink)
    await g.start()
    assert await drain(g) is StepOutcome.CAUGHT_UP
    # 0xb is announced again with the same event id as before (consumers drop it).
    (again,) = sink.events()
    assert (again["type"], again["event_id"]) == ("deposit.pending", first["eth:0xb:tx"])
    sim.mine_empty(2)
    assert await drain(g) is StepOutcome.CAUGHT_UP
    # 0xa, kept, goes on to its confirmation like 0xb.
    assert [(e["type"], e["deposit_id"]) for e in sink.events()[1:]] == [
        ("deposit.confirmed", "eth:0xa:tx"), ("deposit.confirmed", "eth:0xb:tx")]
