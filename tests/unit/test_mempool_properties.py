"""Random histories of sends, replacements, evictions, blocks, double-spends, reorgs, polls and
restarts, on a small UTXO world, keep the mempool rules.

Rules checked on the events the chain state emits:
1. per (deposit_id, episode): at most one ``seen`` and at most one ``reverted``, in that order;
2. nothing is reverted by the mempool path that was not announced ``seen`` in that episode;
3. a transaction the processed chain holds in a block is never seen; one reverted as
   replaced, double-spent or dropped is not in that chain, and one reverted as replaced or
   dropped is not in the node's mempool either;
4. a restart from the snapshot at any point re-derives exactly the same events and ids;
5. in the end, every seen deposit not reverted is in the node's mempool or was mined (and, if
   its block left the chain, reverted by the block path).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st

from watcher.core.chainstate import ChainState
from watcher.core.mempool import MempoolChange, UnconfirmedEvent, UnconfirmedTx
from watcher.core.window import Extend, Rewind
from watcher.events import deposit_event_body, unconfirmed_event_body
from watcher.types import (
    Address,
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainId,
    DepositEventType,
    Outpoint,
    Spend,
    Transfer,
    TxId,
)

BTC = ChainId("btc")
DROP = 100.0
WATCHED = (Address("bcrt1qw0"), Address("bcrt1qw1"))
COINS = tuple(Outpoint(TxId(f"fund{i}"), 0) for i in range(8))


def required(asset: AssetSymbol, amount: int) -> int:
    return 2


def no_label(t: Transfer) -> str | None:
    return None


@dataclass
class World:
    """The node: a chain of blocks of transactions, and a mempool of one spender per coin."""

    chain: list[tuple[BlockRef, tuple[UnconfirmedTx, ...]]] = field(default_factory=list)
    mempool: dict[TxId, UnconfirmedTx] = field(default_factory=dict)
    counter: int = 0
    ever: dict[BlockHash, tuple[UnconfirmedTx, ...]] = field(default_factory=dict)
    """Every block ever mined, reorged out or not."""

    def __post_init__(self) -> None:
        self.chain.append((BlockRef(0, BlockHash("g" * 8), BlockHash("0" * 8)), ()))

    def new_txid(self) -> TxId:
        self.counter += 1
        return TxId(f"t{self.counter}")

    def mine(self, txs: tuple[UnconfirmedTx, ...]) -> None:
        parent = self.chain[-1][0]
        self.counter += 1
        h = hashlib.sha256(f"{parent.hash}{self.counter}".encode()).hexdigest()[:16]
        self.chain.append((BlockRef(parent.number + 1, BlockHash(h), parent.hash), txs))
        self.ever[BlockHash(h)] = txs
        for tx in txs:
            self.mempool.pop(tx.txid, None)

    def on_chain(self) -> set[TxId]:
        return {tx.txid for _, txs in self.chain for tx in txs}

    def spent_on_chain(self) -> set[Outpoint]:
        return {o for _, txs in self.chain for tx in txs for o in tx.spends}

    def evict_spenders(self, coin: Outpoint) -> None:
        for txid in [t for t, tx in self.mempool.items() if coin in tx.spends]:
            del self.mempool[txid]


def _contents(ref: BlockRef, txs: tuple[UnconfirmedTx, ...]) -> BlockContents:
    return BlockContents(ref, tuple(t for tx in txs for t in tx.transfers),
                         tuple(Spend(o, tx.txid) for tx in txs for o in tx.spends))


_send = st.tuples(st.just("send"), st.integers(0, len(COINS) - 1), st.integers(0, 2),
                  st.integers(1, 3), st.booleans())
_poll = st.tuples(st.just("poll"), st.sampled_from([1.0, 30.0, DROP, 2 * DROP]))
# Sends and polls listed thrice: most histories then hold several seen deposits to act on.
op = st.one_of(
    _send, _send, _send, _poll, _poll, _poll,
    st.tuples(st.just("mine"), st.integers(0, 3)),
    st.tuples(st.just("mine_conflict"), st.integers(0, len(COINS) - 1)),
    st.tuples(st.just("reorg"), st.integers(1, 3), st.booleans()),
    st.tuples(st.just("evict"), st.integers(0, 3)),
    st.tuples(st.just("sync")),
    st.tuples(st.just("restart")),
)


@dataclass
class Run:
    events: list[UnconfirmedEvent] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    block_reverts: list[dict[str, object]] = field(default_factory=list)
    world: World = field(default_factory=World)


def play(ops: list[tuple[object, ...]], restarts: bool) -> Run:
    run = Run()
    w = run.world
    state = ChainState(BTC, 64, required, mempool_drop_after_s=DROP)
    baseline: list[TxId] = []
    now = 0.0

    def emitted(evs: tuple[UnconfirmedEvent, ...]) -> None:
        # What the state holds as canonical, which may lag the node's chain.
        canonical = {tx.txid for ref in state.window.blocks() for tx in w.ever.get(ref.hash, ())}
        for e in evs:
            if e.type is DepositEventType.SEEN:
                # A poll naming a transaction the window holds in a block is older than it.
                assert e.deposit.transfer.txid not in canonical, e
            if e.type is DepositEventType.REVERTED:
                txid = e.deposit.transfer.txid
                assert txid not in canonical, e          # rule 3
                if e.reason is not None and e.reason.value in ("replaced", "dropped"):
                    assert txid not in w.mempool, e
                if e.reason is not None and e.reason.value == "dropped":
                    assert txid not in w.on_chain(), e
            run.events.append(e)
            run.ids.append(str(unconfirmed_event_body(BTC, e, 0)["event_id"]))

    def sync() -> None:
        blocks = {ref.hash: (ref, txs) for ref, txs in w.chain}
        fork = max(i for i, (ref, _) in enumerate(w.chain) if ref.hash in state.window) \
            if state.tip is not None else -1
        branch = [ref for ref, _ in w.chain[fork + 1:]]
        if not branch:
            return
        decision = state.window.decide(branch)
        assert isinstance(decision, Extend | Rewind), decision
        applied = state.apply(decision, [_contents(*blocks[r.hash]) for r in decision.added],
                              no_label)
        for ev in applied.events:
            body = deposit_event_body(BTC, ev, 0)
            if ev.type is DepositEventType.REVERTED:
                assert body["reason"] == "reorg"
                run.block_reverts.append(body)
            run.ids.append(str(body["event_id"]))
        emitted(applied.unconfirmed)

    sync()
    for o in ops:
        kind = o[0]
        if kind == "send":
            coin_i, to, outs, rbf = o[1], o[2], o[3], o[4]
            assert isinstance(coin_i, int) and isinstance(to, int) and isinstance(outs, int)
            coin = COINS[coin_i]
            if coin in w.spent_on_chain():
                continue
            txid = w.new_txid()
            pays = () if to == 2 else tuple(
                Transfer(txid, f"vout:{n}", AssetSymbol("BTC"), None, WATCHED[to], None,
                         1000 + n, 8) for n in range(outs))
            w.evict_spenders(coin)
            w.mempool[txid] = UnconfirmedTx(txid, pays, (coin,), bool(rbf))
        elif kind == "mine":
            k = o[1]
            assert isinstance(k, int)
            w.mine(tuple(list(w.mempool.values())[:k]))
        elif kind == "mine_conflict":
            coin_i = o[1]
            assert isinstance(coin_i, int)
            coin = COINS[coin_i]
            if coin in w.spent_on_chain():
                continue
            w.evict_spenders(coin)
            w.mine((UnconfirmedTx(w.new_txid(), (), (coin,), False),))
        elif kind == "reorg":
            depth, back = o[1], o[2]
            assert isinstance(depth, int)
            depth = min(depth, len(w.chain) - 1)
            if depth < 1:
                continue
            removed = w.chain[-depth:]
            del w.chain[-depth:]
            if back:
                for _, txs in removed:
                    for tx in txs:
                        w.mempool[tx.txid] = tx
            for _ in range(depth + 1):
                w.mine(())
        elif kind == "evict":
            i = o[1]
            assert isinstance(i, int)
            txids = list(w.mempool)
            if i < len(txids):
                del w.mempool[txids[i]]
        elif kind == "poll":
            dt = o[1]
            assert isinstance(dt, float)
            now += dt
            current = list(w.mempool)
            added = tuple(w.mempool[t] for t in current if t not in baseline)
            gone = tuple(t for t in baseline if t not in w.mempool)
            baseline = current
            change = MempoolChange(added, gone, w.chain[-1][0].hash)
            emitted(state.observe_mempool(change, now, no_label).events)
        elif kind == "sync":
            sync()
        elif kind == "restart" and restarts:
            state = ChainState.restore(state.snapshot(), BTC, 64, required,
                                       mempool_drop_after_s=DROP)
    # Settle: catch up, then let every gone transaction time out.
    sync()
    for _ in range(2):
        now += 2 * DROP
        current = list(w.mempool)
        added = tuple(w.mempool[t] for t in current if t not in baseline)
        gone = tuple(t for t in baseline if t not in w.mempool)
        baseline = current
        emitted(state.observe_mempool(MempoolChange(added, gone, w.chain[-1][0].hash), now,
                                      no_label).events)
    return run


@settings(max_examples=400, deadline=None)
@given(st.lists(op, min_size=10, max_size=60))
def test_random_mempool_histories_keep_the_rules(ops: list[tuple[object, ...]]) -> None:
    run = play(ops, restarts=True)
    per: dict[tuple[str, int], list[str]] = defaultdict(list)
    for e in run.events:
        per[(e.deposit.deposit_id, e.episode)].append(e.type.value)
    for e in run.events:
        event(e.reason.value if e.reason else "seen")
    if run.block_reverts:
        event("reorg")
    for key, types in per.items():
        assert types in (["deposit.seen"], ["deposit.seen", "deposit.reverted"]), (key, types)  # 1, 2
    # 4: the same history without restarts gives the same stream, id for id.
    assert play(ops, restarts=False).ids == run.ids
    assert len(set(run.ids)) == len(run.ids)
    # 5: nothing seen is left hanging (mined then reorged out, the block path reverted it).
    w = run.world
    present = set(w.mempool) | w.on_chain() | {str(b["txid"]) for b in run.block_reverts}
    for (did, _), types in per.items():
        if types == ["deposit.seen"]:
            txid = did.split(":")[1]
            assert txid in present, (did, types)
