"""The UTXO chain source on the endpoint pool, against in-memory nodes that can lie.

Blocks are written by ``tests/support/btcblocks.py`` (a serializer independent of the
parser). Each fake node is a :class:`BitcoinRpcClient` whose requests are answered from
memory, so everything above the HTTP layer (checks, pool, failover) is the real code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import pytest

from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.rpc import BitcoinRpcClient, HeaderInfo
from chains.bitcoin.script import KEY_SIZE
from chains.bitcoin.source import BitcoinChainSource
from tests.support import btcblocks as bb
from tests.support.btc_wallet import segwit_address
from watcher.config import ChainConfig, Endpoint, parse
from watcher.core.addresses import AddressIndex
from watcher.core.endpoints import EndpointState
from watcher.errors import ChainError, ChainIdentityMismatch, ErrorKind
from watcher.metrics import REGISTRY
from watcher.runtime.pool import EndpointPool
from watcher.runtime.retry import RetryPolicy
from watcher.types import BlockHash, ChainHead, Outpoint, Spend, TxId

CODEC = UtxoAddressCodec("regtest")
REGTEST_GENESIS = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"


def h20(seed: str) -> bytes:
    return hashlib.sha256(seed.encode()).digest()[:20]


ALICE = h20("alice")
BOB = h20("bob")
STRANGER = h20("stranger")


def address_of(program: bytes) -> str:
    """Encoded by the tests' own bech32 writer, not the watcher's codec."""
    return segwit_address("bcrt", 0, program)


def config(**chain: Any) -> ChainConfig:
    raw = {"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "chains": {"btc": {
        "family": "bitcoin", "network": "regtest",
        "endpoints": [{"name": "a", "url": "http://127.0.0.1:1"},
                      {"name": "b", "url": "http://127.0.0.1:2"}],
        "native_asset": {"symbol": "BTC", "decimals": 8}, "reorg_window": 8,
        "confirmations": {"BTC": 2}, "dust_threshold": 546, "max_concurrency": 3, **chain}}}
    return parse(raw, environ={}).chains["btc"]  # type: ignore[index]


class Chain:
    """Blocks 0..n: each a coinbase and one payment (alice 50_000, bob 600, stranger 7,000,
    alice dust 500), the payment spending an output of the block before's payment."""

    def __init__(self, n: int) -> None:
        self.raw: list[bytes] = []
        self.hashes: list[str] = []
        self.txs: list[list[bb.Tx]] = []
        prev = bytes(32)
        prev_pay: bytes | None = None
        for height in range(n + 1):
            cb = bb.coinbase(height, [bb.Out(50 * 10**8, bb.p2wpkh(STRANGER))])
            pay = bb.Tx([bb.In(prev_pay or b"\x11" * 32, 0, sequence=0xFFFFFFFD,
                               witness=[b"\x30" * 71, b"\x02" * 33])],
                        [bb.Out(50_000 + height, bb.p2wpkh(ALICE)), bb.Out(600, bb.p2wpkh(BOB)),
                         bb.Out(7_000, bb.p2wpkh(STRANGER)), bb.Out(500, bb.p2wpkh(ALICE))])
            raw, bh = bb.block([cb, pay], prev=prev, time=1_700_000_000 + height)
            self.raw.append(raw)
            self.hashes.append(bh)
            self.txs.append([cb, pay])
            prev = bytes.fromhex(bh)[::-1]
            prev_pay = pay.txid()


class FakeNode(BitcoinRpcClient):
    def __init__(self, name: str, chain: Chain, genesis: str = REGTEST_GENESIS) -> None:
        super().__init__("btc", Endpoint(name, "http://127.0.0.1:1"), "regtest", timeout_s=1.0)
        self.chain = chain
        self.genesis = genesis
        self.tamper: set[str] = set()
        """Block hashes answered with one transaction byte flipped."""
        self.missing: set[str] = set()
        self.mempool_raw: dict[str, bytes] = {}
        self.fetched: list[str] = []
        self.blocks_served = 0

    async def identify(self) -> None:
        if self.genesis != REGTEST_GENESIS:
            raise ChainIdentityMismatch(f"endpoint {self.name} serves genesis {self.genesis}")

    async def head(self) -> ChainHead:
        n = len(self.chain.hashes) - 1
        return ChainHead(number=n, hash=BlockHash(self.chain.hashes[n]))

    async def block_hashes(self, start: int, count: int) -> list[BlockHash]:
        return [BlockHash(h) for h in self.chain.hashes[start:start + count]]

    async def hashes_at(self, heights: Sequence[int]) -> dict[int, BlockHash]:
        return {n: BlockHash(self.chain.hashes[n]) for n in heights
                if n < len(self.chain.hashes)}

    async def raw_headers(self, hashes: Sequence[BlockHash]) -> list[bytes | None]:
        by_hash = dict(zip(self.chain.hashes, self.chain.raw, strict=True))
        return [by_hash[h][:80] if h in by_hash else None for h in hashes]

    async def main_chain_header(self, block_hash: BlockHash) -> HeaderInfo | None:
        if block_hash not in self.chain.hashes:
            return None
        n = self.chain.hashes.index(block_hash)
        raw = self.chain.raw[n]
        return HeaderInfo(block_hash, n, None if n == 0 else BlockHash(self.chain.hashes[n - 1]),
                          raw[36:68][::-1].hex(), int.from_bytes(raw[68:72], "little"))

    async def raw_block(self, block_hash: BlockHash) -> bytes | None:
        self.blocks_served += 1
        if block_hash in self.missing or block_hash not in self.chain.hashes:
            return None
        n = self.chain.hashes.index(block_hash)
        raw = self.chain.raw[n]
        if block_hash in self.tamper:
            # Alice's amount + 1: an output value, which the merkle root covers.
            at = raw.index((50_000 + n).to_bytes(8, "little"))
            raw = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:]
        return raw

    async def raw_blocks(self, hashes: Sequence[BlockHash]) -> list[bytes | None]:
        return [await self.raw_block(h) for h in hashes]

    async def mempool_txids(self) -> list[TxId]:
        return [TxId(t) for t in self.mempool_raw]

    async def best_block_hash(self) -> BlockHash:
        return BlockHash(self.chain.hashes[-1])

    async def raw_transactions(self, txids: Sequence[TxId]) -> list[bytes | None]:
        self.fetched.extend(txids)
        return [self.mempool_raw.get(t) for t in txids]

    async def close(self) -> None:
        pass


def source_of(*nodes: FakeNode, **chain: Any) -> BitcoinChainSource:
    clients: list[BitcoinRpcClient] = list(nodes)
    pool = EndpointPool("btc", clients, retry=RetryPolicy(max_attempts=4, wait=False))
    return BitcoinChainSource(config(**chain), pool)


def watched(*programs: bytes) -> AddressIndex:
    index = AddressIndex(KEY_SIZE)
    for p in programs:
        index.add(CODEC.parse(address_of(p))[1])
    return index


def rejected(endpoint: str, check: str) -> float:
    return REGISTRY.get_sample_value("watcher_node_answers_rejected_total",
                                     {"chain": "btc", "endpoint": endpoint, "check": check}) or 0.0


async def test_headers_by_height_link_and_end_at_the_tip() -> None:
    chain = Chain(5)
    src = source_of(FakeNode("a", chain))
    refs = await src.headers(2, 10)
    assert [(r.number, r.hash) for r in refs] == [(n, chain.hashes[n]) for n in range(2, 6)]
    assert all(r.parent_hash == chain.hashes[r.number - 1] for r in refs)
    assert refs[0].timestamp == 1_700_000_002
    ref = await src.header_by_hash(BlockHash(chain.hashes[3]))
    assert ref is not None and (ref.number, ref.parent_hash) == (3, chain.hashes[2])
    assert await src.header_by_hash(BlockHash("ab" * 32)) is None
    assert await src.canonical_hashes([1, 9]) == {"a": {1: chain.hashes[1]}}


async def test_contents_give_exact_satoshis_per_output_and_count_dust() -> None:
    chain = Chain(3)
    src = source_of(FakeNode("a", chain))
    refs = await src.headers(1, 3)
    before = REGISTRY.get_sample_value("watcher_dust_outputs_ignored_total",
                                       {"chain": "btc"}) or 0.0
    contents = await src.contents(refs, watched(ALICE, BOB))
    assert [c.ref for c in contents] == refs
    for c in contents:
        pay = chain.txs[c.ref.number][1].txid_hex()
        assert [(t.txid, t.locator, t.amount, t.to_address) for t in c.transfers] == [
            (pay, "vout:0", 50_000 + c.ref.number, address_of(ALICE)),
            (pay, "vout:1", 600, address_of(BOB))]
        assert all((t.asset, t.decimals, t.token_contract) == ("BTC", 8, None)
                   for t in c.transfers)
    after = REGISTRY.get_sample_value("watcher_dust_outputs_ignored_total", {"chain": "btc"})
    assert after == before + 3  # alice's 500-satoshi output in each block


async def test_a_tampered_block_is_rejected_and_asked_of_another_endpoint() -> None:
    chain = Chain(3)
    liar, honest = FakeNode("a", chain), FakeNode("b", chain)
    liar.tamper.add(chain.hashes[2])
    src = source_of(liar, honest)
    refs = await src.headers(1, 3)
    before = rejected("a", "txid")
    contents = await src.contents(refs, watched(ALICE))
    assert [t.amount for c in contents for t in c.transfers] == [50_001, 50_002, 50_003]
    assert rejected("a", "txid") == before + 1
    assert src.endpoint_states()["a"].state is EndpointState.MISBEHAVING
    assert honest.blocks_served >= 1


async def test_not_found_for_a_block_of_the_chain_is_a_null_block() -> None:
    chain = Chain(2)
    liar, honest = FakeNode("a", chain), FakeNode("b", chain)
    liar.missing.add(chain.hashes[1])
    src = source_of(liar, honest)
    refs = await src.headers(1, 1)
    before = rejected("a", "null_block")
    (contents,) = await src.contents(refs, watched(ALICE))
    assert [t.amount for t in contents.transfers] == [50_001]
    assert rejected("a", "null_block") == before + 1


async def test_no_honest_endpoint_means_an_error_never_no_deposits() -> None:
    chain = Chain(2)
    a, b = FakeNode("a", chain), FakeNode("b", chain)
    a.tamper.add(chain.hashes[1])
    b.tamper.add(chain.hashes[1])
    src = source_of(a, b)
    refs = await src.headers(1, 1)
    with pytest.raises(ChainError):
        await src.contents(refs, watched(ALICE))


async def test_a_node_of_another_network_is_never_followed() -> None:
    chain = Chain(2)
    other = FakeNode("a", chain, genesis="00" * 32)
    src = source_of(other, FakeNode("b", chain))
    await src.verify_identity()
    assert src.endpoint_states()["a"].state is EndpointState.WRONG_CHAIN
    assert (await src.head()).hash == chain.hashes[2]


async def test_spends_of_watched_outpoints_are_listed() -> None:
    chain = Chain(3)
    src = source_of(FakeNode("a", chain))
    refs = await src.headers(1, 3)
    spent = Outpoint(TxId(chain.txs[1][1].txid_hex()), 0)  # spent by block 2's payment
    src.watch_outpoints(frozenset({spent, Outpoint(TxId("cd" * 32), 1)}))
    contents = await src.contents(refs, watched())
    assert [c.spends for c in contents] == [
        (), (Spend(spent, TxId(chain.txs[2][1].txid_hex())),), ()]
    src.watch_outpoints(frozenset())
    assert all(not c.spends for c in await src.contents(refs, watched()))


def mempool_tx(seed: int, to: bytes, amount: int, rbf: bool) -> bb.Tx:
    return bb.Tx([bb.In(hashlib.sha256(b"in%d" % seed).digest(), seed,
                        sequence=0xFFFFFFFD if rbf else 0xFFFFFFFF)],
                 [bb.Out(amount, bb.p2wpkh(to))])


async def test_mempool_polls_fetch_only_what_changed() -> None:
    chain = Chain(1)
    node = FakeNode("a", chain)
    txs = [mempool_tx(i, ALICE if i == 0 else STRANGER, 10_000 + i, rbf=i == 0)
           for i in range(5)]
    for t in txs:
        node.mempool_raw[t.txid_hex()] = t.serialize()
    src = source_of(node)
    index = watched(ALICE)

    first = await src.mempool(index, full=True)
    assert first.tip == chain.hashes[1]
    assert first.present == frozenset(t.txid_hex() for t in txs)
    assert [a.txid for a in first.added] == [t.txid_hex() for t in txs]
    paying = first.added[0]
    assert paying.rbf and [(t.locator, t.amount) for t in paying.transfers] == [
        ("vout:0", 10_000)]
    assert paying.spends == (Outpoint(TxId(hashlib.sha256(b"in0").digest()[::-1].hex()), 0),)
    assert all(not a.transfers and not a.rbf for a in first.added[1:])
    assert len(node.fetched) == 5

    node.fetched.clear()
    again = await src.mempool(index, full=False)
    assert (again.added, again.gone, again.present) == ((), (), None)
    assert node.fetched == []  # nothing changed: nothing fetched

    new = mempool_tx(9, BOB, 777, rbf=False)
    node.mempool_raw[new.txid_hex()] = new.serialize()
    del node.mempool_raw[txs[1].txid_hex()]
    change = await src.mempool(watched(ALICE, BOB), full=False)
    assert [a.txid for a in change.added] == [new.txid_hex()]
    assert change.gone == (txs[1].txid_hex(),)
    assert node.fetched == [new.txid_hex()]
    assert [t.amount for t in change.added[0].transfers] == [777]


async def test_an_unreadable_mempool_transaction_is_left_out_and_counted() -> None:
    chain = Chain(1)
    node = FakeNode("a", chain)
    good = mempool_tx(1, ALICE, 20_000, rbf=True)
    node.mempool_raw[good.txid_hex()] = good.serialize()
    node.mempool_raw["ee" * 32] = b"\x02\x00\x00"  # not a transaction
    src = source_of(node)
    before = REGISTRY.get_sample_value("watcher_mempool_transactions_unreadable_total",
                                       {"chain": "btc"}) or 0.0
    change = await src.mempool(watched(ALICE), full=True)
    assert [a.txid for a in change.added] == [good.txid_hex()]
    assert REGISTRY.get_sample_value("watcher_mempool_transactions_unreadable_total",
                                     {"chain": "btc"}) == before + 1
    node.fetched.clear()
    assert (await src.mempool(watched(ALICE), full=False)).added == ()
    assert node.fetched == []  # not fetched again at every poll


async def test_a_mempool_listed_by_another_endpoint_is_a_resync() -> None:
    chain = Chain(1)
    a, b = FakeNode("a", chain), FakeNode("b", chain)
    only_a = mempool_tx(1, ALICE, 11_000, rbf=True)
    only_b = mempool_tx(2, ALICE, 12_000, rbf=True)
    a.mempool_raw[only_a.txid_hex()] = only_a.serialize()
    b.mempool_raw[only_b.txid_hex()] = only_b.serialize()
    src = source_of(a, b)
    first = await src.mempool(watched(ALICE), full=False)  # no baseline yet: a full listing
    assert first.present == frozenset({TxId(only_a.txid_hex())})

    async def down() -> list[TxId]:
        raise ChainError(ErrorKind.RETRIABLE, "connection refused", "a")
    a.mempool_txids = down  # type: ignore[method-assign]
    second = await src.mempool(watched(ALICE), full=False)
    # b's mempool is not a diff against a's: everything is listed again, nothing "gone".
    assert second.present == frozenset({TxId(only_b.txid_hex())})
    assert [t.txid for t in second.added] == [only_b.txid_hex()] and second.gone == ()
