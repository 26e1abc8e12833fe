"""Random histories of mining, forks, failed commits and restarts keep the contract's rules.

Rules checked on the committed stream (contract, "Deposits"):
1. per (deposit_id, block_hash): at most one pending, one confirmed, one reverted, in that order;
2. every deposit in a canonical block deep enough has exactly one confirmed, and is not reverted;
3. every announced deposit whose block left the chain is reverted exactly once.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.chainsim import SimChain, transfer
from tests.component.test_follower import ALICE, BOB, STRANGER, drain, follower
from tests.memsink import MemorySink

ORDER = {"deposit.pending": 0, "deposit.confirmed": 1, "deposit.reverted": 2}

op = st.one_of(
    st.tuples(st.just("mine"), st.lists(st.sampled_from([ALICE, BOB, STRANGER]), max_size=3),
              st.integers(1, 3 * 10**19)),
    st.tuples(st.just("empty"), st.integers(1, 4)),
    st.tuples(st.just("fork"), st.integers(1, 5)),
    st.tuples(st.just("step"), st.integers(1, 3)),
    st.tuples(st.just("fail_commit"), st.integers(1, 2)),
    st.tuples(st.just("restart")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=5, max_size=40))
async def test_random_histories_keep_the_rules(ops: list[tuple[object, ...]]) -> None:
    sim, sink = SimChain(), MemorySink()
    f = follower(sim, sink)
    await f.start()
    counter = 0
    for o in ops:
        kind = o[0]
        if kind == "mine":
            tos, amount = o[1], o[2]
            assert isinstance(tos, list) and isinstance(amount, int)
            counter += 1
            sim.mine(*(transfer(f"0x{counter:x}", to, amount, locator=f"log:{i}")
                       for i, to in enumerate(tos)))
        elif kind == "empty":
            assert isinstance(o[1], int)
            sim.mine_empty(o[1])
        elif kind == "fork":
            assert isinstance(o[1], int)
            depth = min(o[1], sim.height - 1)
            if depth >= 1:
                sim.fork_at(sim.height - depth + 1)
                sim.mine_empty(depth + 1)    # the new branch is longer, as a real reorg
        elif kind == "step":
            assert isinstance(o[1], int)
            for _ in range(o[1]):
                await f.step()
        elif kind == "fail_commit":
            assert isinstance(o[1], int)
            sink.fail_commits += o[1]
        elif kind == "restart":
            f = follower(sim, sink)
            await f.start()
    sink.fail_commits = 0
    sim.mine_empty(1)
    await drain(f)
    assert f.status.halted_reason is None

    seq: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in sink.events():
        seq[(str(e["deposit_id"]), str(e["block_hash"]))].append(str(e["type"]))
    # Rule 1
    for key, types in seq.items():
        assert len(types) == len(set(types)), (key, types)
        assert [ORDER[t] for t in types] == sorted(ORDER[t] for t in types), (key, types)

    canonical = set(sim.canonical)
    tip = sim.height
    for (did, bh), types in seq.items():
        if bh in canonical:
            # Rule 2 (and nothing canonical is reverted)
            assert "deposit.reverted" not in types, (did, types)
            number = sim.blocks[bh][0].number  # type: ignore[index]
            t = next(t for t in sim.blocks[bh][1] if f"eth:{t.txid}:{t.locator}" == did)  # type: ignore[index]
            need = 3 if t.amount < 10**19 else 6
            if tip - number + 1 >= need:
                assert types.count("deposit.confirmed") == 1, (did, types)
            else:
                assert types == ["deposit.pending"], (did, types)
        else:
            # Rule 3
            assert types[-1] == "deposit.reverted", (did, types)

    # Every watched transfer in a canonical block was announced at all.
    for bh in canonical:
        _, transfers = sim.blocks[bh]
        for t in transfers:
            if t.to_address in (ALICE, BOB):
                assert (f"eth:{t.txid}:{t.locator}", bh) in seq
