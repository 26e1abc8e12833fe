"""Property test of the withdrawal machine against a simulated EVM chain, node and runtime.

Random sequences of requests (with repeats), mined blocks, reorgs, another sender using
the hot wallet's nonces, base-fee swings (stuck payments), "underpriced" and "nonce too
low" answers, an unreachable node, missing funds, restarts from the last committed
snapshot and crashes in the middle of carrying out decisions. The simulated runtime
carries out the decisions exactly as specified (``Commit`` makes the snapshot, the
events and the view of the chain durable together; a crash loses everything after the
last ``Commit``, while the network keeps what it was handed).

Checked: no request is ever paid twice on chain; a request signs for a second nonce only
after its first nonce was consumed, in a finalized block, by a transaction not its own;
at most one ``confirmed``/``failed`` per request and one ``accepted``; each transaction
announced at most once; and once the disturbances stop, every request ends confirmed
(or failed, for the ones whose payment reverts) exactly once.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chains.evm.tx import quote_fees
from watcher.core.withdrawals import (
    Bind,
    Broadcast,
    BroadcastOutcome,
    CheckFunds,
    Commit,
    Decision,
    Emit,
    Fees,
    MachineConfig,
    NonceBinding,
    ReconcileNonce,
    Request,
    RequestId,
    Sign,
    SignedTx,
    Spend,
    WithdrawalBook,
    WithdrawalEvent,
    WithdrawalEventType,
    load_settled,
)
from watcher.types import Address, AssetSymbol, BlockHash, ChainId, TxId

ETH = ChainId("eth")
CAP = Fees(200, 20)
CFG = MachineConfig(confirmations=4, stuck_blocks=3, fee_cap=CAP, uses_nonces=True)
FINAL_DEPTH = 4
"""Blocks at or below ``height - FINAL_DEPTH`` are final; reorgs are at most 3 deep."""
REVERTING = frozenset({"w-3"})
T = WithdrawalEventType


class _Crash(Exception):
    pass


@dataclass(frozen=True)
class SimTx:
    txid: TxId
    rid: str | None
    """None: a transaction of another sender using the hot wallet's key."""
    nonce: int
    fees: Fees


@dataclass
class Sim:
    book: WithdrawalBook = field(default_factory=lambda: WithdrawalBook(ETH, CFG))
    blocks: list[tuple[BlockHash, list[SimTx]]] = field(default_factory=list)
    mempool: dict[int, SimTx] = field(default_factory=dict)
    txs: dict[TxId, SimTx] = field(default_factory=dict)
    base_fee: int = 10
    node_min: int = 0
    down: bool = False
    funds_ok: bool = True
    forks: int = 0
    foreign_count: int = 0
    delivered: list[BlockHash] = field(default_factory=list)
    committed: tuple[bytes, list[BlockHash]] = (b"", [])
    pending_events: list[WithdrawalEvent] = field(default_factory=list)
    published: list[WithdrawalEvent] = field(default_factory=list)
    signed_nonces: dict[str, list[int]] = field(default_factory=dict)
    submitted: list[str] = field(default_factory=list)
    budget: int | None = None
    store: dict[RequestId, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.committed = (self.book.snapshot(), [])
        self.run(self.book.resume())

    # ------------------------------------------------------------ the chain and the node

    @property
    def height(self) -> int:
        return len(self.blocks)

    @property
    def finalized(self) -> int:
        return max(0, self.height - FINAL_DEPTH)

    def chain_nonce(self) -> int:
        return sum(len(txs) for _, txs in self.blocks)

    def pending_count(self) -> int:
        n = self.chain_nonce()
        while n in self.mempool:
            n += 1
        return n

    def send(self, tx: SimTx) -> BroadcastOutcome:
        if self.down:
            return BroadcastOutcome.RETRIABLE
        if tx.nonce < self.chain_nonce():
            return BroadcastOutcome.CONSUMED
        current = self.mempool.get(tx.nonce)
        if current is not None and current.txid == tx.txid:
            return BroadcastOutcome.ALREADY_KNOWN
        if tx.fees.max_fee < self.node_min:
            return BroadcastOutcome.UNDERPRICED
        if current is not None and not tx.fees.covers(current.fees.bumped()):
            return BroadcastOutcome.UNDERPRICED
        self.mempool[tx.nonce] = tx
        return BroadcastOutcome.OK

    def mine_block(self) -> None:
        n = self.chain_nonce()
        included: list[SimTx] = []
        while len(included) < 3 and n in self.mempool and self.mempool[n].fees.max_fee >= self.base_fee:
            included.append(self.mempool.pop(n))
            n += 1
        self.forks += 1
        self.blocks.append((BlockHash(f"0x{self.height + 1}-{self.forks}"), included))
        for k in [k for k in self.mempool if k < n]:
            del self.mempool[k]

    def reorg(self, depth: int) -> None:
        depth = min(depth, 3, self.height)
        for _, txs in self.blocks[self.height - depth:]:
            for t in txs:
                self.mempool.setdefault(t.nonce, t)
        del self.blocks[self.height - depth:]
        for _ in range(depth + 1):
            self.mine_block()

    def foreign(self, at_chain_nonce: bool) -> None:
        self.foreign_count += 1
        nonce = self.chain_nonce() if at_chain_nonce else self.pending_count()
        t = SimTx(TxId(f"foreign-{self.foreign_count}"), None, nonce, CAP)
        self.txs[t.txid] = t
        self.mempool[nonce] = t

    # ------------------------------------------------------------ the runtime

    def commit(self) -> None:
        # The live snapshot and the settled records of the step, in one transaction.
        changes = self.book.take_changes()
        self.committed = (changes.snapshot, list(self.delivered))
        self.store.update(changes.records)
        self.book.changes_committed()
        # Live state only: a request with a settled record is never in the snapshot too.
        live = {w["r"][0] for w in orjson.loads(changes.snapshot)["withdrawals"]}
        assert not live & set(self.store), live & set(self.store)
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
                queue.nested(self.book.funds(d.request_id, self.funds_ok))
            elif isinstance(d, Bind):
                pass
            elif isinstance(d, Sign):
                queue.nested(self.sign(d))
            elif isinstance(d, Broadcast):
                t = self.txs[TxId(d.raw.decode())]
                assert t.txid == d.txid and t.rid == d.request_id
                queue.nested(self.book.broadcast_result(d.request_id, d.txid, self.send(t), self.height))
            elif isinstance(d, ReconcileNonce):
                queue.nested(self.book.nonce_counts(self.chain_nonce(), self.pending_count()))
        self.commit()  # the end of one observation is one Kafka transaction

    def sign(self, d: Sign) -> list[Decision]:
        assert isinstance(d.binding, NonceBinding)
        rid, nonce = d.request_id, d.binding.nonce
        fees = quote_fees(self.base_fee, 2, CAP, d.min_fees)
        if fees is None:
            return []
        earlier = self.signed_nonces.setdefault(rid, [])
        for old in set(earlier) - {nonce}:
            # Re-bound: the old nonce must be consumed, finally, by a transaction not paying rid.
            consumer = self.consumer_of(old)
            assert consumer is not None, f"{rid} left nonce {old} that nothing consumed"
            height, t = consumer
            assert t.rid != rid and height <= self.finalized, f"{rid} re-bound without proof"
        earlier.append(nonce)
        # Deterministic like RFC 6979 signing: the same payload gives the same bytes.
        txid = TxId(f"{rid}|{nonce}|{fees.max_fee}|{fees.tip}")
        self.txs[txid] = SimTx(txid, rid, nonce, fees)
        return self.book.signed(rid, SignedTx(txid, txid.encode(), d.binding, fees, 21_000 * fees.max_fee))

    def consumer_of(self, nonce: int) -> tuple[int, SimTx] | None:
        for h, (_, txs) in enumerate(self.blocks, start=1):
            for t in txs:
                if t.nonce == nonce:
                    return h, t
        return None

    def sync(self) -> None:
        """What the chain follower reports: blocks that left, blocks that joined, the tip."""
        canon = [h for h, _ in self.blocks]
        i = 0
        while i < min(len(canon), len(self.delivered)) and canon[i] == self.delivered[i]:
            i += 1
        ds = []
        if i < len(self.delivered):
            ds += self.book.blocks_removed(self.delivered[i:])
        for h in range(i, len(canon)):
            spends = [Spend(f"nonce:{t.nonce}", t.txid, reverted=t.rid in REVERTING)
                      for t in self.blocks[h][1]]
            ds += self.book.block_added(h + 1, canon[h], spends)
        self.delivered = canon
        ds += self.book.tip(self.height, self.finalized)
        self.run(ds)

    def restart(self, budget: int | None = None) -> None:
        """From the last commit; ``budget`` crashes the restart itself after that many steps."""
        snapshot, delivered = self.committed
        self.budget = budget
        self.book = WithdrawalBook.restore(snapshot, ETH, CFG, load_settled(
            (k.encode(), v) for k, v in self.store.items()))
        assert normalized(self.book.snapshot()) == normalized(snapshot)
        self.delivered = list(delivered)
        self.pending_events = []
        try:
            self.run(self.book.resume())
            self.sync()
        except _Crash:
            self.restart()
        self.budget = None

    def submit(self, rid: str) -> None:
        if rid not in self.submitted:
            self.submitted.append(rid)
        if self.book.knows(rid):
            return  # intake's Repeat: no event
        self.run(self.book.accept(Request(RequestId(rid), AssetSymbol("ETH"), None,
                                          Address("0x" + "11" * 20), 1 + len(rid), 18, f"d-{rid}",
                                          self.height)))

    # ------------------------------------------------------------ checks

    def check_paid_at_most_once(self) -> None:
        paid = Counter(t.rid for _, txs in self.blocks for t in txs if t.rid is not None)
        assert all(n <= 1 for n in paid.values()), paid

    def check_events(self) -> None:
        final = Counter(e.request.request_id for e in self.published
                        if e.type in (T.CONFIRMED, T.FAILED))
        assert all(n == 1 for n in final.values()), final
        accepted = Counter(e.request.request_id for e in self.published if e.type is T.ACCEPTED)
        assert all(n == 1 for n in accepted.values()), accepted
        sent = Counter(e.txid for e in self.published if e.type in (T.BROADCAST, T.REPLACED))
        assert all(n == 1 for n in sent.values()), sent
        ids = Counter(e.event_id for e in self.published)
        assert all(n == 1 for n in ids.values()), "event ids repeat"
        canonical = {t.txid: t for _, txs in self.blocks for t in txs}
        for e in self.published:
            if e.type is T.CONFIRMED:
                assert e.txid in canonical and canonical[e.txid].rid == e.request.request_id
            if e.type is T.REPLACED:
                assert e.replaces_txid is not None


class _Checked(deque[Decision]):
    """The runtime's queue; every list of decisions added must hold its events before its
    first Commit (a Commit makes the whole current state durable)."""

    def __init__(self, ds: list[Decision]) -> None:
        super().__init__()
        self.extend(ds)

    def extend(self, ds: Iterable[Decision]) -> None:
        ds = list(ds)
        first_commit = next((i for i, d in enumerate(ds) if isinstance(d, Commit)), len(ds))
        assert not any(isinstance(d, Emit) for d in ds[first_commit:]), ds
        super().extend(ds)

    def nested(self, ds: Iterable[Decision]) -> None:
        """Depth first: what an observation made while carrying out a decision returns is
        carried out before the rest of the list."""
        ds = list(ds)
        self.extend(ds)
        for _ in ds:
            self.rotate(1)


def normalized(snapshot: bytes) -> Any:
    doc = orjson.loads(snapshot)
    doc["withdrawals"].sort(key=lambda w: w["r"][0])
    return doc


ACTIONS = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 5)),
    st.tuples(st.just("mine"), st.integers(1, 4)),
    st.tuples(st.just("reorg"), st.integers(1, 3)),
    st.tuples(st.just("foreign"), st.booleans()),
    st.tuples(st.just("restart"), st.just(0)),
    st.tuples(st.just("crash"), st.integers(0, 8)),
    st.tuples(st.just("base_fee"), st.integers(5, 60)),
    st.tuples(st.just("node_min"), st.integers(0, 40)),
    st.tuples(st.just("down"), st.booleans()),
    st.tuples(st.just("funds"), st.booleans()),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, max_size=60))
def test_never_paid_twice_and_every_request_settles_once(actions: list[tuple[str, int]]) -> None:
    sim = Sim()
    crash_next: int | None = None
    for name, arg in actions:
        sim.budget = crash_next
        crash_next = None
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
            elif name == "foreign":
                sim.foreign(bool(arg))
            elif name == "restart":
                sim.restart(sim.budget)
            elif name == "crash":
                crash_next = arg
            elif name == "base_fee":
                sim.base_fee = arg
            elif name == "node_min":
                sim.node_min = arg
            elif name == "down":
                sim.down = bool(arg)
            elif name == "funds":
                sim.funds_ok = bool(arg)
        except _Crash:
            sim.restart()
        sim.budget = None
        sim.check_paid_at_most_once()
        sim.check_events()

    # The disturbances stop: redelivered requests, a healthy node, funds, normal fees.
    sim.base_fee, sim.node_min, sim.down, sim.funds_ok = 10, 0, False, True
    for rid in sim.submitted:
        sim.submit(rid)
    for _ in range(60):
        sim.mine_block()
        sim.sync()
    sim.check_paid_at_most_once()
    sim.check_events()
    settled = {e.request.request_id: e.type for e in sim.published if e.type in (T.CONFIRMED, T.FAILED)}
    for rid in sim.submitted:
        assert settled.get(RequestId(rid)) is (T.FAILED if rid in REVERTING else T.CONFIRMED), (
            rid, sim.book.get(RequestId(rid)))
