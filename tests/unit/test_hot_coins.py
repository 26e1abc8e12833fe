"""watcher.core.coins: the hot wallet's coins from scanned blocks, rules, reorg undo, snapshot.
Also the one table that turns a node's send refusal into a BroadcastOutcome."""

from __future__ import annotations

import pytest

from chains.bitcoin.errors import BitcoinRpcError, broadcast_outcome, rpc_error_from_object
from watcher.core.coins import COINBASE_MATURITY, CoinRules, HotCoins, HotOutput
from watcher.core.withdrawals import BroadcastOutcome
from watcher.errors import ChainError, ErrorKind
from watcher.types import BlockHash


def op(label: str, vout: int = 0) -> str:
    return f"{label * 64}"[:64] + f":{vout}"


def bh(n: int, fork: str = "a") -> BlockHash:
    return BlockHash(f"{fork}{n:063x}")


A, B, C = op("a"), op("b"), op("c")


# (output at height 10, tip, rules, bound?) -> spendable?
@pytest.mark.parametrize(("output", "tip", "rules", "bound", "spendable"), [
    (HotOutput(A, 1000), 10, CoinRules(1, False), False, True),      # 1 confirmation of 1
    (HotOutput(A, 1000), 10, CoinRules(2, False), False, False),     # 1 of 2
    (HotOutput(A, 1000), 11, CoinRules(2, False), False, True),      # 2 of 2
    (HotOutput(A, 1000), 11, CoinRules(2, False), True, False),      # held by a binding
    (HotOutput(A, 1000, change=True), 10, CoinRules(6, True), False, True),   # own change: 1 conf
    (HotOutput(A, 1000, change=True), 10, CoinRules(6, False), False, False),  # flag off
    (HotOutput(A, 1000, change=False), 10, CoinRules(6, True), False, False),  # a deposit is not change
    (HotOutput(A, 1000, coinbase=True), 10 + COINBASE_MATURITY - 2, CoinRules(1, True), False, False),
    (HotOutput(A, 1000, coinbase=True), 10 + COINBASE_MATURITY - 1, CoinRules(1, True), False, True),
    # Dogecoin's 240: a coinbase at height 10 is spendable at tip 249 (240 confirmations).
    (HotOutput(A, 1000, coinbase=True), 248, CoinRules(1, True, 240), False, False),
    (HotOutput(A, 1000, coinbase=True), 249, CoinRules(1, True, 240), False, True),
    (HotOutput(A, 1000), 10, CoinRules(1, True, 240), False, True),  # only coinbases wait
])
def test_spendable_rules(output: HotOutput, tip: int, rules: CoinRules, bound: bool,
                         spendable: bool) -> None:
    coins = HotCoins()
    coins.block_added(10, bh(10), [output], [])
    got = coins.spendable(tip, rules, {output.outpoint} if bound else set())
    assert [u.outpoint for u in got] == ([output.outpoint] if spendable else [])


def test_blocks_add_spend_and_undo_exactly() -> None:
    coins = HotCoins()
    coins.block_added(10, bh(10), [HotOutput(A, 1000), HotOutput(B, 2000)], [])
    # Block 11 spends A and creates C; C is spent again in the same block 12 that pays back D.
    coins.block_added(11, bh(11), [HotOutput(C, 900, change=True)], [A, op("f")])
    coins.block_added(12, bh(12), [HotOutput(op("d"), 500, change=True)], [C])
    assert coins.outpoints() == {B, op("d")} and coins.balance() == 2500
    coins.blocks_removed([bh(12), bh(11)])  # any order given: undone newest first
    assert coins.outpoints() == {A, B} and coins.balance() == 3000
    coins.block_added(11, bh(11, "b"), [], [B])
    assert coins.outpoints() == {A}


def test_a_coin_created_and_spent_in_one_block_leaves_nothing() -> None:
    coins = HotCoins()
    coins.block_added(10, bh(10), [HotOutput(A, 1000)], [A])
    assert coins.outpoints() == frozenset()
    coins.blocks_removed([bh(10)])
    assert coins.outpoints() == frozenset()


def test_a_block_applied_twice_changes_nothing_the_second_time() -> None:
    coins = HotCoins()
    coins.block_added(10, bh(10), [HotOutput(A, 1000)], [])
    coins.block_added(11, bh(11), [], [A])
    coins.block_added(11, bh(11), [], [A])
    coins.blocks_removed([bh(11)])
    assert coins.outpoints() == {A}


def test_prune_forgets_undo_below_the_window_and_snapshot_round_trips() -> None:
    coins = HotCoins()
    for n in range(10, 15):
        coins.block_added(n, bh(n), [HotOutput(op(str(n)), n * 100, change=n % 2 == 0)], [])
    coins.prune(13)
    coins.blocks_removed([bh(11)])  # pruned: no reorg reaches it, nothing undone
    assert len(coins.outpoints()) == 5
    again = HotCoins.restore(coins.snapshot())
    assert again.snapshot() == coins.snapshot()
    again.blocks_removed([bh(14), bh(13)])
    assert again.outpoints() == {op(str(n)) for n in range(10, 13)}
    assert again.spendable(20, CoinRules(1, True), set())[0].value in {1000, 1100, 1200}


@pytest.mark.parametrize(("raw", "message"), [
    ({"version": 2, "coins": [], "undo": []}, "version 2"),
    ({"version": 1, "coins": [["nope", "1", False, False, 3]], "undo": []}, "hot output"),
    ({"version": 1, "coins": [[A, "-5", False, False, 3]], "undo": []}, "hot output"),
    ({"version": 1, "undo": []}, "unreadable"),
])
def test_unreadable_snapshots_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HotCoins.restore(raw)


@pytest.mark.parametrize(("code", "message", "outcome"), [
    (-26, "txn-already-in-mempool", BroadcastOutcome.ALREADY_KNOWN),                    # Core
    (-26, "already have transaction in mempool", BroadcastOutcome.ALREADY_KNOWN),       # btcd
    (-27, "Transaction outputs already in utxo set", BroadcastOutcome.ALREADY_KNOWN),   # Core
    (-27, "transaction already exists in blockchain", BroadcastOutcome.ALREADY_KNOWN),  # btcd
    (-26, "insufficient fee, rejecting replacement 1ab2; new feerate 0.00001 <= old feerate "
          "0.00001", BroadcastOutcome.UNDERPRICED),                                      # Core
    (-26, "rejecting replacement 1ab2, less fees than conflicting txs",
     BroadcastOutcome.UNDERPRICED),                                                      # Core
    (-26, "min relay fee not met, 100 < 141", BroadcastOutcome.UNDERPRICED),            # Core
    (-26, "replacement transaction 1ab2 has an insufficient absolute fee: needs 423, has 282",
     BroadcastOutcome.UNDERPRICED),                                                      # btcd
    (-25, "bad-txns-inputs-missingorspent", BroadcastOutcome.CONSUMED),                 # Core
    (-25, "Missing inputs", BroadcastOutcome.CONSUMED),                                 # Core (old)
    (-25, "output 1ab2:0 already spent", BroadcastOutcome.CONSUMED),
    (-25, "orphan transaction 1ab2 references outputs of unknown or fully-spent transaction 3cd4",
     BroadcastOutcome.CONSUMED),                                                         # btcd
    # A conflict (a foreign spend: the block decides) or a policy refusal: what the book
    # does with a FINAL refusal (send the same bytes again later).
    (-26, "txn-mempool-conflict", BroadcastOutcome.of(ErrorKind.FINAL)),
    (-26, "dust", BroadcastOutcome.of(ErrorKind.FINAL)),
    (-32603, "internal error", BroadcastOutcome.RETRIABLE),
])
def test_send_refusals_become_outcomes(code: int, message: str, outcome: BroadcastOutcome) -> None:
    err = rpc_error_from_object({"code": code, "message": message}, "n")
    assert isinstance(err, BitcoinRpcError)
    assert broadcast_outcome(err) is outcome


def test_a_transport_failure_is_retriable() -> None:
    assert broadcast_outcome(ChainError(ErrorKind.RETRIABLE, "timeout", "n")) is BroadcastOutcome.RETRIABLE


def test_each_networks_coinbase_maturity() -> None:
    """Consensus values, from each chain's own source (Bitcoin Core consensus.h
    COINBASE_MATURITY 100, Litecoin the same, Dogecoin 1.14 digishieldConsensus 240)."""
    from chains.bitcoin.networks import NETWORKS

    assert {n: NETWORKS[n].coinbase_maturity for n in sorted(NETWORKS)} == {
        "bitcoin": 100, "dogecoin": 240, "dogecoin_testnet": 240, "litecoin": 100,
        "litecoin_regtest": 100, "litecoin_testnet": 100, "regtest": 100, "signet": 100,
        "testnet": 100, "testnet4": 100}
    with pytest.raises(ValueError, match="coinbase_maturity"):
        CoinRules(1, False, 0)
