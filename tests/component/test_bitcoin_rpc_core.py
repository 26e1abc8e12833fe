"""The Bitcoin RPC client against recorded Bitcoin Core answers (the production dialect).

The answers are Core's (see ``tests/fixtures/bitcoin/core-v27.json``), served over HTTP by
a local server that behaves as Core's legacy JSON-RPC server: HTTP 500 / 404 with a JSON
error body, basic auth, batches. Golden values are the real mainnet genesis and block 1.
"""

from __future__ import annotations

import hashlib

import pytest

from chains.bitcoin.errors import BitcoinRpcError, Reason
from chains.bitcoin.rpc import BitcoinRpcClient, Dialect, HeaderInfo
from tests.support.fake_core import FakeCore, serve_core
from watcher.config import Endpoint
from watcher.errors import ChainError, ChainIdentityMismatch, ErrorKind, NodeAnswerInvalid
from watcher.types import BlockHash, ChainHead, TxId

GENESIS = BlockHash("000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f")
BLOCK1 = BlockHash("00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048")
BLOCK2 = BlockHash("000000006a625f06636b8bb6ac7b960a8d03705d1ace08b1a19da3fdcc99ddbd")
BLOCK1_COINBASE = TxId("0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098")
STALE = BlockHash("00000000000000000000" + "b0" * 22)
UNKNOWN = "aa" * 32
PASSWORD = "rpc-secret-Q"


def client(core: FakeCore, *, network: str = "bitcoin", password: str = PASSWORD,
           timeout_s: float = 5.0) -> BitcoinRpcClient:
    return BitcoinRpcClient("btc", Endpoint("core-0", core.url, "rpcuser", password), network,
                            timeout_s=timeout_s)


def block_hash_of(raw: bytes) -> str:
    return hashlib.sha256(hashlib.sha256(raw[:80]).digest()).digest()[::-1].hex()


def assert_no_secret(exc: BaseException, core: FakeCore) -> None:
    text = str(exc)
    assert PASSWORD not in text and core.url not in text and "127.0.0.1" not in text
    assert "core-0" in text


async def test_identify_checks_the_genesis_hash_and_learns_the_dialect() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            assert c.dialect is None
            await c.identify()
            assert c.dialect is Dialect.CORE
            assert c.name == "core-0"
            # JSON-RPC 1.0 envelopes, what every Core version accepts.
            assert core.requests[0] == {"jsonrpc": "1.0", "id": 1, "method": "getblockhash",
                                        "params": [0]}
        finally:
            await c.close()


@pytest.mark.parametrize("network", ["testnet", "regtest", "litecoin", "dogecoin"])
async def test_a_node_of_another_network_is_never_followed(network: str) -> None:
    async with serve_core() as core:
        c = client(core, network=network)
        try:
            with pytest.raises(ChainIdentityMismatch) as err:
                await c.identify()
            assert GENESIS in str(err.value) and network in str(err.value)
            assert_no_secret(err.value, core)
        finally:
            await c.close()


async def test_head_reads_height_and_hash_together() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            assert await c.head() == ChainHead(number=2, hash=BLOCK2)
            assert await c.best_block_hash() == BLOCK2
            assert await c.block_count() == 2
        finally:
            await c.close()


async def test_block_hashes_end_at_the_tip_on_cores_out_of_range() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            assert await c.block_hashes(0, 10) == [GENESIS, BLOCK1, BLOCK2]
            assert await c.block_hashes(1, 1) == [BLOCK1]
            assert await c.block_hashes(3, 5) == []
            assert isinstance(core.requests[0], list) and len(core.requests[0]) == 10
        finally:
            await c.close()


async def test_headers_raw_and_verbose() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            raws = await c.raw_headers([GENESIS, BLOCK1, BlockHash(UNKNOWN)])
            assert raws[2] is None
            assert [block_hash_of(r) for r in raws[:2] if r is not None] == [GENESIS, BLOCK1]
            assert await c.main_chain_header(BLOCK1) == HeaderInfo(
                hash=BLOCK1, height=1, previous_hash=GENESIS,
                merkle_root=BLOCK1_COINBASE, time=1231469665)
            genesis = await c.main_chain_header(GENESIS)
            assert genesis is not None and genesis.previous_hash is None and genesis.height == 0
            # Core's stale header (confirmations -1) and an unknown one: not on the main chain.
            assert await c.main_chain_header(STALE) is None
            assert await c.main_chain_header(BlockHash(UNKNOWN)) is None
        finally:
            await c.close()


async def test_raw_blocks_and_transactions() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            genesis = await c.raw_block(GENESIS)
            assert genesis is not None and len(genesis) == 285
            assert block_hash_of(genesis) == GENESIS
            assert await c.raw_block(BlockHash(UNKNOWN)) is None
            tx = await c.raw_transaction(BLOCK1_COINBASE)
            assert tx is not None
            assert hashlib.sha256(hashlib.sha256(tx).digest()).digest()[::-1].hex() == \
                BLOCK1_COINBASE
            assert await c.raw_transactions([TxId(UNKNOWN), BLOCK1_COINBASE]) == [None, tx]
            assert await c.mempool_txids() == [BLOCK1_COINBASE, UNKNOWN]
            assert core.requests[0]["params"] == [GENESIS, 0]  # verbosity 0: raw hex
        finally:
            await c.close()


async def test_fee_estimates_in_integer_sat_per_kvb() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            await c.identify()
            assert await c.estimate_fee_rate(2) == 12_345  # 0.00012345 BTC/kvB
            assert await c.estimate_fee_rate(1008) is None  # {"errors": [...]}
        finally:
            await c.close()


@pytest.mark.parametrize(("raw_hex", "reason", "kind", "code"), [
    ("0101", Reason.CONFLICT, ErrorKind.FINAL, -26),
    ("0102", Reason.FEE_TOO_LOW, ErrorKind.UNDERPRICED, -26),
    ("0103", Reason.INPUTS_SPENT, ErrorKind.FINAL, -25),
    ("0104", Reason.ALREADY_IN_CHAIN, ErrorKind.ALREADY_KNOWN, -27),
    ("0105", Reason.FEE_TOO_LOW, ErrorKind.UNDERPRICED, -26),
    ("0106", Reason.FEE_TOO_LOW, ErrorKind.UNDERPRICED, -26),
    ("0107", Reason.BAD_REQUEST, ErrorKind.FINAL, -22),
    ("0108", Reason.REJECTED, ErrorKind.FINAL, -26),
])
async def test_send_refusals_are_classified(raw_hex: str, reason: Reason, kind: ErrorKind,
                                            code: int) -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            with pytest.raises(BitcoinRpcError) as err:
                await c.send_raw_transaction(bytes.fromhex(raw_hex))
            assert (err.value.reason, err.value.kind, err.value.code) == (reason, kind, code)
            assert err.value.endpoint == "core-0"
            assert_no_secret(err.value, core)
            assert await c.send_raw_transaction(bytes.fromhex("0100")) == "b" * 64
        finally:
            await c.close()


async def test_wrong_password_is_retriable_and_names_no_secret() -> None:
    async with serve_core() as core:
        c = client(core, password="wrong-" + PASSWORD)
        try:
            with pytest.raises(ChainError) as err:
                await c.head()
            assert err.value.kind is ErrorKind.RETRIABLE
            assert "401" in str(err.value)
            assert "wrong-" not in str(err.value)
            assert_no_secret(err.value, core)
        finally:
            await c.close()


async def test_work_queue_depth_exceeded_is_retriable() -> None:
    async with serve_core() as core:
        core.forced_status, core.forced_body = 503, b"Work queue depth exceeded"
        c = client(core)
        try:
            with pytest.raises(ChainError) as err:
                await c.block_hashes(0, 3)
            assert err.value.kind is ErrorKind.RETRIABLE and "503" in str(err.value)
        finally:
            await c.close()


async def test_warmup_is_retriable_and_identity_is_not_decided() -> None:
    async with serve_core() as core:
        core.warming_up = True
        c = client(core)
        try:
            with pytest.raises(BitcoinRpcError) as err:
                await c.identify()
            assert (err.value.reason, err.value.kind) == (Reason.WARMUP, ErrorKind.RETRIABLE)
            assert c.dialect is None
        finally:
            await c.close()


async def test_an_unreachable_node_is_retriable_without_its_address() -> None:
    c = BitcoinRpcClient("btc", Endpoint("core-0", "http://127.0.0.1:9", "u", PASSWORD),
                         "bitcoin", timeout_s=2.0)
    try:
        with pytest.raises(ChainError) as err:
            await c.head()
        assert err.value.kind is ErrorKind.RETRIABLE
        assert "127.0.0.1" not in str(err.value) and PASSWORD not in str(err.value)
    finally:
        await c.close()


async def test_unrecorded_method_is_final() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            with pytest.raises(BitcoinRpcError) as err:
                await c.call("getinfo")
            assert (err.value.reason, err.value.kind) == (Reason.METHOD_NOT_FOUND,
                                                          ErrorKind.FINAL)
        finally:
            await c.close()


async def test_fee_estimate_before_identify_is_refused() -> None:
    async with serve_core() as core:
        c = client(core)
        try:
            with pytest.raises(ChainError) as err:
                await c.estimate_fee_rate(2)
            assert err.value.kind is ErrorKind.RETRIABLE
            assert not isinstance(err.value, NodeAnswerInvalid)
        finally:
            await c.close()


async def test_raw_block_form_of_a_node_where_getblock_takes_a_boolean() -> None:
    """Dogecoin Core 1.14: ``getblock <hash> 0`` is a type error there; identify learns to
    ask ``getblock <hash> false`` instead."""
    dogecoin_genesis = BlockHash(
        "1a91e3dace36e2be3bf030a65679fe821aa1d6ef92e7c9902eb318182c355691")
    async with serve_core("dogecoin-v1.14.json") as core:
        c = client(core, network="dogecoin")
        try:
            await c.identify()
            assert c.dialect is Dialect.CORE
            raw = await c.raw_block(dogecoin_genesis)
            assert raw is not None and len(raw) == 285
            assert core.requests[-1]["params"] == [dogecoin_genesis, False]
            assert await c.raw_blocks([dogecoin_genesis]) == [raw]
        finally:
            await c.close()
