"""The resume plan: what is kept, reverted and re-derived, and the arguments it refuses."""

from __future__ import annotations

import pytest

from tests.chainsim import addr, transfer
from watcher.core.chainstate import ChainState
from watcher.core.resume import plan_resume
from watcher.core.window import Extend
from watcher.types import AssetSymbol, BlockContents, BlockHash, BlockRef, ChainId, DepositEventType

ETH = ChainId("eth")


def required(asset: AssetSymbol, amount: int) -> int:
    return 2


def ref(n: int, tag: str = "a") -> BlockRef:
    return BlockRef(n, BlockHash(f"0x{tag}{n}"), BlockHash(f"0x{tag}{n - 1}"))


def old_state() -> ChainState:
    """Blocks 1..6 of branch a; deposits in 2 (confirmed), 5 (confirmed) and 6 (pending)."""
    state = ChainState(ETH, 8, required)
    blocks = [BlockContents(ref(n), (transfer(f"0xt{n}", addr(1), n),) if n in (2, 5, 6) else ())
              for n in range(1, 7)]
    state.apply(Extend(tuple(b.ref for b in blocks)), blocks, lambda t: None)
    return state


def test_blocks_off_the_chain_are_reverted_canonical_ones_kept_or_rederived() -> None:
    # The node's chain is branch a up to 4, then branch b: 5 and 6 left the chain.
    canonical = {n: ref(n).hash for n in range(1, 5)} | {n: ref(n, "b").hash for n in (5, 6)}
    seed = [ref(n) for n in range(1, 4)]
    plan = plan_resume(ETH, old_state(), seed, canonical, 4, 8, required)
    assert [(e.type, e.deposit.deposit_id, e.previous_type) for e in plan.reverted] == [
        (DepositEventType.REVERTED, "eth:0xt5:tx", DepositEventType.CONFIRMED),
        (DepositEventType.REVERTED, "eth:0xt6:tx", DepositEventType.PENDING)]
    assert [d.deposit_id for d in plan.kept] == ["eth:0xt2:tx"]
    assert plan.rederived == ()
    assert plan.state.tip == ref(3)
    assert plan.state.window.finalized_number is None


def test_canonical_blocks_at_or_above_the_resume_block_are_rederived() -> None:
    canonical = {n: ref(n).hash for n in range(1, 7)}
    plan = plan_resume(ETH, old_state(), [ref(n) for n in range(1, 5)], canonical, 5, 8, required)
    assert plan.reverted == ()
    assert [d.deposit_id for d in plan.rederived] == ["eth:0xt5:tx", "eth:0xt6:tx"]
    assert [d.deposit_id for d in plan.state.tracker.deposits()] == ["eth:0xt2:tx"]


def test_without_a_checkpoint_the_window_is_the_seed() -> None:
    plan = plan_resume(ETH, None, [ref(9), ref(10)], {}, 11, 4, required)
    assert plan.state.window.blocks() == [ref(9), ref(10)]
    assert len(plan.state.tracker) == 0


@pytest.mark.parametrize(("seed", "from_block", "message"), [
    ([ref(1), ref(2)], 0, "from_block must be at least 1"),
    ([ref(1), ref(2)], 5, "the seed must end at block 4"),
    ([], 3, "the seed must end at block 2"),
])
def test_refused(seed: list[BlockRef], from_block: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_resume(ETH, None, seed, {}, from_block, 4, required)


def test_another_chains_state_is_refused() -> None:
    with pytest.raises(ValueError, match="belongs to chain eth, not btc"):
        plan_resume(ChainId("btc"), old_state(), [ref(1)], {}, 2, 8, required)
