"""Raw blocks from a real btcd (regtest): what ``getblock <hash> 0`` returns parses, with the
node's own hashes, txids and coinbase amounts, and the regtest genesis is the one in
:mod:`chains.bitcoin.networks`."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.block import parse_block, scan
from chains.bitcoin.networks import NETWORKS
from tests.support.services import BtcdService
from watcher.types import AssetSymbol

pytestmark = pytest.mark.integration


def raw_block(btcd: BtcdService, block_hash: str) -> Any:
    return btcd.rpc("getblock", block_hash, 0)


def test_btcd_regtest_genesis_is_ours(btcd: BtcdService) -> None:
    genesis = btcd.rpc("getblockhash", 0)
    assert genesis == NETWORKS["regtest"].genesis_hash
    block = parse_block(raw_block(btcd, genesis), genesis)
    assert block.header.prev_hash == "0" * 64
    assert block.txs.txid(0) == block.header.merkle_root


def test_btcd_blocks_parse_with_the_nodes_hashes_and_coinbase_amounts(btcd: BtcdService) -> None:
    codec = UtxoAddressCodec("regtest")
    _, miner_key = codec.parse(btcd.mining_address)
    best = btcd.rpc("getblockcount")
    for height in (1, best // 2, best):
        block_hash = btcd.rpc("getblockhash", height)
        block = parse_block(raw_block(btcd, block_hash), block_hash)
        verbose = btcd.rpc("getblock", block_hash, 1)
        assert block.header.prev_hash == verbose["previousblockhash"]
        assert block.header.time == verbose["time"]
        assert block.txs.txids() == verbose["tx"]
        result = scan(block.txs, {miner_key}, NETWORKS["regtest"], asset=AssetSymbol("BTC"))
        coinbase = btcd.rpc("getrawtransaction", verbose["tx"][0], 1)
        paid = [(f"vout:{o['n']}", int(Decimal(str(o["value"])) * 100_000_000))
                for o in coinbase["vout"] if Decimal(str(o["value"])) > 0]
        assert [(t.locator, t.amount) for t in result.transfers] == paid
        assert all(t.to_address == btcd.mining_address for t in result.transfers)
