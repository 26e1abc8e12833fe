"""Table-driven tests of the withdrawal state machine, the nonce manager and the snapshot."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from watcher.core.withdrawals import (
    Bind,
    BindingViolation,
    Broadcast,
    BroadcastOutcome,
    CheckFunds,
    Commit,
    Decision,
    Emit,
    Fees,
    InputsBinding,
    MachineConfig,
    NonceBinding,
    NonceManager,
    ReconcileNonce,
    Request,
    RequestId,
    Sign,
    SignedTx,
    SnapshotError,
    Spend,
    WithdrawalBook,
    WithdrawalEventType,
    WithdrawalState,
    load_settled,
)
from watcher.types import Address, AssetSymbol, BlockHash, ChainId, TxId

ETH = ChainId("eth")
CFG = MachineConfig(confirmations=3, stuck_blocks=5, fee_cap=Fees(1000, 100), uses_nonces=True)
UTXO = MachineConfig(confirmations=2, stuck_blocks=3, fee_cap=Fees(50, 0), uses_nonces=False)
R1 = RequestId("w-1")
TO = Address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
S = WithdrawalState
T = WithdrawalEventType


def request(rid: str = "w-1", amount: int = 5) -> Request:
    return Request(RequestId(rid), AssetSymbol("ETH"), None, TO, amount, 18, f"d-{rid}", 1_000)


BASE_FEES = Fees(100, 10)


def tx(name: str, nonce: int = 0, fees: Fees = BASE_FEES) -> SignedTx:
    return SignedTx(TxId(name), name.encode(), NonceBinding(nonce), fees, 21_000 * fees.max_fee)


def events(ds: list[Decision]) -> list[WithdrawalEventType]:
    return [d.event.type for d in ds if isinstance(d, Emit)]


def kinds(ds: list[Decision]) -> list[str]:
    return [type(d).__name__ for d in ds]


def book_with_next(n: int = 0, cfg: MachineConfig = CFG) -> WithdrawalBook:
    b = WithdrawalBook(ETH, cfg)
    b.nonce_counts(n, n)
    return b


def bound(rid: str = "w-1", next_nonce: int = 0) -> WithdrawalBook:
    b = book_with_next(next_nonce)
    b.accept(request(rid))
    b.funds(RequestId(rid), True)
    return b


def broadcast(name: str = "t1", height: int = 10) -> WithdrawalBook:
    b = bound()
    b.signed(R1, tx(name))
    b.broadcast_result(R1, TxId(name), BroadcastOutcome.OK, height)
    return b


# ---------------------------------------------------------------- intake to signing


def test_accept_announces_commits_then_asks_for_funds() -> None:
    b = book_with_next()
    ds = b.accept(request())
    assert ds[0] == Emit(ds[0].event) and events(ds) == [T.ACCEPTED]  # type: ignore[union-attr]
    assert kinds(ds) == ["Emit", "Commit", "CheckFunds"]
    assert b.get(R1).state is S.ACCEPTED  # type: ignore[union-attr]
    assert b.seen("w-1", "d-w-1") is True
    with pytest.raises(ValueError, match="already accepted"):
        b.accept(request())


def test_waiting_for_funds_is_not_a_rejection_and_is_retried_each_block() -> None:
    b = book_with_next()
    b.accept(request())
    assert b.funds(R1, False) == []
    assert b.get(R1).state is S.WAITING_FUNDS  # type: ignore[union-attr]
    assert b.tip(11, None) == [CheckFunds(R1)]
    assert kinds(b.funds(R1, True)) == ["Bind", "Commit", "Sign"]


def test_binding_is_committed_before_signing() -> None:
    b = book_with_next(7)
    b.accept(request())
    assert b.funds(R1, True) == [Bind(R1, NonceBinding(7), 0), Commit(),
                                 Sign(R1, NonceBinding(7), Fees(0, 0), None)]
    assert b.nonces.next == 8
    assert b.funds(R1, True) == []  # already bound: never a second nonce


def test_no_nonce_before_reconciliation() -> None:
    b = WithdrawalBook(ETH, CFG)
    b.accept(request())
    assert b.funds(R1, True) == [ReconcileNonce()]
    assert b.nonce_counts(4, 6) == [Commit(), CheckFunds(R1)]
    assert b.funds(R1, True)[0] == Bind(R1, NonceBinding(6), 0)


def test_signed_is_recorded_then_broadcast() -> None:
    b = bound()
    assert b.signed(R1, tx("t1")) == [Commit(), Broadcast(R1, TxId("t1"), b"t1", again=False)]
    assert b.get(R1).state is S.SIGNED  # type: ignore[union-attr]
    assert b.signed(R1, tx("t1")) == []  # the same transaction twice: nothing new


@dataclass(frozen=True)
class Violation:
    name: str
    tx: SignedTx
    match: str


VIOLATIONS = [
    Violation("another nonce", tx("x", nonce=1), "another binding"),
    Violation("inputs instead of a nonce",
              SignedTx(TxId("x"), b"x", InputsBinding(("a:0",)), Fees(1, 0), 1), "another binding"),
    Violation("above the fee cap", tx("x", fees=Fees(1001, 10)), "fee cap"),
]


@pytest.mark.parametrize("v", VIOLATIONS, ids=lambda v: v.name)
def test_signed_refuses_anything_off_the_binding(v: Violation) -> None:
    b = bound()
    with pytest.raises(BindingViolation, match=v.match):
        b.signed(R1, v.tx)
    assert b.get(R1).attempts == ()  # type: ignore[union-attr]


def test_unbound_request_cannot_be_signed() -> None:
    b = book_with_next()
    b.accept(request())
    with pytest.raises(BindingViolation, match="not bound"):
        b.signed(R1, tx("t1"))


# ---------------------------------------------------------------- broadcast answers


@dataclass(frozen=True)
class Answer:
    name: str
    outcome: BroadcastOutcome
    decisions: list[str]
    events: list[WithdrawalEventType]
    state: WithdrawalState


ANSWERS = [
    Answer("ok", BroadcastOutcome.OK, ["Emit"], [T.BROADCAST], S.BROADCAST),
    Answer("already known counts as handed over", BroadcastOutcome.ALREADY_KNOWN, ["Emit"], [T.BROADCAST],
           S.BROADCAST),
    Answer("underpriced: sign again with 10% more", BroadcastOutcome.UNDERPRICED, ["Sign"], [], S.SIGNED),
    Answer("nonce too low: reconcile, wait for the block", BroadcastOutcome.CONSUMED, ["ReconcileNonce"],
           [], S.SIGNED),
    Answer("node unreachable: nothing yet", BroadcastOutcome.RETRIABLE, [], [], S.SIGNED),
]


@pytest.mark.parametrize("a", ANSWERS, ids=lambda a: a.name)
def test_broadcast_answers(a: Answer) -> None:
    b = bound()
    b.signed(R1, tx("t1"))
    ds = b.broadcast_result(R1, TxId("t1"), a.outcome, 10)
    assert kinds(ds) == a.decisions
    assert events(ds) == a.events
    assert b.get(R1).state is a.state  # type: ignore[union-attr]
    if a.outcome is BroadcastOutcome.UNDERPRICED:
        assert ds == [Sign(R1, NonceBinding(0), Fees(110, 11), None)]


def test_broadcast_event_carries_txid_nonce_fee_and_comes_once() -> None:
    b = bound(next_nonce=3)
    b.signed(R1, tx("t1", nonce=3))
    [e] = b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.OK, 10)
    assert isinstance(e, Emit)
    assert (e.event.txid, e.event.nonce, e.event.fee, e.event.replaces_txid) == ("t1", 3, 2_100_000, None)
    assert b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.ALREADY_KNOWN, 11) == []


def test_unanswered_broadcast_is_sent_again_on_the_next_block() -> None:
    b = bound()
    b.signed(R1, tx("t1"))
    b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.RETRIABLE, 10)
    assert b.tip(11, None) == [Broadcast(R1, TxId("t1"), b"t1", again=True)]


# ---------------------------------------------------------------- stuck, replacement


def test_stuck_payment_is_replaced_with_fees_raised_on_both() -> None:
    b = broadcast()
    assert b.tip(14, None) == []  # 4 blocks: not yet
    assert b.tip(15, None) == [Sign(R1, NonceBinding(0), Fees(110, 11), TxId("t1"))]
    assert b.signed(R1, tx("t2", fees=Fees(110, 10))) == []  # tip not raised 10%: never sent
    assert kinds(b.signed(R1, tx("t2", fees=Fees(120, 11)))) == ["Commit", "Broadcast"]
    [e] = b.broadcast_result(R1, TxId("t2"), BroadcastOutcome.OK, 15)
    assert isinstance(e, Emit)
    assert (e.event.type, e.event.txid, e.event.replaces_txid) == (T.REPLACED, "t2", "t1")
    assert b.get(R1).state is S.REPLACED  # type: ignore[union-attr]


def test_at_the_fee_cap_the_same_bytes_are_sent_again() -> None:
    b = bound()
    b.signed(R1, tx("t1", fees=Fees(950, 95)))
    b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.OK, 10)
    assert b.tip(15, None) == [Broadcast(R1, TxId("t1"), b"t1", again=True)]
    assert b.tip(16, None) == []  # and the stuck clock starts again


def test_first_transaction_refused_as_underpriced_is_not_reported_as_replaced() -> None:
    b = bound()
    b.signed(R1, tx("t1"))
    b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.UNDERPRICED, 10)
    b.signed(R1, tx("t2", fees=Fees(110, 11)))
    [e] = b.broadcast_result(R1, TxId("t2"), BroadcastOutcome.OK, 10)
    assert isinstance(e, Emit) and (e.event.type, e.event.replaces_txid) == (T.BROADCAST, None)


def test_nonce_too_low_is_never_bumped() -> None:
    b = broadcast()
    assert b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.CONSUMED, 11) == [ReconcileNonce()]
    assert b.tip(16, None) == [Broadcast(R1, TxId("t1"), b"t1", again=True)]  # no Sign


# ---------------------------------------------------------------- blocks


def test_confirmed_at_the_required_confirmations_once() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"), fee_paid=42_000)])
    assert b.tip(13, None) == []
    [e] = b.tip(14, None)
    assert isinstance(e, Emit)
    ev = e.event
    assert (ev.type, ev.txid, ev.block_number, ev.block_hash, ev.confirmations, ev.fee, ev.nonce) == (
        T.CONFIRMED, "t1", 12, "0xb12", 3, 42_000, 0)
    assert b.get(R1).state is S.CONFIRMED  # type: ignore[union-attr]
    assert b.tip(20, 20) == []


def test_replaced_payment_confirms_by_its_earlier_transaction() -> None:
    b = broadcast()
    b.tip(15, None)
    b.signed(R1, tx("t2", fees=Fees(110, 11)))
    b.broadcast_result(R1, TxId("t2"), BroadcastOutcome.OK, 15)
    b.block_added(16, BlockHash("0xb16"), [Spend("nonce:0", TxId("t1"))])  # the old one got mined
    [e] = b.tip(18, None)
    assert isinstance(e, Emit) and (e.event.type, e.event.txid) == (T.CONFIRMED, "t1")


def test_reverted_receipt_fails_the_request() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"), reverted=True)])
    [e] = b.tip(14, None)
    assert isinstance(e, Emit)
    assert (e.event.type, e.event.reason) == (T.FAILED, "reverted")
    assert b.get(R1).state is S.FAILED  # type: ignore[union-attr]


def test_reorg_sends_the_same_bytes_again_and_confirms_in_the_new_block() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"))])
    assert b.tip(13, None) == []
    assert b.blocks_removed([BlockHash("0xb12")]) == [Broadcast(R1, TxId("t1"), b"t1", again=True)]
    assert b.get(R1).inclusion is None  # type: ignore[union-attr]
    b.block_added(13, BlockHash("0xb13x"), [Spend("nonce:0", TxId("t1"))])
    [e] = b.tip(15, None)
    assert isinstance(e, Emit) and e.event.block_hash == "0xb13x"


def test_reorg_after_confirmation_resends_but_never_confirms_twice() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"))])
    assert events(b.tip(14, None)) == [T.CONFIRMED]
    assert kinds(b.blocks_removed([BlockHash("0xb12")])) == ["Broadcast"]
    b.block_added(13, BlockHash("0xb13x"), [Spend("nonce:0", TxId("t1"))])
    assert b.tip(20, None) == []
    assert b.get(R1).state is S.CONFIRMED  # type: ignore[union-attr]


def test_foreign_spend_rebinds_only_at_finality_and_commits_first() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("other-wallet"))])
    assert b.tip(30, 11) == []  # deep but not final: wait
    assert b.tip(31, 12) == [Commit(), CheckFunds(R1)]
    w = b.get(R1)
    assert w is not None
    assert (w.state, w.binding, w.epoch, [t.txid for t in w.retired]) == (S.ACCEPTED, None, 1, ["t1"])
    with pytest.raises(BindingViolation):
        b.signed(R1, tx("t1-again"))  # nothing may be signed before the new binding
    assert b.funds(R1, True)[:2] == [Bind(R1, NonceBinding(1), 1), Commit()]
    with pytest.raises(BindingViolation, match="another binding"):
        b.signed(R1, tx("old-nonce", nonce=0))


def test_foreign_spend_of_a_confirmed_payment_changes_nothing() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"))])
    b.block_added(13, BlockHash("0xb13"), [Spend("nonce:0", TxId("dup"))])  # a lie: ours stays
    assert events(b.tip(14, 14)) == [T.CONFIRMED]


def test_unknown_spends_and_answers_are_ignored() -> None:
    b = broadcast()
    assert b.block_added(12, BlockHash("0xb12"), [Spend("nonce:99", TxId("zz"))]) == []
    assert b.broadcast_result(R1, TxId("never-signed"), BroadcastOutcome.OK, 12) == []
    assert b.broadcast_result(RequestId("nobody"), TxId("t1"), BroadcastOutcome.OK, 12) == []
    assert b.funds(RequestId("nobody"), True) == []


# ---------------------------------------------------------------- restart


def test_resume_takes_up_every_stage_with_the_recorded_bytes() -> None:
    b = book_with_next()
    for rid in ("a", "b", "c", "d", "e"):
        b.accept(request(rid))
    b.funds(RequestId("b"), True)                       # bound, crash before signing
    b.funds(RequestId("c"), True)
    b.signed(RequestId("c"), tx("tc", nonce=1))         # recorded, crash before broadcast
    b.funds(RequestId("d"), True)
    b.signed(RequestId("d"), tx("td", nonce=2))
    b.broadcast_result(RequestId("d"), TxId("td"), BroadcastOutcome.OK, 10)
    b.block_added(11, BlockHash("0xb11"), [Spend("nonce:2", TxId("td"))])
    b.tip(13, None)                                     # d confirmed
    r = WithdrawalBook.restore(b.snapshot(), ETH, CFG)
    assert r.resume() == [
        ReconcileNonce(),
        CheckFunds(RequestId("a")),
        Sign(RequestId("b"), NonceBinding(0), Fees(0, 0), None),
        Broadcast(RequestId("c"), TxId("tc"), b"tc", again=True),
        CheckFunds(RequestId("e")),
    ]
    assert r.snapshot() == b.snapshot()


GOLDEN_SNAPSHOT = (
    b'{"version":2,"chain":"eth","next_nonce":8,"limits":[[1000,"ETH","5"]],'
    b'"withdrawals":[{"r":["w-1","ETH",null,"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","5",18,"d-w-1",'
    b'1000],"state":"replaced","binding":{"nonce":7},"epoch":0,"attempts":[["t1","7431",{"nonce":7},'
    b'"100","10","2100000"],["t2","7432",{"nonce":7},"110","11","2310000"]],"retired":[],'
    b'"announced":["t1","t2"],"sent_height":15,"consumed_hint":false,"inclusion":["t2",16,"0xb16",'
    b'true,false,23100],"final_announced":false,"refusals":0,"retry_height":null}]}'
)
GOLDEN_V1_SNAPSHOT = (
    # Written by the version before settled records: every digest ever seen in the snapshot
    # ("w-0" settled long ago, "w-r" refused after authentication), no refusal fields.
    b'{"version":1,"chain":"eth","next_nonce":8,"limits":[[1000,"ETH","5"]],'
    b'"digests":{"w-0":"d-w-0","w-1":"d-w-1","w-r":"d-w-r"},'
    b'"withdrawals":[{"r":["w-1","ETH",null,"0x70997970C51812dc3A010C7d01b50e0d17dc79C8","5",18,"d-w-1",'
    b'1000],"state":"replaced","binding":{"nonce":7},"epoch":0,"attempts":[["t1","7431",{"nonce":7},'
    b'"100","10","2100000"],["t2","7432",{"nonce":7},"110","11","2310000"]],"retired":[],'
    b'"announced":["t1","t2"],"sent_height":15,"consumed_hint":false,"inclusion":["t2",16,"0xb16",'
    b'true,false,23100],"final_announced":false}]}'
)


def test_snapshot_golden_round_trip() -> None:
    b = bound(next_nonce=7)
    b.signed(R1, tx("t1", nonce=7))
    b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.OK, 10)
    b.tip(15, None)
    b.signed(R1, tx("t2", nonce=7, fees=Fees(110, 11)))
    b.broadcast_result(R1, TxId("t2"), BroadcastOutcome.OK, 15)
    b.block_added(16, BlockHash("0xb16"), [Spend("nonce:7", TxId("t2"), fee_paid=23_100)])
    assert b.snapshot() == GOLDEN_SNAPSHOT
    r = WithdrawalBook.restore(GOLDEN_SNAPSHOT, ETH, CFG)
    assert r.snapshot() == GOLDEN_SNAPSHOT
    w = r.get(R1)
    assert w is not None and w.latest is not None
    assert (w.state, w.latest.raw, w.latest.fees, r.nonces.next) == (S.REPLACED, b"t2", Fees(110, 11), 8)
    assert r.used_today(AssetSymbol("ETH"), 2_000) == 5
    [e] = r.tip(18, None)  # the restored inclusion still counts
    assert isinstance(e, Emit) and (e.event.type, e.event.txid) == (T.CONFIRMED, "t2")


@pytest.mark.parametrize(("data", "match"), [
    (b"not json", "unreadable"),
    (b'{"version":3}', "version 3"),
    (GOLDEN_SNAPSHOT.replace(b'"chain":"eth"', b'"chain":"btc"'), "chain 'btc'"),
    (GOLDEN_SNAPSHOT.replace(b'"state":"replaced"', b'"state":"lost"'), "unreadable"),
    (GOLDEN_SNAPSHOT.replace(b'"7431"', b'"zz"'), "unreadable"),
])
def test_bad_snapshots_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        WithdrawalBook.restore(data, ETH, CFG)


# ---------------------------------------------------------------- nonce manager


@dataclass(frozen=True)
class NonceCase:
    name: str
    before: int | None
    latest: int
    pending: int
    held: tuple[int, ...]
    after: int
    gap: int


NONCE_CASES = [
    NonceCase("first start takes the pending count", None, 5, 8, (), 8, 0),
    NonceCase("in step", 8, 5, 8, (5, 6, 7), 8, 0),
    NonceCase("another sender used nonces: jump over them", 8, 10, 12, (), 12, -4),
    NonceCase("drifted above the chain: rewind (OpenZeppelin #818)", 50, 40, 40, (), 40, 10),
    NonceCase("rewind never below a nonce a live request holds", 50, 40, 40, (41, 43), 44, 6),
    NonceCase("mempool lost our transactions: held nonces keep the counter", 9, 5, 5, (5, 6, 7, 8), 9, 0),
]


@pytest.mark.parametrize("c", NONCE_CASES, ids=lambda c: c.name)
def test_nonce_reconciliation(c: NonceCase) -> None:
    m = NonceManager(c.before)
    assert m.reconcile(c.latest, c.pending, c.held) == c.after
    assert (m.next, m.last_gap) == (c.after, c.gap)
    assert m.allocate() == c.after and m.next == c.after + 1


def test_nonce_counts_hold_live_requests() -> None:
    b = bound(next_nonce=4)
    assert b.get(R1).binding == NonceBinding(4)  # type: ignore[union-attr]
    b.nonce_counts(2, 2)  # the node forgot our pending transaction
    assert b.nonces.next == 5


# ---------------------------------------------------------------- UTXO binding


def test_utxo_inputs_bind_exclusively_and_rebind_after_a_final_foreign_spend() -> None:
    b = WithdrawalBook(ETH, UTXO)
    b.accept(request("a"))
    b.accept(request("b"))
    assert b.funds(RequestId("a"), True, ["tx1:1", "tx0:0"])[0] == Bind(
        RequestId("a"), InputsBinding(("tx0:0", "tx1:1")), 0)
    with pytest.raises(BindingViolation, match="in:tx1:1"):
        b.funds(RequestId("b"), True, ["tx1:1", "tx2:0"])
    with pytest.raises(ValueError, match="inputs"):
        b.funds(RequestId("b"), True, [])
    binding = InputsBinding(("tx0:0", "tx1:1"))
    b.signed(RequestId("a"), SignedTx(TxId("pa"), b"pa", binding, Fees(5, 0), 1_000))
    b.broadcast_result(RequestId("a"), TxId("pa"), BroadcastOutcome.OK, 100)
    assert b.broadcast_result(RequestId("a"), TxId("pa"), BroadcastOutcome.CONSUMED, 101) == []
    b.block_added(101, BlockHash("b101"), [Spend("in:tx1:1", TxId("someone"))])
    assert b.tip(102, 101) == [Commit(), CheckFunds(RequestId("a"))]
    # The input is free for another request once the old binding is retired.
    assert kinds(b.funds(RequestId("b"), True, ["tx0:0"])) == ["Bind", "Commit", "Sign"]


def test_inputs_binding_is_canonical() -> None:
    with pytest.raises(ValueError, match="sorted"):
        InputsBinding(("b:0", "a:0"))
    with pytest.raises(ValueError, match="non-empty"):
        InputsBinding(())


def test_a_nonce_another_sender_used_on_chain_is_never_handed_out() -> None:
    # Found by the property test: a block showing nonce 0 used by another sender, seen before
    # any request was bound, must move the counter, or the request waits forever for a proof
    # that is in a block already looked at.
    b = book_with_next(0)
    b.block_added(1, BlockHash("0xb1"), [Spend("nonce:0", TxId("other-wallet"))])
    b.accept(request())
    assert b.funds(R1, True)[0] == Bind(R1, NonceBinding(1), 0)


def test_summary_counts_states_and_stuck_payments() -> None:
    b = broadcast(height=10)
    b.accept(request("w-2"))
    b.funds(RequestId("w-2"), False)
    assert b.summary(14).stuck == 0
    s = b.summary(15)
    assert (s.stuck, s.by_state[S.BROADCAST], s.by_state[S.WAITING_FUNDS], s.by_state[S.CONFIRMED]) == (
        1, 1, 1, 0)
    b.nonce_counts(0, 0)  # counter at 1, chain at 0, nonce 0 held: in step
    assert b.summary(15).nonce_gap == 0


def test_a_replacement_signed_after_inclusion_is_never_sent() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"))])
    assert b.signed(R1, tx("t2", fees=Fees(110, 11))) == []
    assert [t.txid for t in b.get(R1).attempts] == ["t1"]  # type: ignore[union-attr]


def test_settled_withdrawals_are_forgotten_at_finality_but_stay_duplicates() -> None:
    b = broadcast()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"))])
    assert events(b.tip(14, 11)) == [T.CONFIRMED]
    assert b.tip(15, 11) == [] and b.get(R1) is not None  # not final yet: kept
    assert b.tip(16, 12) == []
    assert b.get(R1) is None
    assert b.seen("w-1", "d-w-1") is True
    assert b"t1" not in WithdrawalBook.restore(b.snapshot(), ETH, CFG).snapshot()


def test_events_come_before_any_commit_of_the_same_observation() -> None:
    # Found by the property test: a rebind (Commit) of one request listed before the
    # confirmation of another made the confirmation durable without its event.
    b = book_with_next()
    b.accept(request("w-1"))
    b.accept(request("w-2"))
    b.funds(RequestId("w-1"), True)
    b.funds(RequestId("w-2"), True)
    b.signed(RequestId("w-1"), tx("t1", nonce=0))
    b.signed(RequestId("w-2"), tx("t2", nonce=1))
    b.block_added(10, BlockHash("0xb10"), [Spend("nonce:0", TxId("other")), Spend("nonce:1", TxId("t2"))])
    ds = b.tip(12, 10)
    assert kinds(ds) == ["Emit", "Commit", "CheckFunds"]
    assert events(ds) == [T.CONFIRMED]


def reopen(b: WithdrawalBook, store: dict[RequestId, bytes]) -> WithdrawalBook:
    """What a restart sees: the last commit's snapshot and every settled record committed."""
    ch = b.take_changes()
    store.update(ch.records)
    b.changes_committed()
    return WithdrawalBook.restore(ch.snapshot, ETH, CFG, load_settled(
        (k.encode(), v) for k, v in store.items()))


def test_a_settled_request_leaves_the_snapshot_for_one_small_record() -> None:
    b = broadcast()
    b.accept(request("w-2"))
    store: dict[RequestId, bytes] = {}
    ch = b.take_changes()
    assert ch.records == {}  # both live: in the snapshot, no record yet
    b.changes_committed()
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("t1"))])
    b.tip(14, None)
    b.tip(15, 12)  # final: w-1 leaves the live state
    ch = b.take_changes()
    assert ch.records == {
        "w-1": b'{"version":1,"digest":"d-w-1","chain":"eth","outcome":"confirmed"}'}
    assert b"w-1" not in ch.snapshot and b"d-w-2" in ch.snapshot
    r = reopen(b, store)
    assert r.snapshot() == b.snapshot()
    assert r.get(R1) is None and r.seen("w-1", "d-w-1") is True and r.seen("w-2", "d-w-2") is True
    assert b.take_changes().records == {}  # written once


def test_the_snapshot_stays_small_however_many_requests_settled() -> None:
    b = book_with_next()
    store: dict[RequestId, bytes] = {}
    sizes: list[int] = []
    for i in range(300):
        rid = RequestId(f"w-{i}")
        b.accept(request(rid))
        b.funds(rid, True)
        b.signed(rid, tx(f"t{i}", nonce=i))
        b.broadcast_result(rid, TxId(f"t{i}"), BroadcastOutcome.OK, 10 + i)
        b.block_added(11 + i, BlockHash(f"0xb{i}"), [Spend(f"nonce:{i}", TxId(f"t{i}"))])
        b.tip(11 + i + 3, 11 + i)
        ch = b.take_changes()
        store.update(ch.records)
        b.changes_committed()
        sizes.append(len(ch.snapshot))
    assert len(store) == 299  # the last one is confirmed; it leaves at the next final tip
    # One day's rolling amounts of one asset merge within a minute: nothing grows.
    # (a few bytes more only as ids, heights and nonces get longer).
    assert max(sizes) < 600 and sizes[-1] - sizes[10] < 16
    r = reopen(b, store)
    assert all(r.seen(f"w-{i}", f"d-w-{i}") is True for i in range(300))
    assert all(r.seen(f"w-{i}", f"d-w-{i + 1}") is False for i in range(299))


def test_a_failed_commit_never_turns_into_remembered_ids() -> None:
    b = book_with_next()
    b.reject(RequestId("w-r"), "d-w-r")
    b.take_changes()  # the commit fails: changes_committed is not called
    r = WithdrawalBook.restore(WithdrawalBook(ETH, CFG).snapshot(), ETH, CFG, b.settled)
    assert r.knows("w-r") is False  # the record is read again and decided again


def test_a_version_1_snapshot_loads_and_moves_its_history_to_records() -> None:
    r = WithdrawalBook.restore(GOLDEN_V1_SNAPSHOT, ETH, CFG)
    assert r.seen("w-0", "d-w-0") is r.seen("w-1", "d-w-1") is r.seen("w-r", "d-w-r") is True
    assert r.seen("w-0", "d-other") is False and r.seen("w-9", "d-w-9") is None
    w = r.get(R1)
    assert w is not None and w.state is S.REPLACED and (w.refusals, w.retry_height) == (0, None)
    ch = r.take_changes()
    assert ch.snapshot == GOLDEN_SNAPSHOT  # live only, version 2
    assert ch.records == {
        "w-0": b'{"version":1,"digest":"d-w-0","chain":"eth","outcome":"migrated"}',
        "w-r": b'{"version":1,"digest":"d-w-r","chain":"eth","outcome":"migrated"}'}
    again = reopen(r, {})
    assert again.seen("w-0", "d-w-0") is True and again.take_changes().records == {}


@pytest.mark.parametrize(("key", "value", "match"), [
    (b"w-1", b"not json", "key b'w-1' is unreadable"),
    (b"w-1", b'{"version":1}', "key b'w-1' is unreadable"),
    (b"w-1", b'{"version":2,"digest":"d"}', "version 2"),
    (b"w-1", b'{"version":1,"digest":7}', "field digest of type int"),
    (b"w-1", None, "without key or value"),
    (b"\xff", b'{"version":1,"digest":"d"}', "unreadable"),
])
def test_bad_settled_records_are_refused_by_key(key: bytes, value: bytes | None, match: str) -> None:
    with pytest.raises(SnapshotError, match=match):
        load_settled([(key, value)])


def test_an_id_claimed_by_another_chain_is_taken_here_and_recorded() -> None:
    b = book_with_next()
    assert b.claim(RequestId("w-x"), "d-x", ChainId("arb")) == []
    assert b.seen("w-x", "d-x") is True
    assert b.take_changes().records == {
        "w-x": b'{"version":1,"digest":"d-x","chain":"arb","outcome":"claimed"}'}
    with pytest.raises(ValueError, match="not claimed"):
        b.claim(RequestId("w-y"), "d-y", ETH)
    b.claim(RequestId("w-x"), "d-other", ChainId("arb"))  # the first claim stays
    assert reopen(b, {}).seen("w-x", "d-x") is True


# ---------------------------------------------------------------- refused sends


@dataclass(frozen=True)
class RefusalCase:
    tip: int
    sends: bool


# Refused at 10 (retry from 11), at 11 (from 13), at 13 (from 17): 1, 2, 4 blocks.
REFUSAL_STEPS = [RefusalCase(10, False), RefusalCase(11, True), RefusalCase(12, False),
                 RefusalCase(13, True), RefusalCase(14, False), RefusalCase(16, False),
                 RefusalCase(17, True)]


def test_a_refused_send_backs_off_and_never_signs_anything_else() -> None:
    b = bound()
    ds = b.signed(R1, tx("t1"))
    assert kinds(ds) == ["Commit", "Broadcast"]
    assert b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.REFUSED, 10) == []
    tried = 10
    for case in REFUSAL_STEPS:
        ds = b.tip(case.tip, None)
        assert ds == ([Broadcast(R1, TxId("t1"), b"t1", again=True)] if case.sends else []), case
        if case.sends:
            b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.REFUSED, case.tip)
            tried = case.tip
    assert tried == 17 and b.get(R1).refusals == 4  # type: ignore[union-attr]
    assert b.summary(17).stuck == 1 and b.summary(17).refused == 1
    # The back-off is bounded: after many refusals, at most 64 blocks between two tries.
    for h in range(18, 18 + 64 * 8):
        for d in b.tip(h, None):
            assert isinstance(d, Broadcast) and d.raw == b"t1"
            b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.REFUSED, h)
            tried = h
    assert b.get(R1).retry_height == tried + 64  # type: ignore[union-attr]
    r = WithdrawalBook.restore(b.snapshot(), ETH, CFG)  # the back-off survives a restart
    assert r.get(R1) == b.get(R1)
    # Funds arrived: a node takes the very same bytes.
    assert events(b.broadcast_result(R1, TxId("t1"), BroadcastOutcome.OK, tried + 64)) == [T.BROADCAST]
    w = b.get(R1)
    assert w is not None and (w.refusals, w.retry_height, w.state) == (0, None, S.BROADCAST)
    assert b.summary(tried + 64).stuck == 0


def test_a_final_send_error_is_a_refusal() -> None:
    from watcher.errors import ErrorKind
    assert BroadcastOutcome.of(ErrorKind.FINAL) is BroadcastOutcome.REFUSED
    assert BroadcastOutcome.of(ErrorKind.RETRIABLE) is BroadcastOutcome.RETRIABLE


# ---------------------------------------------------------------- rolling amounts


@dataclass(frozen=True)
class RollCase:
    name: str
    adds: list[tuple[int, int]]
    """(time, amount) charged, in the order read."""
    at: int
    used: int


DAY = 24 * 3600 * 1000
ROLL = [
    RollCase("inside the window", [(0, 2), (3_600_000, 1)], 7_200_000, 3),
    RollCase("the first left the window", [(0, 2), (3_600_000, 1)], DAY, 1),
    RollCase("exactly 24 h later it is out", [(0, 2)], DAY, 0),
    # Read after a later one (another partition): charged as if it came last, so the
    # 24 h that hold it start at 25 h, not at 1 h, and the early charge is not lost.
    RollCase("out of order is charged at the latest time", [(25 * 3_600_000, 3), (3_600_000, 4)],
             26 * 3_600_000, 7),
    RollCase("asked about an earlier time: the latest counts", [(DAY + 5, 3)], 10, 3),
    RollCase("one minute merges", [(60_000, 1), (60_001, 2), (119_999, 3)], 119_999 + DAY - 1, 6),
    RollCase("the merged entry counts from its latest time", [(60_000, 1), (119_999, 3)],
             119_999 + DAY, 0),
]


@pytest.mark.parametrize("case", ROLL, ids=lambda c: c.name)
def test_rolling_amounts(case: RollCase) -> None:
    from watcher.core.withdrawals import RollingAmounts
    r = RollingAmounts()
    for t, a in case.adds:
        r.add(AssetSymbol("ETH"), a, t)
    r.add(AssetSymbol("USDC"), 100, case.adds[-1][0])  # per asset
    assert r.used(AssetSymbol("ETH"), case.at) == case.used


def test_rolling_amounts_stay_bounded() -> None:
    from watcher.core.withdrawals import RollingAmounts
    r = RollingAmounts()
    for i in range(3 * 1440 * 10):  # ten a minute for three days
        r.add(AssetSymbol("ETH"), 1, i * 6_000)
    assert len(r.entries) == 1440
    # The oldest minute counts whole, at its latest time (never shorter than it should):
    # the exact window would hold 1439 * 10 + 9.
    assert r.used(AssetSymbol("ETH"), 3 * 1440 * 10 * 6_000) == 1440 * 10


def test_own_payment_reported_in_other_hex_case_is_still_ours() -> None:
    b = bound()
    b.signed(R1, tx("0xabCD"))
    b.broadcast_result(R1, TxId("0xabCD"), BroadcastOutcome.OK, 10)
    b.block_added(12, BlockHash("0xb12"), [Spend("nonce:0", TxId("0xabcd"))])
    ds = b.tip(40, 30)  # deep and final: a "foreign" reading would re-bind and pay again
    assert events(ds) == [T.CONFIRMED]
    assert isinstance(ds[0], Emit) and ds[0].event.txid == "0xabCD"


def test_bound_keys_for_coin_selection() -> None:
    b = WithdrawalBook(ETH, UTXO)
    b.accept(request("a"))
    b.funds(RequestId("a"), True, ["tx1:1", "tx0:0"])
    assert b.bound_keys() == {"in:tx0:0", "in:tx1:1"}
