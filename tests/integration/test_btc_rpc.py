"""The Bitcoin RPC client against a real btcd v0.26 (regtest): every method, every refusal.

Transactions are built and signed by ``tests/support/btc_wallet.py`` from the mining key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from chains.bitcoin.errors import BitcoinRpcError, Reason
from chains.bitcoin.rpc import BitcoinRpcClient, Dialect
from tests.support.btc_wallet import Coin, RegtestWallet, regtest_payee
from tests.support.services import BtcdService
from watcher.config import Endpoint
from watcher.errors import ChainError, ChainIdentityMismatch, ErrorKind
from watcher.types import BlockHash, TxId

pytestmark = pytest.mark.integration

REGTEST_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"


def header_hash(raw: bytes) -> str:
    return hashlib.sha256(hashlib.sha256(raw[:80]).digest()).digest()[::-1].hex()


def make_client(btcd: BtcdService, network: str = "regtest",
                password: str | None = None) -> BitcoinRpcClient:
    endpoint = Endpoint("btcd", btcd.rpc_url, btcd.rpc_user,
                        btcd.rpc_password if password is None else password)
    return BitcoinRpcClient("btc", endpoint, network, timeout_s=30.0)


@pytest.fixture
async def client(btcd: BtcdService) -> AsyncIterator[BitcoinRpcClient]:
    c = make_client(btcd)
    await c.identify()
    yield c
    await c.close()


async def test_identify_and_dialect(client: BitcoinRpcClient, btcd: BtcdService) -> None:
    assert client.dialect is Dialect.BTCD
    assert btcd.rpc("getblockhash", 0) == REGTEST_GENESIS


@pytest.mark.parametrize("network", ["bitcoin", "testnet", "signet", "litecoin"])
async def test_another_network_is_refused(btcd: BtcdService, network: str) -> None:
    c = make_client(btcd, network)
    try:
        with pytest.raises(ChainIdentityMismatch, match=REGTEST_GENESIS):
            await c.identify()
        assert c.dialect is None
    finally:
        await c.close()


async def test_wrong_password_is_retriable_without_the_secret(btcd: BtcdService) -> None:
    c = make_client(btcd, password="not-the-Password-7")
    try:
        with pytest.raises(ChainError) as err:
            await c.head()
        assert err.value.kind is ErrorKind.RETRIABLE and "401" in str(err.value)
        assert "not-the-Password-7" not in str(err.value) and btcd.rpc_url not in str(err.value)
    finally:
        await c.close()


async def test_head_and_hashes_by_height(client: BitcoinRpcClient, btcd: BtcdService) -> None:
    head = await client.head()
    assert head.number == btcd.rpc("getblockcount") == await client.block_count()
    assert head.hash == btcd.rpc("getbestblockhash") == await client.best_block_hash()
    hashes = await client.block_hashes(head.number - 1, 5)  # past the tip: ends early
    assert hashes == [btcd.rpc("getblockhash", head.number - 1), head.hash]
    assert await client.block_hashes(head.number + 1, 3) == []
    assert (await client.block_hashes(0, 1)) == [REGTEST_GENESIS]


async def test_headers_and_blocks_raw_and_off_the_main_chain(client: BitcoinRpcClient,
                                                             btcd: BtcdService) -> None:
    (mined,) = btcd.rpc("generate", 1)
    parent = btcd.rpc("getblockhash", btcd.rpc("getblockcount") - 1)
    info = await client.main_chain_header(BlockHash(mined))
    assert info is not None and info.hash == mined and info.previous_hash == parent
    (raw,) = await client.raw_headers([BlockHash(mined)])
    assert raw is not None and header_hash(raw) == mined
    assert raw[4:36][::-1].hex() == parent and raw[36:68][::-1].hex() == info.merkle_root
    block = await client.raw_block(BlockHash(mined))
    assert block is not None and block[:80] == raw

    btcd.rpc("invalidateblock", mined)
    try:
        # btcd: "block ... is not in the main chain" for the verbose header: None here.
        assert await client.main_chain_header(BlockHash(mined)) is None
        # Raw header and raw block are still served for the side-chain block.
        assert await client.raw_headers([BlockHash(mined)]) == [raw]
        assert await client.raw_block(BlockHash(mined)) == block
    finally:
        btcd.rpc("reconsiderblock", mined)
    assert btcd.rpc("getbestblockhash") == mined

    unknown = BlockHash("ab" * 32)
    assert await client.main_chain_header(unknown) is None
    assert await client.raw_headers([unknown]) == [None]
    assert await client.raw_block(unknown) is None


async def test_send_mempool_and_raw_transactions(client: BitcoinRpcClient,
                                                 btc_wallet: RegtestWallet,
                                                 btcd: BtcdService) -> None:
    payees = [regtest_payee(k, "rpc") for k in ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr")]
    tx = btc_wallet.build([(p.script, 10_000 + i) for i, p in enumerate(payees)], rbf=True)
    txid = await client.send_raw_transaction(tx.serialize())
    assert txid == tx.txid
    btc_wallet.send_known(tx)
    assert txid in await client.mempool_txids()
    assert await client.raw_transaction(txid) == tx.serialize()
    assert await client.raw_transactions([TxId("cd" * 32), txid]) == [None, tx.serialize()]

    refusals: list[tuple[bytes, Reason, ErrorKind]] = []
    refusals.append((tx.serialize(), Reason.ALREADY_IN_MEMPOOL, ErrorKind.ALREADY_KNOWN))
    coin = tx.inputs[0][0]
    same_fee = btc_wallet.build([(payees[0].script, 5_000)], coin=coin, fee=2_000, rbf=True)
    refusals.append((same_fee.serialize(), Reason.FEE_TOO_LOW, ErrorKind.UNDERPRICED))
    missing = btc_wallet.build([(payees[0].script, 5_000)], coin=Coin("ef" * 32, 0, 10**8))
    refusals.append((missing.serialize(), Reason.INPUTS_SPENT, ErrorKind.FINAL))
    cheap = btc_wallet.build([(payees[0].script, 5_000)], fee=10)
    refusals.append((cheap.serialize(), Reason.FEE_TOO_LOW, ErrorKind.UNDERPRICED))
    refusals.append((b"\x00", Reason.BAD_REQUEST, ErrorKind.FINAL))
    for raw, reason, kind in refusals:
        with pytest.raises(BitcoinRpcError) as err:
            await client.send_raw_transaction(raw)
        assert (err.value.reason, err.value.kind) == (reason, kind), err.value.rpc_message
        assert err.value.endpoint == "btcd"

    # A replacement paying more is accepted (BIP125) and the original leaves the mempool.
    bumped = btc_wallet.build([(payees[0].script, 5_000)], coin=coin, fee=60_000, rbf=True)
    assert await client.send_raw_transaction(bumped.serialize()) == bumped.txid
    btc_wallet.send_known(bumped, replaces=tx)
    pool = await client.mempool_txids()
    assert bumped.txid in pool and txid not in pool

    btcd.rpc("generate", 1)
    assert bumped.txid not in await client.mempool_txids()  # mined

    # A transaction not signalling RBF (nor inheriting it from an unconfirmed parent)
    # cannot be replaced: a conflict.
    final = btc_wallet.build([(payees[1].script, 5_000)], rbf=False)
    btc_wallet.send(final)
    rival = btc_wallet.build([(payees[2].script, 5_000)], coin=final.inputs[0][0], fee=90_000)
    with pytest.raises(BitcoinRpcError) as err:
        await client.send_raw_transaction(rival.serialize())
    assert (err.value.reason, err.value.kind) == (Reason.CONFLICT, ErrorKind.FINAL)

    btcd.rpc("generate", 1)
    with pytest.raises(BitcoinRpcError) as err:
        await client.send_raw_transaction(final.serialize())
    assert (err.value.reason, err.value.kind) == (Reason.ALREADY_IN_CHAIN,
                                                  ErrorKind.ALREADY_KNOWN)
    with pytest.raises(BitcoinRpcError) as err:
        await client.send_raw_transaction(rival.serialize())
    assert (err.value.reason, err.value.kind) == (Reason.INPUTS_SPENT, ErrorKind.FINAL)


async def test_fee_estimate_is_btcds_estimatefee_in_sat_per_kvb(client: BitcoinRpcClient,
                                                                 btcd: BtcdService) -> None:
    # btcd's estimatefee answers BTC/kB, and -1 or 0 until it has seen blocks with fees.
    raw = btcd.rpc("estimatefee", 6)
    got = await client.estimate_fee_rate(6)
    if raw <= 0:
        assert got is None
    else:
        assert got == math.ceil(Decimal(str(raw)) * 100_000_000) and got > 0
