"""The follower over two lying EVM endpoints: the committed stream is the truth anyway.

Two :class:`tests.evmsim.FaultyNode` transports share one simulated chain with reorgs
and inject, at random, every fault of issue #6. The oracle checks the committed
stream (``tests/memsink.py``) against the chain itself: every deposit of the final
canonical chain is there exactly once with its amount and confirmed once deep enough,
every deposit of an abandoned block is reverted, and no ``(deposit_id, block_hash)``
ever gets two events of one type or events out of order. No step may raise.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from chains.evm import verify
from chains.evm.adapter import EvmChainSource, build_pool
from tests.chainsim import HexCodec, Watched, addr
from tests.component.conftest import chain_config
from tests.evmsim import FAULTS, EvmSim, FaultyNode, random_txs
from tests.memsink import MemorySink
from watcher.config import ChainConfig
from watcher.core.endpoints import EndpointPolicy
from watcher.runtime.follower import ChainFollower, StepOutcome
from watcher.runtime.retry import RetryPolicy

WATCHED = [addr(0xA11CE), addr(0xB0B)]
STRANGERS = [addr(n) for n in range(0x100, 0x108)]
ORDER = ["deposit.pending", "deposit.confirmed", "deposit.reverted"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def two_endpoint_config(**overrides: Any) -> ChainConfig:
    return chain_config(endpoints=[{"name": "a", "url": "http://127.0.0.1:1"},
                                   {"name": "b", "url": "http://127.0.0.1:2"}],
                        traces="off", batch_size=6, blocks_per_request=2, max_concurrency=2,
                        rpc_max_attempts=4, **overrides)


def build(cfg: ChainConfig, nodes: dict[str, FaultyNode], clock: Clock
          ) -> tuple[ChainFollower, MemorySink, EvmChainSource]:
    pool = build_pool(cfg, transports=nodes, retry=RetryPolicy(max_attempts=4).without_waiting(),
                      policy=EndpointPolicy(cooldown_s=20.0, unreachable_retry_s=1.0),
                      clock=clock)
    source = EvmChainSource(cfg, pool)
    sink = MemorySink()
    follower = ChainFollower(cfg, source, sink, Watched(*WATCHED), HexCodec(),
                             "payments.deposits", clock=lambda: 1_800_000_000.0)
    return follower, sink, source


async def follow_until_tip(f: ChainFollower, sim: EvmSim, clock: Clock, limit: int = 400) -> int:
    """Steps until the committed tip is the chain's tip; the number of steps taken."""
    for n in range(1, limit + 1):
        outcome = await f.step()  # never raises: a fault that escaped would fail the test here
        assert outcome is not StepOutcome.HALTED, f.status.halted_reason
        clock.now += 2.0
        tip = f.state.tip if f.state is not None else None
        if tip is not None and tip.hash == sim.canonical[-1]:
            return n
    raise AssertionError(f"never reached the tip in {limit} steps: {f.status.last_error}")


def check_stream(sink: MemorySink, sim: EvmSim, start: int) -> None:
    by_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    amounts: dict[tuple[str, str], int] = {}
    confirmations: dict[tuple[str, str], int] = {}
    for ev in sink.events():
        key = (ev["deposit_id"], ev["block_hash"])
        by_key[key].append(ev["type"])
        amounts[key] = int(ev["amount"])
        confirmations[key] = ev["required_confirmations"]
    for key, types in by_key.items():
        # at most one of each type per (deposit_id, block_hash), in lifecycle order
        assert len(set(types)) == len(types), (key, types)
        assert types == sorted(types, key=ORDER.index), (key, types)
    live = {(k[0], k[1], amounts[k]) for k, types in by_key.items()
            if "deposit.reverted" not in types}
    truth = sim.truth("eth", start, set(WATCHED))
    assert live == truth, (f"missing {sorted(truth - live)[:3]}, "
                           f"invented {sorted(live - truth)[:3]}")
    height = {bh: int(sim.blocks[bh]["number"], 16) for bh in sim.canonical}
    for did, bh, _ in truth:
        deep = sim.height - height[bh] + 1 >= confirmations[(did, bh)]
        assert ("deposit.confirmed" in by_key[(did, bh)]) is deep, (did, bh, by_key[(did, bh)])


async def run_history(seed: int, rate: float, faults: tuple[str, ...] = FAULTS,
                      phases: int = 30) -> tuple[MemorySink, EvmSim, dict[str, FaultyNode]]:
    rng = random.Random(seed)
    sim = EvmSim()
    nodes = {"a": FaultyNode(sim, random.Random(seed * 7 + 1), rate, faults),
             "b": FaultyNode(sim, random.Random(seed * 7 + 2), rate, faults)}
    clock = Clock()
    cfg = two_endpoint_config()
    f, sink, source = build(cfg, nodes, clock)
    await f.start()
    try:
        for _ in range(phases):
            if sim.height > 8 and rng.random() < 0.25:
                depth = rng.randint(1, 5)
                old_height = sim.height
                dropped = sim.fork_at(sim.height - depth + 1)
                # some transactions are mined again on the new branch, each at most once
                for _ in range(rng.randint(1, depth + 1)):
                    again = [tx for tx in dropped if rng.random() < 0.3]
                    dropped = [tx for tx in dropped if tx not in again]
                    sim.mine(again + random_txs(rng, sim.height + 1, WATCHED, STRANGERS,
                                                rng.randint(0, 4)))
                while sim.height <= old_height:  # the new branch overtakes the old one
                    sim.mine(random_txs(rng, sim.height + 1, WATCHED, STRANGERS, 2))
            for _ in range(rng.randint(1, 4)):
                sim.mine(random_txs(rng, sim.height + 1, WATCHED, STRANGERS, rng.randint(0, 6)))
            await follow_until_tip(f, sim, clock)
        for _ in range(8):  # deep enough for every deposit to be confirmed
            sim.mine([])
        await follow_until_tip(f, sim, clock)
    finally:
        await source.close()
    return sink, sim, nodes


async def test_committed_stream_is_the_truth_whatever_the_nodes_do() -> None:
    injected: set[str] = set()
    for seed in (1, 2, 3):
        sink, sim, nodes = await run_history(seed, rate=0.2, phases=40)
        check_stream(sink, sim, start=0)
        assert any(e["type"] == "deposit.reverted" for e in sink.events())  # reorgs followed
        injected |= {k for n in nodes.values() for k in n.injected}
    assert injected == set(FAULTS), f"not every fault was injected: {set(FAULTS) - injected}"


async def test_honest_nodes_give_the_same_truth() -> None:
    sink, sim, _ = await run_history(4, rate=0.0)
    check_stream(sink, sim, start=0)


async def test_the_oracle_fails_when_the_bloom_check_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # Proof the test can fail: believing empty logs loses token deposits silently.
    monkeypatch.setattr(verify, "check_logs_answer", lambda logs, bloom, flt: True)
    sink, sim, _ = await run_history(5, rate=0.3, faults=("empty_logs",), phases=15)
    with pytest.raises(AssertionError, match="missing"):
        check_stream(sink, sim, start=0)


async def test_unreachable_at_start_then_back_on_another_chain_never_stops_the_follower() -> None:
    # The crash of issue #6: "a" is down at start and comes back serving another chain.
    sim = EvmSim()
    sim.mine([])
    a = FaultyNode(sim, random.Random(1), 0.0)
    b = FaultyNode(sim, random.Random(2), 0.0)
    a.outage = 3          # then serves chain id 1 for a while
    b.outage = 1 << 30    # down for good
    clock = Clock()
    f, _sink, source = build(two_endpoint_config(), {"a": a, "b": b}, clock)
    try:
        await f.start()   # nothing alive: logged, not raised
        assert f.status.started and f.status.last_error
        seen: set[str] = set()
        outcome = StepOutcome.IDLE
        for _ in range(100):
            outcome = await f.step()  # never raises
            seen |= {f"{n}:{v.state.value}" for n, v in f.status.endpoints.items()}
            clock.now += 2.0
        states = {n: v.state.value for n, v in source.endpoint_states().items()}
        assert "a:wrong_chain" in seen and "a:unreachable" in seen
        assert outcome is StepOutcome.CAUGHT_UP  # a re-identified after its cool-down
        assert states == {"a": "alive", "b": "unreachable"}
    finally:
        await source.close()
