"""Table-driven tests of UTXO batches in the withdrawal book: several requests bound to
one input set, signed, sent and bumped once, each with its own events and fee share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from watcher.core.withdrawals import (
    Bind,
    BindingViolation,
    Broadcast,
    BroadcastOutcome,
    Commit,
    Decision,
    Emit,
    Fees,
    InputsBinding,
    MachineConfig,
    Request,
    RequestId,
    Sign,
    SignedTx,
    Spend,
    WithdrawalBook,
    WithdrawalEventType,
    WithdrawalState,
    fee_share,
)
from watcher.types import Address, AssetSymbol, BlockHash, ChainId, TxId

BTC = ChainId("btc")
UTXO = MachineConfig(confirmations=2, stuck_blocks=3, fee_cap=Fees(50, 0), uses_nonces=False)
IDS = (RequestId("w-a"), RequestId("w-b"), RequestId("w-c"))
INPUTS = InputsBinding(("c1:0", "c2:1"))
S = WithdrawalState
T = WithdrawalEventType


def request(rid: str) -> Request:
    return Request(RequestId(rid), AssetSymbol("BTC"), None, Address("bcrt1q"), 10_000, 8, f"d-{rid}", 1)


def tx(name: str, rate: int = 5, fee: int = 1_000, binding: InputsBinding = INPUTS) -> SignedTx:
    return SignedTx(TxId(name), name.encode(), binding, Fees(rate, 0), fee)


def accepted(*rids: str) -> WithdrawalBook:
    b = WithdrawalBook(BTC, UTXO)
    for rid in rids:
        b.accept(request(rid))
    return b


def batch_sent(fee: int = 1_000) -> WithdrawalBook:
    b = accepted(*IDS)
    b.funds_batch(list(IDS), ["c2:1", "c1:0"])
    b.signed(IDS[0], tx("t1", fee=fee))
    b.broadcast_result(IDS[0], TxId("t1"), BroadcastOutcome.OK, 10)
    return b


def emitted(ds: list[Decision]) -> list[tuple[T, str, str | None, int | None]]:
    return [(d.event.type, d.event.request.request_id, d.event.txid, d.event.fee)
            for d in ds if isinstance(d, Emit)]


def test_a_batch_binds_every_member_to_the_whole_input_set_then_signs_once() -> None:
    b = accepted(*IDS)
    ds = b.funds_batch([IDS[2], IDS[0], IDS[1]], ["c2:1", "c1:0"])
    assert ds == [Bind(IDS[0], INPUTS, 0), Bind(IDS[1], INPUTS, 0), Bind(IDS[2], INPUTS, 0), Commit(),
                  Sign(IDS[0], INPUTS, Fees(0, 0), None)]
    for rid in IDS:
        w = b.get(rid)
        assert w is not None and w.binding == INPUTS and w.batch == IDS
    assert b.bound_keys() == {"in:c1:0", "in:c2:1"}


@dataclass(frozen=True)
class Refusal:
    name: str
    rids: tuple[str, ...]
    inputs: tuple[str, ...]
    error: type[Exception]
    match: str


@pytest.mark.parametrize("r", [
    Refusal("one request is no batch", ("w-a",), ("c1:0",), ValueError, "at least two"),
    Refusal("no inputs", ("w-a", "w-b"), (), ValueError, "inputs"),
    Refusal("an unknown request", ("w-a", "w-x"), ("c1:0",), ValueError, "w-x"),
    Refusal("a bound request", ("w-a", "w-c"), ("c9:0",), ValueError, "w-c"),
    Refusal("an input another request holds", ("w-a", "w-b"), ("c5:0",), BindingViolation, "c5:0"),
], ids=lambda r: r.name)
def test_a_batch_is_refused(r: Refusal) -> None:
    b = accepted("w-a", "w-b", "w-c")
    b.funds(RequestId("w-c"), True, ["c5:0"])
    with pytest.raises(r.error, match=r.match):
        b.funds_batch([RequestId(x) for x in r.rids], list(r.inputs))
    assert b.get(RequestId("w-a")).binding is None  # type: ignore[union-attr]


def test_batches_are_refused_on_a_nonce_chain() -> None:
    b = WithdrawalBook(ChainId("eth"), MachineConfig(3, 5, Fees(100, 10), uses_nonces=True))
    with pytest.raises(ValueError, match="UTXO"):
        b.funds_batch(list(IDS), ["c1:0"])


@pytest.mark.parametrize(("fee", "n", "shares"), [
    (1_000, 3, [334, 333, 333]),
    (1_561, 3, [521, 520, 520]),
    (7, 2, [4, 3]),
    (2, 3, [1, 1, 0]),
    (999, 1, [999]),
])
def test_fee_shares_are_equal_and_sum_to_the_fee(fee: int, n: int, shares: list[int]) -> None:
    batch = tuple(RequestId(f"w-{i}") for i in range(n))
    assert [fee_share(fee, batch, r) for r in batch] == shares
    assert fee_share(fee, (), RequestId("alone")) == fee


def test_one_send_gives_each_member_its_broadcast_event_with_its_share() -> None:
    b = accepted(*IDS)
    b.funds_batch(list(IDS), ["c1:0", "c2:1"])
    assert b.signed(IDS[0], tx("t1")) == [Commit(), Broadcast(IDS[0], TxId("t1"), b"t1", again=False)]
    ds = b.broadcast_result(IDS[0], TxId("t1"), BroadcastOutcome.OK, 10)
    assert emitted(ds) == [(T.BROADCAST, "w-a", "t1", 334), (T.BROADCAST, "w-b", "t1", 333),
                           (T.BROADCAST, "w-c", "t1", 333)]
    assert all(b.get(r).state is S.BROADCAST for r in IDS)  # type: ignore[union-attr]


def test_a_stuck_batch_is_bumped_once_and_each_member_is_replaced() -> None:
    b = batch_sent()
    ds = b.tip(10 + UTXO.stuck_blocks, None)
    assert ds == [Sign(IDS[0], INPUTS, Fees(6, 0), TxId("t1"))]  # one bump, by the lead
    b.signed(IDS[0], tx("t2", rate=6, fee=1_100))
    ds = b.broadcast_result(IDS[0], TxId("t2"), BroadcastOutcome.OK, 13)
    assert emitted(ds) == [(T.REPLACED, r, "t2", f) for r, f in zip(IDS, (367, 367, 366), strict=True)]
    assert all(e.replaces_txid == "t1" for e in (d.event for d in ds if isinstance(d, Emit)))
    assert all([a.txid for a in b.get(r).attempts] == ["t1", "t2"] for r in IDS)  # type: ignore[union-attr]


def test_underpriced_batch_is_re_signed_once() -> None:
    b = accepted(*IDS)
    b.funds_batch(list(IDS), ["c1:0", "c2:1"])
    b.signed(IDS[0], tx("t1"))
    assert b.broadcast_result(IDS[0], TxId("t1"), BroadcastOutcome.UNDERPRICED, 10) == [
        Sign(IDS[0], INPUTS, Fees(6, 0), None)]


def test_a_transaction_off_the_batch_binding_is_refused_for_every_member() -> None:
    b = accepted(*IDS)
    b.funds_batch(list(IDS), ["c1:0", "c2:1"])
    with pytest.raises(BindingViolation, match="another binding"):
        b.signed(IDS[1], tx("bad", binding=InputsBinding(("c1:0",))))
    assert all(b.get(r).attempts == () for r in IDS)  # type: ignore[union-attr]


def test_the_batch_confirms_once_per_member_with_the_shared_txid() -> None:
    b = batch_sent()
    b.block_added(11, BlockHash("h11"), [Spend("in:c1:0", TxId("t1")), Spend("in:c2:1", TxId("t1"))])
    assert emitted(b.tip(11, None)) == []
    ds = b.tip(12, None)
    assert emitted(ds) == [(T.CONFIRMED, "w-a", "t1", 334), (T.CONFIRMED, "w-b", "t1", 333),
                           (T.CONFIRMED, "w-c", "t1", 333)]
    assert emitted(b.tip(13, None)) == []
    b.tip(20, 12)
    assert b.withdrawals() == [] and b.bound_keys() == frozenset()


def test_a_reorg_sends_the_batch_bytes_once() -> None:
    b = batch_sent()
    b.block_added(11, BlockHash("h11"), [Spend("in:c1:0", TxId("t1"))])
    assert b.blocks_removed([BlockHash("h11")]) == [Broadcast(IDS[0], TxId("t1"), b"t1", again=True)]


def test_a_foreign_spend_rebinds_each_member_alone_only_at_finality() -> None:
    b = batch_sent()
    b.block_added(11, BlockHash("h11"), [Spend("in:c2:1", TxId("foreign"))])
    assert [d for d in b.tip(12, 10) if not isinstance(d, Emit)] == []  # not final yet
    ds = b.tip(16, 11)
    assert [type(d).__name__ for d in ds].count("CheckFunds") == 3
    for r in IDS:
        w = b.get(r)
        assert w is not None and w.binding is None and w.batch == () and w.epoch == 1
    assert b.bound_keys() == frozenset()


def test_resume_signs_or_sends_a_batch_once_and_the_snapshot_keeps_it() -> None:
    b = accepted(*IDS)
    b.funds_batch(list(IDS), ["c1:0", "c2:1"])
    r = WithdrawalBook.restore(b.snapshot(), BTC, UTXO)
    assert r.resume() == [Sign(IDS[0], INPUTS, Fees(0, 0), None)]
    assert r.get(IDS[2]).batch == IDS  # type: ignore[union-attr]
    r.signed(IDS[0], tx("t1"))
    r2 = WithdrawalBook.restore(r.snapshot(), BTC, UTXO)
    assert r2.resume() == [Broadcast(IDS[0], TxId("t1"), b"t1", again=True)]
    assert r2.bound_keys() == {"in:c1:0", "in:c2:1"}
