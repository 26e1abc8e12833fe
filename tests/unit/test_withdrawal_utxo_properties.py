"""Property test of the withdrawal machine on a simulated UTXO chain (input bindings).

Like the EVM property test, with inputs instead of nonces: coin selection from the hot
wallet's outputs that no request holds, conflicting spends of bound inputs by another
transaction (double spends), BIP 125 replacement in the mempool, fee-rate swings, reorgs,
restarts and crashes, and batches (several requests bound to one input set and paid by
one transaction, :meth:`WithdrawalBook.funds_batch`). Checked: no request is paid twice
on chain; a request signs with another input set only after its old inputs were spent, in a final block, by a
transaction not its own; one final event per request; and once the disturbances stop,
every request confirms exactly once; the fee shares of a batch's events sum to its fee.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_withdrawal_properties import _Checked, _Crash
from watcher.core.withdrawals import (
    Bind,
    Broadcast,
    BroadcastOutcome,
    CheckFunds,
    Commit,
    Decision,
    Emit,
    Fees,
    InputsBinding,
    MachineConfig,
    ReconcileNonce,
    Request,
    RequestId,
    Sign,
    SignedTx,
    Spend,
    WithdrawalBook,
    WithdrawalEvent,
    WithdrawalEventType,
    WithdrawalState,
    load_settled,
)
from watcher.types import Address, AssetSymbol, BlockHash, ChainId, TxId

BTC = ChainId("btc")
CAP = 200
CFG = MachineConfig(confirmations=3, stuck_blocks=3, fee_cap=Fees(CAP, 0), uses_nonces=False)
FINAL_DEPTH = 4
COINS = [f"coin{i}:0" for i in range(40)]
T = WithdrawalEventType


@dataclass(frozen=True)
class UTx:
    txid: TxId
    rids: frozenset[str]
    """The requests it pays (several: a batch; none: a foreign spend)."""
    inputs: frozenset[str]
    rate: int


@dataclass
class UtxoSim:
    book: WithdrawalBook = field(default_factory=lambda: WithdrawalBook(BTC, CFG))
    blocks: list[tuple[BlockHash, list[UTx]]] = field(default_factory=list)
    mempool: dict[TxId, UTx] = field(default_factory=dict)
    txs: dict[TxId, UTx] = field(default_factory=dict)
    min_rate: int = 5
    down: bool = False
    forks: int = 0
    foreign_count: int = 0
    delivered: list[BlockHash] = field(default_factory=list)
    committed: tuple[bytes, list[BlockHash]] = (b"", [])
    store: dict[RequestId, bytes] = field(default_factory=dict)
    pending_events: list[WithdrawalEvent] = field(default_factory=list)
    published: list[WithdrawalEvent] = field(default_factory=list)
    signed_inputs: dict[str, list[frozenset[str]]] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    budget: int | None = None
    batching: bool = False
    """Funds are only found for requests gathered into batches (:meth:`gather`)."""

    def __post_init__(self) -> None:
        self.committed = (self.book.snapshot(), [])
        self.run(self.book.resume())

    @property
    def height(self) -> int:
        return len(self.blocks)

    @property
    def finalized(self) -> int:
        return max(0, self.height - FINAL_DEPTH)

    def spent_on_chain(self) -> dict[str, tuple[int, UTx]]:
        return {i: (h, t) for h, (_, txs) in enumerate(self.blocks, start=1) for t in txs for i in t.inputs}

    def send(self, tx: UTx) -> BroadcastOutcome:
        if self.down:
            return BroadcastOutcome.RETRIABLE
        if tx.inputs & set(self.spent_on_chain()):
            return BroadcastOutcome.CONSUMED
        if tx.txid in self.mempool:
            return BroadcastOutcome.ALREADY_KNOWN
        conflicts = [t for t in self.mempool.values() if t.inputs & tx.inputs]
        if tx.rate < self.min_rate or any(tx.rate * 10 < t.rate * 11 for t in conflicts):
            return BroadcastOutcome.UNDERPRICED
        for t in conflicts:
            del self.mempool[t.txid]
        self.mempool[tx.txid] = tx
        return BroadcastOutcome.OK

    def mine_block(self) -> None:
        spent = set(self.spent_on_chain())
        included: list[UTx] = []
        for t in sorted(self.mempool.values(), key=lambda t: (-t.rate, t.txid)):
            if len(included) < 3 and t.rate >= self.min_rate and not t.inputs & spent:
                included.append(t)
                spent |= t.inputs
        for t in included:
            del self.mempool[t.txid]
        for t in [t for t in self.mempool.values() if t.inputs & spent]:
            del self.mempool[t.txid]
        self.forks += 1
        self.blocks.append((BlockHash(f"{self.height + 1}-{self.forks}"), included))

    def reorg(self, depth: int) -> None:
        depth = min(depth, 3, self.height)
        for _, txs in self.blocks[self.height - depth:]:
            for t in txs:
                self.mempool.setdefault(t.txid, t)
        del self.blocks[self.height - depth:]
        for _ in range(depth + 1):
            self.mine_block()

    def double_spend(self, pick: int) -> None:
        """Another transaction spends a bound input (a compromised or shared key)."""
        bound = sorted(k.removeprefix("in:") for k in self.book.bound_keys())
        if not bound:
            return
        self.foreign_count += 1
        t = UTx(TxId(f"foreign-{self.foreign_count}"), frozenset(), frozenset({bound[pick % len(bound)]}),
                1_000)
        self.txs[t.txid] = t
        for c in [c for c in self.mempool.values() if c.inputs & t.inputs]:
            del self.mempool[c.txid]
        self.mempool[t.txid] = t

    def commit(self) -> None:
        changes = self.book.take_changes()
        self.committed = (changes.snapshot, list(self.delivered))
        self.store.update(changes.records)
        self.book.changes_committed()
        self.published.extend(self.pending_events)
        self.pending_events = []

    def run(self, ds: list[Decision]) -> None:
        queue = _Checked(ds)
        while queue:
            if self.budget is not None:
                if self.budget == 0:
                    raise _Crash
                self.budget -= 1
            d = queue.popleft()
            if isinstance(d, Emit):
                self.pending_events.append(d.event)
            elif isinstance(d, Commit):
                self.commit()
            elif isinstance(d, CheckFunds):
                queue.nested(self.select(d.request_id))
            elif isinstance(d, Bind):
                pass
            elif isinstance(d, Sign):
                queue.nested(self.sign(d))
            elif isinstance(d, Broadcast):
                t = self.txs[TxId(d.raw.decode())]
                queue.nested(self.book.broadcast_result(d.request_id, d.txid, self.send(t), self.height))
            elif isinstance(d, ReconcileNonce):
                raise AssertionError("no nonces on a UTXO chain")
        self.commit()

    def free_coins(self) -> list[str]:
        taken = {k.removeprefix("in:") for k in self.book.bound_keys()}
        taken |= set(self.spent_on_chain()) | {i for t in self.mempool.values() for i in t.inputs}
        return [c for c in COINS if c not in taken]

    def select(self, rid: RequestId) -> list[Decision]:
        if self.batching:
            return self.book.funds(rid, False)  # waits to be gathered
        free = self.free_coins()
        return self.book.funds(rid, bool(free), free[:1] or None)

    def gather(self, size: int) -> None:
        """Up to ``size`` unbound requests paid together from one or two free coins."""
        unbound = sorted(w.request.request_id for w in self.book.withdrawals()
                         if w.binding is None and w.state in (WithdrawalState.ACCEPTED,
                                                              WithdrawalState.WAITING_FUNDS))
        free = self.free_coins()
        group = unbound[:size]
        if not group or not free:
            return
        if len(group) == 1:
            self.run(self.book.funds(group[0], True, free[:1]))
        else:
            self.run(self.book.funds_batch(group, free[:1 + size % 2]))

    def sign(self, d: Sign) -> list[Decision]:
        assert isinstance(d.binding, InputsBinding)
        rid, inputs = d.request_id, frozenset(d.binding.outpoints)
        w = self.book.get(rid)
        assert w is not None
        members = w.batch or (rid,)
        assert rid == members[0], "a batch is signed by its lead"
        rate = min(max(d.min_fees.max_fee, 6), CAP)
        spent = self.spent_on_chain()
        for m in members:
            for old in set(self.signed_inputs.setdefault(m, [])) - {inputs}:
                proofs = [spent[i] for i in old if i in spent]
                assert proofs, f"{m} left inputs {sorted(old)} that nothing spent"
                assert any(m not in t.rids and h <= self.finalized for h, t in proofs), (
                    f"{m} re-bound without proof")
            self.signed_inputs[m].append(inputs)
        txid = TxId(f"{'+'.join(members)}|{','.join(sorted(inputs))}|{rate}")
        self.txs[txid] = UTx(txid, frozenset(members), inputs, rate)
        return self.book.signed(rid, SignedTx(txid, txid.encode(), d.binding, Fees(rate, 0),
                                              rate * (100 + 41 * len(members))))

    def sync(self) -> None:
        canon = [h for h, _ in self.blocks]
        i = 0
        while i < min(len(canon), len(self.delivered)) and canon[i] == self.delivered[i]:
            i += 1
        ds = []
        if i < len(self.delivered):
            ds += self.book.blocks_removed(self.delivered[i:])
        for h in range(i, len(canon)):
            ds += self.book.block_added(h + 1, canon[h], [Spend(f"in:{o}", t.txid) for t in self.blocks[h][1]
                                                          for o in sorted(t.inputs)])
        self.delivered = canon
        ds += self.book.tip(self.height, self.finalized)
        self.run(ds)

    def restart(self) -> None:
        snapshot, delivered = self.committed
        self.budget = None
        self.book = WithdrawalBook.restore(snapshot, BTC, CFG, load_settled(
            (k.encode(), v) for k, v in self.store.items()))
        self.delivered = list(delivered)
        self.pending_events = []
        self.run(self.book.resume())
        self.sync()

    def submit(self, rid: str) -> None:
        if rid not in self.submitted:
            self.submitted.append(rid)
        if self.book.knows(rid) is False:
            self.run(self.book.accept(Request(RequestId(rid), AssetSymbol("BTC"), None, Address("bcrt1q"),
                                              10_000, 8, f"d-{rid}", self.height)))

    def check(self) -> None:
        paid = Counter(r for _, txs in self.blocks for t in txs for r in t.rids)
        assert all(n <= 1 for n in paid.values()), paid
        final = Counter(e.request.request_id for e in self.published if e.type is T.CONFIRMED)
        assert all(n == 1 for n in final.values()), final
        sent = Counter((e.request.request_id, e.txid) for e in self.published
                       if e.type in (T.BROADCAST, T.REPLACED))
        assert all(n == 1 for n in sent.values()), sent
        shares: dict[TxId | None, int] = {}
        for e in self.published:
            if e.type in (T.BROADCAST, T.REPLACED):
                shares[e.txid] = shares.get(e.txid, 0) + (e.fee or 0)
        for txid, total in shares.items():
            t = self.txs[TxId(str(txid))]
            if len({e.request.request_id for e in self.published if e.txid == txid
                    and e.type in (T.BROADCAST, T.REPLACED)}) == len(t.rids):
                assert total == t.rate * (100 + 41 * len(t.rids)), (txid, total)


ACTIONS = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 5)),
    st.tuples(st.just("mine"), st.integers(1, 4)),
    st.tuples(st.just("reorg"), st.integers(1, 3)),
    st.tuples(st.just("double_spend"), st.integers(0, 10)),
    st.tuples(st.just("restart"), st.just(0)),
    st.tuples(st.just("crash"), st.integers(0, 8)),
    st.tuples(st.just("min_rate"), st.integers(1, 60)),
    st.tuples(st.just("down"), st.booleans()),
    st.tuples(st.just("gather"), st.integers(1, 4)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, max_size=60))
def test_inputs_never_pay_twice(actions: list[tuple[str, int]]) -> None:
    check_never_paid_twice(UtxoSim(), actions)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, max_size=60))
def test_batches_never_pay_twice(actions: list[tuple[str, int]]) -> None:
    check_never_paid_twice(UtxoSim(batching=True), actions)


def check_never_paid_twice(sim: UtxoSim, actions: list[tuple[str, int]]) -> None:
    crash_next: int | None = None
    for name, arg in actions:
        sim.budget, crash_next = crash_next, None
        try:
            if name == "request":
                sim.submit(f"w-{arg}")
            elif name == "mine":
                for _ in range(arg):
                    sim.mine_block()
                sim.sync()
            elif name == "reorg":
                sim.reorg(arg)
                sim.sync()
            elif name == "double_spend":
                sim.double_spend(arg)
            elif name == "restart":
                sim.restart()
            elif name == "crash":
                crash_next = arg
            elif name == "min_rate":
                sim.min_rate = arg
            elif name == "down":
                sim.down = bool(arg)
            elif name == "gather":
                sim.gather(arg)
        except _Crash:
            sim.restart()
        sim.budget = None
        sim.check()

    sim.min_rate, sim.down = 5, False
    for rid in sim.submitted:
        sim.submit(rid)
    for i in range(60):
        if sim.batching:
            sim.gather(2 + i % 3)
        sim.mine_block()
        sim.sync()
    sim.check()
    confirmed = {e.request.request_id for e in sim.published if e.type is T.CONFIRMED}
    assert confirmed == set(sim.submitted), (set(sim.submitted) - confirmed)


def test_a_gathered_batch_is_one_transaction_bumped_in_step_and_confirmed_per_member() -> None:
    """A scenario the property test draws, written out: three requests in one batch, stuck
    below the mempool's rate, bumped once for all (same inputs), one event each per step."""
    sim = UtxoSim(batching=True)
    for i in range(3):
        sim.submit(f"w-{i}")
    sim.gather(3)  # signed and sent at 6 sat/vB
    sim.min_rate = 7  # now mined only from 7: stuck
    for _ in range(CFG.stuck_blocks + 12):
        sim.mine_block()
        sim.sync()
    mined = [t for _, txs in sim.blocks for t in txs]
    assert [sorted(t.rids) for t in mined] == [["w-0", "w-1", "w-2"]]
    assert all(i == frozenset(mined[0].inputs) for rid in ("w-0", "w-1", "w-2")
               for i in sim.signed_inputs[rid])
    by_type = Counter((e.type, str(e.request.request_id)) for e in sim.published)
    for rid in ("w-0", "w-1", "w-2"):
        assert by_type[(T.BROADCAST, rid)] == 1 and by_type[(T.REPLACED, rid)] >= 1
        assert by_type[(T.CONFIRMED, rid)] == 1
    confirmed = [e for e in sim.published if e.type is T.CONFIRMED]
    assert {e.txid for e in confirmed} == {mined[0].txid}
    # rate 6 -> 7 (+10%, rounded up): fee 7 x (100 + 3 x 41) = 1561 = 521 + 520 + 520.
    assert mined[0].rate == 7
    assert [e.fee for e in sorted(confirmed, key=lambda e: e.request.request_id)] == [521, 520, 520]
    sim.check()
