"""Table-driven tests of the deposit lifecycle and the chain state that combines it with the window."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.chainsim import addr, transfer
from watcher.core.chainstate import ChainState, SnapshotError
from watcher.core.deposits import DepositTracker, quorum_agreed
from watcher.core.window import Extend
from watcher.types import (
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainId,
    DepositEventType,
)

P, C, R = DepositEventType.PENDING, DepositEventType.CONFIRMED, DepositEventType.REVERTED
ETH = ChainId("eth")


def required(asset: AssetSymbol, amount: int) -> int:
    # Tiers as configured in production: small amounts 3, large ones 6, token 1.
    if asset == "USDC":
        return 1
    return 3 if amount < 10**19 else 6


def ref(n: int, tag: str = "") -> BlockRef:
    return BlockRef(n, BlockHash(f"0x{n}{tag}"), BlockHash(f"0x{n - 1}{tag}"))


@dataclass(frozen=True)
class Case:
    name: str
    amount: int
    asset: str
    seen_at: int
    tips: tuple[int, ...]
    expect: tuple[tuple[DepositEventType, int], ...]


CASES = [
    Case("small ETH: pending then confirmed at 3", 10**18, "ETH", 100, (100, 101, 102, 103),
         ((P, 1), (C, 3))),
    Case("large ETH needs 6", 2 * 10**19, "ETH", 100, (100, 102, 104, 105, 106),
         ((P, 1), (C, 6))),
    Case("amount exactly at the tier bound takes the upper tier", 10**19, "ETH", 100, (100, 102, 105),
         ((P, 1), (C, 6))),
    Case("one confirmation suffices: confirmed alone", 5, "USDC", 100, (100, 101), ((C, 1),)),
    Case("first seen already deep (catch-up): confirmed alone", 10**18, "ETH", 100, (150,),
         ((C, 51),)),
    Case("pending announced once however many tips pass", 10**18, "ETH", 100, (100, 100, 101, 101),
         ((P, 1),)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lifecycle(case: Case) -> None:
    tr = DepositTracker(ETH, required)
    block = ref(case.seen_at)
    tr.add_block(BlockContents(block, (transfer("0xt1", addr(1), case.amount, case.asset),)),
                 lambda t: None)
    got: list[tuple[DepositEventType, int]] = []
    for tip in case.tips:
        got.extend((e.type, e.confirmations) for e in tr.evaluate(tip))
    assert tuple(got) == case.expect


@pytest.mark.parametrize(("announced_by", "previous"), [(100, P), (102, C)])
def test_revert_says_what_it_reverts(announced_by: int, previous: DepositEventType) -> None:
    tr = DepositTracker(ETH, required)
    block = ref(100)
    tr.add_block(BlockContents(block, (transfer("0xt1", addr(1), 10**18),)), lambda t: None)
    tr.evaluate(announced_by)
    evs = tr.revert([block])
    assert [(e.type, e.previous_type) for e in evs] == [(R, previous)]
    assert len(tr) == 0
    assert tr.revert([block]) == []


def test_unannounced_deposit_is_not_reverted() -> None:
    tr = DepositTracker(ETH, required)
    block = ref(100)
    tr.add_block(BlockContents(block, (transfer("0xt1", addr(1), 1),)), lambda t: None)
    assert tr.revert([block]) == []


def test_several_transfers_of_one_tx_are_separate_deposits() -> None:
    tr = DepositTracker(ETH, required)
    ts = (transfer("0xt1", addr(1), 1), transfer("0xt1", addr(2), 2, "USDC", "log:3"),
          transfer("0xt1", addr(3), 3, locator="trace:0.1"))
    tr.add_block(BlockContents(ref(7), ts), lambda t: "lbl" if t.to_address == addr(2) else None)
    evs = tr.evaluate(7)
    assert [(e.deposit.deposit_id, e.type, e.deposit.label) for e in evs] == [
        ("eth:0xt1:tx", P, None), ("eth:0xt1:log:3", C, "lbl"), ("eth:0xt1:trace:0.1", P, None)]


def test_duplicate_transfer_in_a_block_is_rejected() -> None:
    tr = DepositTracker(ETH, required)
    t = transfer("0xt1", addr(1), 1)
    with pytest.raises(ValueError, match="twice"):
        tr.add_block(BlockContents(ref(7), (t, t)), lambda t: None)


def test_prune_keeps_unconfirmed() -> None:
    tr = DepositTracker(ETH, required)
    a, b = ref(10), ref(11)
    tr.add_block(BlockContents(a, (transfer("0xa", addr(1), 1, "USDC"),)), lambda t: None)
    tr.add_block(BlockContents(b, (transfer("0xb", addr(1), 1),)), lambda t: None)
    tr.evaluate(11)
    tr.prune([a, b])
    assert [d.deposit_id for d in tr.deposits()] == ["eth:0xb:tx"]


def _state_with_deposit() -> ChainState:
    st = ChainState(ETH, 8, required)
    blocks = [ref(n) for n in range(10, 13)]
    contents = [BlockContents(b, ()) for b in blocks]
    contents[1] = BlockContents(blocks[1], (transfer("0xt", addr(5), 10**18),))
    applied = st.apply(Extend(tuple(blocks)), contents, lambda t: "cust-1")
    assert [(e.type, e.confirmations) for e in applied.events] == [(P, 2)]
    return st


def test_snapshot_round_trip_preserves_lifecycle() -> None:
    st = _state_with_deposit()
    back = ChainState.restore(st.snapshot(), ETH, 8, required)
    assert back.window.blocks() == st.window.blocks()
    assert back.tracker.deposits() == st.tracker.deposits()
    nxt = ref(13)
    evs = back.apply(Extend((nxt,)), [BlockContents(nxt, ())], lambda t: None).events
    assert [(e.type, e.confirmations, e.deposit.label) for e in evs] == [(C, 3, "cust-1")]


@pytest.mark.parametrize(("data", "match"), [
    (b"not json", "unreadable"),
    (b'{"version": 99}', "version"),
    (b'{"version": 1, "chain": "btc"}', "belongs to chain"),
    (b'{"version": 1, "chain": "eth", "finalized": null}', "unreadable"),
])
def test_bad_snapshots_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        ChainState.restore(data, ETH, 8, required)


def test_apply_refuses_contents_of_other_blocks() -> None:
    st = ChainState(ETH, 8, required)
    with pytest.raises(ValueError, match="do not match"):
        st.apply(Extend((ref(1),)), [BlockContents(ref(2), ())], lambda t: None)


# ------------------------------------------------------------------ confirmation quorum


A1, B1 = ref(1, "a"), ref(1, "b")
A2 = ref(2, "a")


@pytest.mark.parametrize(("reports", "quorum", "agreed"), [
    ({"x": {1: A1.hash}}, 1, {A1.hash}),
    ({"x": {1: A1.hash}, "y": {1: A1.hash}}, 2, {A1.hash}),
    # one endpoint on a fork: no quorum of two for either branch
    ({"x": {1: A1.hash}, "y": {1: B1.hash}}, 2, set()),
    # one endpoint did not answer for that height
    ({"x": {1: A1.hash, 2: A2.hash}, "y": {2: A2.hash}}, 2, {A2.hash}),
    ({"x": {1: A1.hash}, "y": {1: A1.hash}, "z": {1: B1.hash}}, 2, {A1.hash}),
    ({}, 1, set()),
])
def test_quorum_agreed(reports: dict[str, dict[int, BlockHash]], quorum: int,
                       agreed: set[BlockHash]) -> None:
    assert quorum_agreed(reports, [A1, A2, B1], quorum) == agreed


def test_quorum_must_be_positive() -> None:
    with pytest.raises(ValueError, match="quorum"):
        quorum_agreed({}, [A1], 0)


def test_a_deep_deposit_without_quorum_is_held_pending_then_confirmed_once_agreed() -> None:
    t = DepositTracker(ETH, required)
    t.add_block(BlockContents(A1, (transfer("0xt1", addr(1), 10**18),)), lambda _: None)
    assert t.due(2) == [] and t.due(3) == [A1]
    # first seen already deep enough, but not agreed: pending, never confirmed
    assert [(e.type, e.confirmations) for e in t.evaluate(5, agreed=frozenset())] == [(P, 5)]
    assert t.evaluate(6, agreed=frozenset({B1.hash})) == []
    assert t.due(6) == [A1]
    assert [(e.type, e.confirmations) for e in t.evaluate(6, agreed={A1.hash})] == [(C, 6)]
    assert t.due(7) == [] and t.evaluate(7, agreed=frozenset()) == []


def test_chain_state_due_after_a_decision() -> None:
    st = ChainState(ETH, 16, required)
    c1 = BlockContents(A1, (transfer("0xt1", addr(1), 10**18),))
    st.apply(Extend((A1,)), [c1], lambda _: None, agreed=frozenset())
    assert st.due_after(None, (), required) == []          # 1 confirmation of 3
    a2, a3 = ref(2, "a"), ref(3, "a")
    assert st.due_after(Extend((a2, a3)), [BlockContents(a2, ()), BlockContents(a3, ())],
                        required) == [A1]
    # a token deposit in the new block itself needs 1: due at once
    c3 = BlockContents(a3, (transfer("0xt3", addr(1), 5, asset="USDC", locator="log:0"),))
    assert st.due_after(Extend((a2, a3)), [BlockContents(a2, ()), c3], required) == [A1, a3]
    assert st.reevaluate(frozenset()) == []
