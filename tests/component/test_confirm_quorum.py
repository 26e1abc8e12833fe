"""``confirm_quorum: 2`` with one endpoint on a fork: nothing of the fork is confirmed, and
deposits confirm once both endpoints agree."""

from __future__ import annotations

import copy
import random

from chains.evm.adapter import EvmChainSource, build_pool
from tests.chainsim import HexCodec, Watched, addr
from tests.component.test_untrusted_nodes import Clock, two_endpoint_config
from tests.evmsim import EvmSim, FaultyNode, SimTx, h
from tests.memsink import MemorySink
from watcher.core.endpoints import EndpointPolicy
from watcher.metrics import REGISTRY
from watcher.runtime.follower import ChainFollower, StepOutcome
from watcher.runtime.health import readiness
from watcher.runtime.retry import RetryPolicy

ALICE, PAYER = addr(0xA11CE), addr(0x100)


def pay(tag: str, amount: int = 10**18) -> SimTx:
    return SimTx(h("tx", tag), PAYER, ALICE, amount)


async def drain(f: ChainFollower, clock: Clock, limit: int = 50) -> None:
    for _ in range(limit):
        outcome = await f.step()
        clock.now += 1
        if outcome is not StepOutcome.PROGRESS:
            return
    raise AssertionError("never settled")


async def test_fork_deposits_never_confirm_and_agreed_ones_do() -> None:
    main = EvmSim()
    for _ in range(3):
        main.mine([])
    fork = copy.deepcopy(main)
    fork.salt = "fork"
    fork.mine([pay("on-the-fork")])
    for _ in range(5):
        fork.mine([])
    main.mine([pay("on-main")])
    for _ in range(4):
        main.mine([])
    # "a" is followed (first in order, both within tolerance) and is on the fork.
    nodes = {"a": FaultyNode(fork, random.Random(1), 0.0),
             "b": FaultyNode(main, random.Random(2), 0.0)}
    cfg = two_endpoint_config(confirm_quorum=2, lag_tolerance_blocks=10)
    clock = Clock()
    pool = build_pool(cfg, transports=nodes, retry=RetryPolicy().without_waiting(),
                      policy=EndpointPolicy(lag_tolerance_blocks=10), clock=clock)
    sink = MemorySink()
    f = ChainFollower(cfg, EvmChainSource(cfg, pool), sink, Watched(ALICE), HexCodec(),
                      "payments.deposits", clock=lambda: 1_800_000_000.0)
    await f.start()
    held_before = REGISTRY.get_sample_value(
        "watcher_confirm_quorum_disagreements_total", {"chain": "eth"}) or 0.0
    await drain(f, clock)
    fork_block = fork.canonical[4]
    assert f.state is not None and f.state.tip is not None
    assert f.state.tip.hash == fork.canonical[-1]  # following the fork: 6 confirmations deep
    assert [(e["type"], e["block_hash"]) for e in sink.events()] == [
        ("deposit.pending", fork_block)]
    assert (REGISTRY.get_sample_value("watcher_confirm_quorum_disagreements_total",
                                      {"chain": "eth"}) or 0.0) > held_before
    assert f.status.quorum_problem is not None
    r = readiness({"eth": f.status}, {"eth": 60.0}, True, 1_800_000_000.0)
    assert not r.ready and any("confirmations held" in x for x in r.reasons)
    for _ in range(3):  # more blocks on the fork change nothing: still no quorum
        fork.mine([])
        await drain(f, clock)
    assert [e["type"] for e in sink.events()] == ["deposit.pending"]

    # The forked endpoint comes back to the main chain: its deposit is reverted, main's
    # deposit confirmed once both agree.
    for _ in range(5):
        main.mine([])
    nodes["a"].sim = main
    await drain(f, clock)
    main_block = main.canonical[4]
    assert [(e["type"], e["block_hash"]) for e in sink.events()] == [
        ("deposit.pending", fork_block),
        ("deposit.reverted", fork_block),
        ("deposit.confirmed", main_block),
    ]
    assert f.status.quorum_problem is None
    assert not any(e["type"] == "deposit.confirmed" and e["block_hash"] == fork_block
                   for e in sink.events())


async def test_held_deposit_confirms_at_an_unchanged_tip_once_the_quorum_agrees() -> None:
    main = EvmSim()
    main.mine([pay("x")])
    for _ in range(4):
        main.mine([])
    behind = copy.deepcopy(main)
    behind.canonical = behind.canonical[:1]  # b knows only genesis yet: cannot vouch
    nodes = {"a": FaultyNode(main, random.Random(1), 0.0),
             "b": FaultyNode(behind, random.Random(2), 0.0)}
    cfg = two_endpoint_config(confirm_quorum=2, lag_tolerance_blocks=10)
    clock = Clock()
    pool = build_pool(cfg, transports=nodes, retry=RetryPolicy().without_waiting(),
                      policy=EndpointPolicy(lag_tolerance_blocks=10), clock=clock)
    sink = MemorySink()
    f = ChainFollower(cfg, EvmChainSource(cfg, pool), sink, Watched(ALICE), HexCodec(),
                      "payments.deposits", clock=lambda: 1_800_000_000.0)
    await f.start()
    await drain(f, clock)
    assert [e["type"] for e in sink.events()] == ["deposit.pending"]
    nodes["b"].sim = main  # b catches up; the followed tip does not move
    await drain(f, clock)
    assert [e["type"] for e in sink.events()] == ["deposit.pending", "deposit.confirmed"]
