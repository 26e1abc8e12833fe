"""Table-driven tests of unconfirmed (mempool) deposits, alone and inside the chain state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import pytest

from watcher.core.chainstate import ChainState, SnapshotError
from watcher.core.mempool import MempoolChange, MempoolTracker, UnconfirmedEvent, UnconfirmedTx
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
    RevertReason,
    Spend,
    Transfer,
    TxId,
)

BTC = ChainId("btc")
S, R = DepositEventType.SEEN, DepositEventType.REVERTED
W1, W2 = Address("bcrt1qwatched1"), Address("bcrt1qwatched2")
DROP = 600.0


def required(asset: AssetSymbol, amount: int) -> int:
    return 1 if amount < 100_000 else 3


def no_label(t: Transfer) -> str | None:
    return None


def op(txid: str, vout: int = 0) -> Outpoint:
    return Outpoint(TxId(txid), vout)


def utx(txid: str, pays: Sequence[tuple[Address, int]], spends: Sequence[Outpoint],
        rbf: bool = True) -> UnconfirmedTx:
    transfers = tuple(Transfer(TxId(txid), f"vout:{n}", AssetSymbol("BTC"), None, to, None,
                               amount, 8) for n, (to, amount) in enumerate(pays))
    return UnconfirmedTx(TxId(txid), transfers, tuple(spends), rbf)


A = utx("aa", [(W1, 150_000)], [op("f0")])
A_AGAIN = A
B_UNWATCHED = utx("bb", [], [op("f0")])
B_WATCHED = utx("bb", [(W2, 49_000)], [op("f0")], rbf=False)
THREE = utx("cc", [(W1, 1), (W2, 2), (W1, 300_000)], [op("f1"), op("f2", 3)])


# A step: ("poll", now, added, gone, caught_up) or ("block", spends).
Step = tuple[object, ...]
Got = tuple[str, str, int, str | None]


def run(tracker: MempoolTracker, steps: Sequence[Step]) -> list[Got]:
    got: list[Got] = []
    for s in steps:
        if s[0] == "poll":
            _, now, added, gone, caught_up = s
            assert isinstance(now, float) and isinstance(added, tuple) and isinstance(gone, tuple)
            evs = tracker.observe(MempoolChange(added, gone), now, no_label,
                                  caught_up=bool(caught_up))
        else:
            spends = s[1]
            assert isinstance(spends, tuple)
            evs, _ = tracker.connect(spends)
        got.extend(_short(e) for e in evs)
    return got


def _short(e: UnconfirmedEvent) -> Got:
    return (e.type.value, e.deposit.deposit_id, e.episode, e.reason.value if e.reason else None)


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[Step, ...]
    expect: tuple[Got, ...]
    left: int = 0


CASES = [
    Case("seen then mined: no reversal, leaves the state",
         (("poll", 0.0, (A,), (), True), ("block", (Spend(op("f0"), TxId("aa")),))),
         (("deposit.seen", "btc:aa:vout:0", 0, None),)),
    Case("seen then replaced by a transaction paying nobody watched",
         (("poll", 0.0, (A,), (), True), ("poll", 5.0, (B_UNWATCHED,), (TxId("aa"),), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),
          ("deposit.reverted", "btc:aa:vout:0", 0, "replaced"))),
    Case("replacement paying another watched address is a new deposit",
         (("poll", 0.0, (A,), (), True), ("poll", 5.0, (B_WATCHED,), (TxId("aa"),), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),
          ("deposit.reverted", "btc:aa:vout:0", 0, "replaced"),
          ("deposit.seen", "btc:bb:vout:0", 1, None)), left=1),
    Case("seen then double-spent by a block",
         (("poll", 0.0, (A,), (), True), ("block", (Spend(op("f0"), TxId("dd")),))),
         (("deposit.seen", "btc:aa:vout:0", 0, None),
          ("deposit.reverted", "btc:aa:vout:0", 0, "double_spent"))),
    Case("gone: not dropped one second before the timeout",
         (("poll", 0.0, (A,), (), True), ("poll", 10.0, (), (TxId("aa"),), True),
          ("poll", 10.0 + DROP - 1, (), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),), left=1),
    Case("gone: dropped at the timeout",
         (("poll", 0.0, (A,), (), True), ("poll", 10.0, (), (TxId("aa"),), True),
          ("poll", 10.0 + DROP, (), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),
          ("deposit.reverted", "btc:aa:vout:0", 0, "dropped"))),
    Case("no drop while the block path is behind the poll's tip; then dropped",
         (("poll", 0.0, (A,), (), True), ("poll", 10.0, (), (TxId("aa"),), True),
          ("poll", 10.0 + DROP * 5, (), (), False), ("poll", 10.0 + DROP * 5 + 1, (), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),
          ("deposit.reverted", "btc:aa:vout:0", 0, "dropped"))),
    Case("gone then mined within the timeout: no reversal",
         (("poll", 0.0, (A,), (), True), ("poll", 10.0, (), (TxId("aa"),), True),
          ("block", (Spend(op("f0"), TxId("aa")),)), ("poll", 10.0 + DROP, (), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),)),
    Case("gone then back in the mempool: the timer stops, same episode, no new seen",
         (("poll", 0.0, (A,), (), True), ("poll", 10.0, (), (TxId("aa"),), True),
          ("poll", 20.0, (A_AGAIN,), (), True), ("poll", 20.0 + DROP * 2, (), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),), left=1),
    Case("seen, dropped, seen again: a new episode",
         (("poll", 0.0, (A,), (), True), ("poll", 1.0, (), (TxId("aa"),), True),
          ("poll", 1.0 + DROP, (), (), True), ("poll", 2.0 + DROP, (A_AGAIN,), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),
          ("deposit.reverted", "btc:aa:vout:0", 0, "dropped"),
          ("deposit.seen", "btc:aa:vout:0", 1, None)), left=1),
    Case("one transaction paying three watched outputs: three deposits, one episode",
         (("poll", 0.0, (THREE,), (), True), ("block", (Spend(op("f2", 3), TxId("zz")),))),
         (("deposit.seen", "btc:cc:vout:0", 0, None), ("deposit.seen", "btc:cc:vout:1", 0, None),
          ("deposit.seen", "btc:cc:vout:2", 0, None),
          ("deposit.reverted", "btc:cc:vout:0", 0, "double_spent"),
          ("deposit.reverted", "btc:cc:vout:1", 0, "double_spent"),
          ("deposit.reverted", "btc:cc:vout:2", 0, "double_spent"))),
    Case("the replacement paying a watched address is then mined: no more events",
         (("poll", 0.0, (A,), (), True), ("poll", 5.0, (B_WATCHED,), (TxId("aa"),), True),
          ("block", (Spend(op("f0"), TxId("bb")),)), ("poll", 5.0 + DROP, (), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),
          ("deposit.reverted", "btc:aa:vout:0", 0, "replaced"),
          ("deposit.seen", "btc:bb:vout:0", 1, None))),
    Case("reported twice in one poll and again later: seen once",
         (("poll", 0.0, (A, A), (), True), ("poll", 1.0, (A,), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),), left=1),
    Case("a transaction paying nobody watched leaves no state",
         (("poll", 0.0, (B_UNWATCHED,), (), True), ("block", (Spend(op("f0"), TxId("zz")),))),
         ()),
    Case("a child spending the seen one's output is no conflict",
         (("poll", 0.0, (A, utx("ch", [], [op("aa", 0)])), (), True),),
         (("deposit.seen", "btc:aa:vout:0", 0, None),), left=1),
    Case("unknown gone txids and blocks of strangers change nothing",
         (("poll", 0.0, (A,), (TxId("nope"),), True),
          ("block", (Spend(op("f9"), TxId("x1")), Spend(op("aa", 0), TxId("x2")))),
          ("poll", DROP * 9, (), (), True)),
         (("deposit.seen", "btc:aa:vout:0", 0, None),), left=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_transitions(case: Case) -> None:
    tr = MempoolTracker(BTC, required, DROP)
    assert tuple(run(tr, case.steps)) == case.expect
    assert len(tr) == case.left


def test_outpoints_are_those_of_tracked_transactions_only() -> None:
    tr = MempoolTracker(BTC, required, DROP)
    tr.observe(MempoolChange((A, THREE, B_UNWATCHED)), 0.0, no_label, caught_up=True)
    # B_UNWATCHED replaced A (same input f0) and pays nobody watched: nothing of either is kept.
    assert tr.outpoints() == {op("f1"), op("f2", 3)}


def test_seen_carries_required_confirmations_label_and_rbf() -> None:
    tr = MempoolTracker(BTC, required, DROP)
    evs = tr.observe(MempoolChange((THREE, B_WATCHED)), 0.0, lambda t: f"cust-{t.amount}",
                     caught_up=True)
    assert [(e.deposit.required, e.deposit.label, e.rbf) for e in evs] == [
        (1, "cust-1", True), (1, "cust-2", True), (3, "cust-300000", True), (1, "cust-49000", False)]


@pytest.mark.parametrize(("tx", "match"), [
    (lambda: utx("aa", [(W1, 1)], []), "'spends' is empty"),
    (lambda: utx("aa", [(W1, 1)], [op("f0"), op("f0")]), "twice"),
    (lambda: UnconfirmedTx(TxId("aa"), (Transfer(TxId("bb"), "vout:0", AssetSymbol("BTC"), None,
                                                 W1, None, 1, 8),), (op("f0"),), False),
     "transfer 'txid' is bb"),
])
def test_malformed_unconfirmed_transactions_are_refused(tx: object, match: str) -> None:
    assert callable(tx)
    with pytest.raises(ValueError, match=match):
        tx()


def test_event_ids_are_keyed_by_episode() -> None:
    tr = MempoolTracker(BTC, required, DROP)
    (again,) = [c for c in CASES if c.name == "seen, dropped, seen again: a new episode"]
    got = run(tr, again.steps)
    assert len(got) == 3
    evs: list[UnconfirmedEvent] = []
    tr2 = MempoolTracker(BTC, required, DROP)
    for s in again.steps:
        _, now, added, gone, _ = s
        assert isinstance(now, float) and isinstance(added, tuple) and isinstance(gone, tuple)
        evs.extend(tr2.observe(MempoolChange(added, gone), now, no_label, caught_up=True))
    ids = [unconfirmed_event_body(BTC, e, 0)["event_id"] for e in evs]
    # Golden: blake2b-128 of "<type>|<deposit_id>|mempool:<episode>".
    assert ids == ["07c387cd7ab7f41a2804df7932a702fc", "e369355b16001ebed8ef4db274ea75d8",
                   ids[2]]
    assert ids[2] not in ids[:2]


# ---------------------------------------------------------------- inside the chain state

def _hash(n: int, tag: str) -> BlockHash:
    return BlockHash(f"{n:02d}{tag}".ljust(8, "0"))


def ref(n: int, tag: str = "") -> BlockRef:
    """Block n of branch ``tag``; every branch forks off block 10."""
    return BlockRef(n, _hash(n, tag), _hash(n - 1, tag if n > 11 else ""), 1_700_000_000 + n)


def _block(n: int, txs: Sequence[UnconfirmedTx], tag: str = "") -> BlockContents:
    return BlockContents(ref(n, tag), tuple(t for tx in txs for t in tx.transfers),
                         tuple(Spend(o, tx.txid) for tx in txs for o in tx.spends))


def _state() -> ChainState:
    st = ChainState(BTC, 8, required, mempool_drop_after_s=DROP)
    st.apply(Extend((ref(10),)), [BlockContents(ref(10), ())], no_label)
    return st


def test_seen_mined_reorged_seen_again() -> None:
    st = _state()
    obs = st.observe_mempool(MempoolChange((A,), tip=ref(10).hash), 0.0, no_label)
    assert [_short(e) for e in obs.events] == [("deposit.seen", "btc:aa:vout:0", 0, None)]
    applied = st.apply(Extend((ref(11),)), [_block(11, [A])], no_label)
    assert applied.unconfirmed == () and applied.mined == 1 and len(st.mempool) == 0
    assert [(e.type, e.confirmations) for e in applied.events] == [(DepositEventType.PENDING, 1)]
    # A stale poll still naming the mined transaction does not see it again.
    stale = st.observe_mempool(MempoolChange((A,), tip=ref(10).hash), 1.0, no_label)
    assert stale.events == ()
    # Reorg: block 11 replaced by an empty 11' and 12'; the block path reverts with "reorg".
    branch = (ref(11, "b"), ref(12, "b"))
    rewind = st.window.decide(branch)
    assert isinstance(rewind, Rewind) and rewind.removed == (ref(11),)
    applied = st.apply(rewind, [BlockContents(r, ()) for r in branch], no_label)
    body = deposit_event_body(BTC, applied.events[0], 0)
    assert (body["type"], body["reason"], body["previous_type"]) == (
        "deposit.reverted", "reorg", "deposit.pending")
    # Back in the node's mempool: a new fact, a new episode.
    again = st.observe_mempool(MempoolChange((A,), tip=ref(12, "b").hash), 2.0, no_label)
    assert [_short(e) for e in again.events] == [("deposit.seen", "btc:aa:vout:0", 1, None)]
    first = unconfirmed_event_body(BTC, obs.events[0], 0)["event_id"]
    assert unconfirmed_event_body(BTC, again.events[0], 0)["event_id"] != first


def test_mined_without_spends_is_still_mined_never_dropped() -> None:
    # A block whose inputs were not listed: its transfer to the watched address says mined.
    st = _state()
    st.observe_mempool(MempoolChange((A,), tip=ref(10).hash), 0.0, no_label)
    applied = st.apply(Extend((ref(11),)), [BlockContents(ref(11), A.transfers)], no_label)
    assert applied.mined == 1 and len(st.mempool) == 0 and applied.unconfirmed == ()


def test_block_double_spend_through_chain_state() -> None:
    st = _state()
    st.observe_mempool(MempoolChange((A,), tip=ref(10).hash), 0.0, no_label)
    thief = utx("ee", [], [op("f0")])
    applied = st.apply(Extend((ref(11),)), [_block(11, [thief])], no_label)
    assert [_short(e) for e in applied.unconfirmed] == [
        ("deposit.reverted", "btc:aa:vout:0", 0, "double_spent")]
    body = unconfirmed_event_body(BTC, applied.unconfirmed[0], 0)
    assert (body["block_number"], body["block_hash"], body["previous_type"], body["rbf"]) == (
        None, None, "deposit.seen", True)


def test_drops_wait_for_the_block_path_to_reach_the_polls_tip() -> None:
    st = _state()
    st.observe_mempool(MempoolChange((A,), tip=ref(10).hash), 0.0, no_label)
    st.observe_mempool(MempoolChange(gone=(TxId("aa"),), tip=ref(10).hash), 1.0, no_label)
    # The node is at 11, which we have not processed: "gone" may mean "mined in 11".
    assert st.observe_mempool(MempoolChange(tip=ref(11).hash), 1.0 + DROP, no_label).events == ()
    # A full listing also marks a tracked transaction gone; the drop then waits for the timer.
    st2 = _state()
    st2.observe_mempool(MempoolChange((A,), tip=ref(10).hash), 0.0, no_label)
    full = MempoolChange(tip=ref(10).hash, present=frozenset({TxId("zz")}))
    assert st2.observe_mempool(full, 5.0, no_label).events == ()
    evs = st2.observe_mempool(MempoolChange(tip=ref(10).hash), 5.0 + DROP, no_label).events
    assert [_short(e) for e in evs] == [("deposit.reverted", "btc:aa:vout:0", 0, "dropped")]


def test_crash_and_restore_midway_gives_the_same_events_and_ids() -> None:
    polls = [MempoolChange((A, THREE), tip=ref(10).hash),
             MempoolChange((B_WATCHED,), (TxId("aa"),), tip=ref(10).hash),
             MempoolChange(gone=(TxId("cc"),), tip=ref(10).hash),
             MempoolChange(tip=ref(10).hash),
             MempoolChange((A,), tip=ref(10).hash)]
    times = [0.0, 3.0, 4.0, 4.0 + DROP, 5.0 + DROP]

    def ids(evs: Sequence[UnconfirmedEvent]) -> list[str]:
        return [str(unconfirmed_event_body(BTC, e, 0)["event_id"]) for e in evs]

    straight = _state()
    expected = [ids(straight.observe_mempool(p, t, no_label).events)
                for p, t in zip(polls, times, strict=True)]
    for crash_after in range(len(polls)):
        st = _state()
        committed = st.snapshot()
        got = []
        for i, (p, t) in enumerate(zip(polls, times, strict=True)):
            obs = st.observe_mempool(p, t, no_label)
            got.append(ids(obs.events))
            if obs.snapshot is not None:
                committed = obs.snapshot
            if i == crash_after:
                st = ChainState.restore(committed, BTC, 8, required, mempool_drop_after_s=DROP)
        assert got == expected
    # A seen (episode 0) and THREE's 3 outputs (1); B replaces A (2); THREE dropped; A comes
    # back spending f0 again and replaces B (3).
    assert [len(x) for x in expected] == [4, 2, 0, 3, 2]


def test_a_poll_that_changes_nothing_has_nothing_to_checkpoint() -> None:
    st = _state()
    tip = ref(10).hash
    assert st.observe_mempool(MempoolChange((B_UNWATCHED,), tip=tip), 0.0, no_label).snapshot is None
    assert st.observe_mempool(MempoolChange((A,), tip=tip), 1.0, no_label).snapshot is not None
    assert st.observe_mempool(MempoolChange((A,), tip=tip), 2.0, no_label).snapshot is None
    # Only a timer starting is still a change to checkpoint: a restart must keep it.
    gone = st.observe_mempool(MempoolChange(gone=(TxId("aa"),), tip=tip), 3.0, no_label)
    assert gone.events == () and gone.snapshot is not None
    assert ChainState.restore(gone.snapshot, BTC, 8, required).mempool.txs()[0].gone_since == 3.0


# ---------------------------------------------------------------- snapshots

OLD_V1 = (b'{"version":1,"chain":"btc","finalized":null,"window":[[10,"10000000","09000000",1700000010]],'
          b'"deposits":[]}')
MEMPOOL_V1 = (
    b'{"version":1,"chain":"btc","finalized":null,"window":[[10,"10000000","09000000",1700000010]],'
    b'"deposits":[],"mempool":{"next_episode":2,"txs":[{"txid":"bb","episode":1,"rbf":false,'
    b'"gone_since":12.5,"spends":[["f0",0]],"deposits":[{"id":"btc:bb:vout:0","required":1,'
    b'"label":"cust-7","t":["bb","vout:0","BTC",null,"bcrt1qwatched2",null,"49000",8]}]}]}}')


def test_old_version_1_snapshot_restores_with_an_empty_mempool() -> None:
    st = ChainState.restore(OLD_V1, BTC, 8, required)
    assert st.tip == ref(10) and len(st.mempool) == 0 and st.mempool.next_episode == 0
    assert st.snapshot() == OLD_V1


def test_mempool_snapshot_round_trip_is_golden() -> None:
    st = ChainState.restore(MEMPOOL_V1, BTC, 8, required, mempool_drop_after_s=DROP)
    assert st.snapshot() == MEMPOOL_V1
    (tx,) = st.mempool.txs()
    assert (tx.txid, tx.episode, tx.rbf, tx.gone_since, tx.spends) == (
        "bb", 1, False, 12.5, (op("f0"),))
    assert tx.deposits[0].transfer.amount == 49_000 and tx.deposits[0].label == "cust-7"
    # The index is rebuilt: a block spending f0 elsewhere double-spends it.
    evs, _ = st.mempool.connect((Spend(op("f0"), TxId("xx")),))
    assert [_short(e) for e in evs] == [("deposit.reverted", "btc:bb:vout:0", 1, "double_spent")]
    # The timer survives: dropped exactly DROP after 12.5.
    st2 = ChainState.restore(MEMPOOL_V1, BTC, 8, required, mempool_drop_after_s=DROP)
    tip = ref(10).hash
    assert st2.observe_mempool(MempoolChange(tip=tip), 12.5 + DROP - 0.5, no_label).events == ()
    assert len(st2.observe_mempool(MempoolChange(tip=tip), 12.5 + DROP, no_label).events) == 1
    # A new seen after restore draws episode 2, not a reused number.
    obs = st2.observe_mempool(MempoolChange((A,), tip=tip), 13.0 + DROP, no_label)
    assert [e.episode for e in obs.events] == [2]


@pytest.mark.parametrize(("patch", "match"), [
    ({"next_episode": -1}, "next_episode"),
    ({"next_episode": 1}, "not below next_episode"),
    ({"txs": [{"txid": "bb"}]}, "unreadable"),
])
def test_bad_mempool_snapshots_are_refused(patch: dict[str, object], match: str) -> None:
    raw = orjson.loads(MEMPOOL_V1)
    raw["mempool"].update(patch)
    with pytest.raises(SnapshotError, match=match):
        ChainState.restore(orjson.dumps(raw), BTC, 8, required)


def test_replaced_reason_survives_into_the_record() -> None:
    tr = MempoolTracker(BTC, required, DROP)
    tr.observe(MempoolChange((A,)), 0.0, no_label, caught_up=True)
    (ev,) = tr.observe(MempoolChange((B_UNWATCHED,)), 1.0, no_label, caught_up=True)
    body = unconfirmed_event_body(BTC, ev, 1.0)
    assert (body["type"], body["reason"], body["previous_type"], body["confirmations"]) == (
        "deposit.reverted", "replaced", "deposit.seen", 0)
    assert ev.reason is RevertReason.REPLACED
