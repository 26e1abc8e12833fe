"""Facts pinned as literals: event ids and the checkpoint format.

The expected values below were computed once, outside the code under test
(``hashlib.blake2b(f"{type}|{deposit_id}|{block_hash}".encode(), digest_size=16)``
in a one-off Python shell, and the checkpoint JSON written by hand). A change of
the id derivation or of the checkpoint layout breaks these tests: consumers dedup
on ``event_id`` and a restart reads checkpoints written by the previous version.
"""

from __future__ import annotations

import pytest

from watcher.core.chainstate import ChainState
from watcher.core.window import Extend
from watcher.events import event_id
from watcher.types import (
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainId,
    DepositEventType,
    DepositId,
)

TX1 = "0x" + "11" * 32
TX2 = "0x" + "22" * 32
H = {n: "0x" + f"b{n - 100}" * 32 for n in range(100, 104)}
H99 = "0x" + "af" * 32


@pytest.mark.parametrize(("type_", "did", "block_hash", "expected"), [
    (DepositEventType.PENDING, f"eth:{TX1}:tx", H[101], "b8f373b9ffdf093a8d05d230815b971c"),
    (DepositEventType.CONFIRMED, f"eth:{TX1}:tx", H[101], "b88e07c11bcf584f7515da3be22b515b"),
    (DepositEventType.REVERTED, f"eth:{TX1}:tx", H[101], "6d1985afd565747e8bf1e19f76280b87"),
    (DepositEventType.CONFIRMED, f"eth:{TX2}:log:7", H[100], "ee23967e02c554af4d8ef64c94cf0e8a"),
    (DepositEventType.PENDING, "btc:" + "ab" * 32 + ":vout:1", "00" * 32,
     "224f7c58fddecf80fe67e686793c2ee9"),
])
def test_event_id_golden(type_: DepositEventType, did: str, block_hash: str,
                         expected: str) -> None:
    assert event_id(type_, DepositId(did), BlockHash(block_hash)) == expected


CHECKPOINT = (
    '{"version":1,"chain":"eth","finalized":90,'
    f'"window":[[100,"{H[100]}","{H99}",1700000000],[101,"{H[101]}","{H[100]}",1700000012],'
    f'[102,"{H[102]}","{H[101]}",1700000024]],'
    '"deposits":['
    f'{{"id":"eth:{TX2}:log:7","block":[100,"{H[100]}","{H99}",1700000000],"required":1,'
    '"label":null,"announced":"deposit.confirmed",'
    f'"t":["{TX2}","log:7","USDC","0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",'
    '"0x52908400098527886E0F7030069857D2E4169EE7",null,"250000000",6]},'
    f'{{"id":"eth:{TX1}:tx","block":[101,"{H[101]}","{H[100]}",1700000012],"required":3,'
    '"label":"customer-42","announced":"deposit.pending",'
    f'"t":["{TX1}","tx","ETH",null,"0x52908400098527886E0F7030069857D2E4169EE7",'
    '"0x8617E340B3D01FA5F11F306F4090FD50E238070D","1500000000000000000",18]}'
    ']}'
).encode()


def required(asset: AssetSymbol, amount: int) -> int:
    return {"ETH": 3, "USDC": 1}[asset]


def test_checkpoint_golden_restore_and_round_trip() -> None:
    state = ChainState.restore(CHECKPOINT, ChainId("eth"), 32, required)
    assert [(b.number, b.hash) for b in state.window.blocks()] == [
        (100, H[100]), (101, H[101]), (102, H[102])]
    assert state.window.finalized_number == 90
    deposits = {d.deposit_id: d for d in state.tracker.deposits()}
    eth = deposits[DepositId(f"eth:{TX1}:tx")]
    assert (eth.block.number, eth.required, eth.label, eth.announced) == (
        101, 3, "customer-42", DepositEventType.PENDING)
    assert (eth.transfer.amount, eth.transfer.decimals, eth.transfer.from_address) == (
        1_500_000_000_000_000_000, 18, "0x8617E340B3D01FA5F11F306F4090FD50E238070D")
    usdc = deposits[DepositId(f"eth:{TX2}:log:7")]
    assert (usdc.transfer.amount, usdc.transfer.token_contract, usdc.announced) == (
        250_000_000, "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", DepositEventType.CONFIRMED)
    assert state.snapshot() == CHECKPOINT, "byte for byte the format a restart reads"


def test_restored_state_goes_on_and_keeps_its_finalized_height() -> None:
    state = ChainState.restore(CHECKPOINT, ChainId("eth"), 32, required)
    ref = BlockRef(103, BlockHash(H[103]), BlockHash(H[102]), 1700000036)
    decision = state.window.decide([ref])
    assert decision == Extend((ref,))
    applied = state.apply(decision, [BlockContents(ref, ())], lambda t: None)
    # Block 101's ETH deposit reaches 3 confirmations at tip 103: confirmed, under the id a
    # consumer already dedups on; the USDC one was confirmed before the checkpoint: silent.
    assert [(e.type, e.confirmations, event_id(e.type, e.deposit.deposit_id,
                                                e.deposit.block.hash)) for e in applied.events] \
        == [(DepositEventType.CONFIRMED, 3, "b88e07c11bcf584f7515da3be22b515b")]
    again = ChainState.restore(state.snapshot(), ChainId("eth"), 32, required)
    assert again.window.finalized_number == 90, "the finalized height survives a restore"
    assert again.tip == ref
