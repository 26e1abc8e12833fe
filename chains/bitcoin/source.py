"""The UTXO chain family behind :class:`watcher.ports.ChainSource` (Bitcoin, Litecoin,
Dogecoin by configuration).

Endpoint handling (identity by genesis hash, head rounds, states, failover,
retries) is the chain-agnostic :class:`watcher.runtime.pool.EndpointPool`; this
module supplies its clients (:class:`chains.bitcoin.rpc.BitcoinRpcClient`) and
what to ask them. Every answer is checked inside the request, so a defective
one counts against the endpoint that gave it and is asked again elsewhere,
never taken as "no deposits":

* headers by height: ``getblockhash`` for the range, then the raw 80-byte
  headers of those hashes (two batches); each header must hash to the hash the
  node named for its height, and link to the one below it;
* header by hash: the verbose header (main chain only) and the raw one, whose
  recomputed hash and parent must agree with it;
* contents: blocks fetched raw by hash (``blocks_per_request`` to a batch, up
  to ``max_concurrency`` batches at once), each parsed by :mod:`chains.bitcoin.block`, which recomputes
  its hash, every txid and the merkle root; its parent must be the ref's. A
  node that answers "not found" for a block of the chain it named is
  misbehaving (``null_block``). Outputs paying watched keys become transfers
  ``vout:<n>`` with satoshis read from the raw bytes; outputs under
  ``dust_threshold`` are counted in ``watcher_dust_outputs_ignored_total``.
  With mempool watching, ``spends`` lists the block's inputs that spend an
  outpoint the follower asked about (:meth:`BitcoinChainSource.watch_outpoints`).

It is also the chain's :class:`watcher.ports.MempoolSource`: each poll lists the
node's mempool txids (``getrawmempool``, 65 bytes a transaction), diffs them
against the previous poll, and fetches and parses only the new transactions
(``getrawtransaction <txid> 0`` in batches), so a poll costs work in proportion
to what changed, not to the mempool's size.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from chains.bitcoin import block as blocks
from chains.bitcoin import walker
from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.networks import Network, network
from chains.bitcoin.rpc import BitcoinRpcClient
from chains.bitcoin.script import KEY_SIZE
from watcher.config import ChainConfig
from watcher.core.endpoints import EndpointPolicy, EndpointView
from watcher.core.mempool import MempoolChange, UnconfirmedTx
from watcher.errors import AnswerCheck, ChainError, NodeAnswerInvalid
from watcher.metrics import (
    BLOCK_BYTES_FETCHED,
    DUST_OUTPUTS_IGNORED,
    MEMPOOL_TXS_FETCHED,
    MEMPOOL_TXS_UNREADABLE,
    NODE_HEAD,
)
from watcher.ports import WatchedAddressLookup
from watcher.runtime.pool import EndpointPool
from watcher.runtime.retry import RetryPolicy
from watcher.types import BlockContents, BlockHash, BlockRef, ChainHead, Outpoint, Spend, TxId

log = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["BitcoinChainSource", "build_family", "build_pool"]

_NO_PARENT = BlockHash("0" * 64)
"""The parent named by the genesis header."""

MEMPOOL_FETCH_BATCH = 100
"""Transactions per ``getrawtransaction`` batch of a mempool poll (about 40 kB of answer
for typical transactions; a full resync of a large mempool is many such batches)."""


def build_pool(cfg: ChainConfig, *, retry: RetryPolicy | None = None,
               policy: EndpointPolicy | None = None,
               clock: Callable[[], float] | None = None) -> EndpointPool[BitcoinRpcClient]:
    """The endpoint pool of a Bitcoin-family chain: one client per configured endpoint."""
    if cfg.network is None:
        raise ValueError(f"chain {cfg.id}: a bitcoin chain needs a network")
    clients = [BitcoinRpcClient(str(cfg.id), e, cfg.network,
                                timeout_s=cfg.rpc_timeout_ms / 1000,
                                connections=max(4, 2 * cfg.max_concurrency))
               for e in cfg.endpoints]
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    return EndpointPool(
        str(cfg.id), clients,
        policy=policy or EndpointPolicy(lag_tolerance_blocks=cfg.lag_tolerance_blocks),
        retry=retry or RetryPolicy.from_config(cfg), **kwargs)


class BitcoinChainSource:
    """Read access to one Bitcoin-family chain through its endpoint pool."""

    def __init__(self, cfg: ChainConfig,
                 pool: EndpointPool[BitcoinRpcClient] | None = None) -> None:
        if cfg.network is None:
            raise ValueError(f"chain {cfg.id}: a bitcoin chain needs a network")
        self._cfg = cfg
        self._chain = str(cfg.id)
        self._net: Network = network(cfg.network)
        self._pool = pool if pool is not None else build_pool(cfg)
        self._started = False
        self._dust = DUST_OUTPUTS_IGNORED.labels(self._chain)
        self._bytes = BLOCK_BYTES_FETCHED.labels(self._chain)
        self._outpoints: frozenset[Outpoint] = frozenset()
        self._raw_outpoints: dict[blocks.Outpoint, Outpoint] = {}
        self._mempool_known: frozenset[TxId] | None = None
        """The txids of the previous successful poll (None: no baseline yet)."""
        self._mempool_endpoint: str | None = None
        """The endpoint that poll listed."""
        self._mempool_fetched = MEMPOOL_TXS_FETCHED.labels(self._chain)
        self._mempool_unreadable = MEMPOOL_TXS_UNREADABLE.labels(self._chain)

    @property
    def pool(self) -> EndpointPool[BitcoinRpcClient]:
        return self._pool

    @property
    def network(self) -> Network:
        return self._net

    def endpoint_states(self) -> Mapping[str, EndpointView]:
        return self._pool.states()

    # ------------------------------------------------------------ identity and heads

    async def verify_identity(self) -> None:
        """Identifies every endpoint (genesis hash of the configured network) in one head
        round. An endpoint of another network is set aside (``wrong_chain``), never
        followed; a RETRIABLE :class:`ChainError` is raised when none is alive."""
        await self._pool.refresh()
        self._started = True

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.verify_identity()

    async def head(self) -> ChainHead:
        """The head of the followed endpoint after one round (never one lagging the best)."""
        await self._ensure_started()
        head = await self._pool.refresh()
        NODE_HEAD.labels(self._chain).set(head.number)
        return head

    # ------------------------------------------------------------ headers

    async def headers(self, start: int, count: int) -> list[BlockRef]:
        await self._ensure_started()
        if count <= 0:
            return []

        async def op(c: BitcoinRpcClient) -> list[BlockRef]:
            hashes = await c.block_hashes(start, count)
            raws = await c.raw_headers(hashes)
            refs: list[BlockRef] = []
            for height, (asked, raw) in enumerate(zip(hashes, raws, strict=True), start):
                if raw is None:
                    raise NodeAnswerInvalid(f"no header for block {asked} it named at height "
                                            f"{height}", check=AnswerCheck.NULL_BLOCK)
                header = blocks.parse_header(raw, f"header {asked}")
                if header.hash != asked:
                    raise NodeAnswerInvalid(f"asked for header {asked}, got {header.hash}",
                                            check=AnswerCheck.BLOCK_HASH)
                if refs and header.prev_hash != refs[-1].hash:
                    # A block arrived between the two batches: the caller asks again.
                    break
                refs.append(BlockRef(number=height, hash=header.hash,
                                     parent_hash=header.prev_hash, timestamp=header.time))
            return refs

        return await self._pool.ask(op, what=f"headers {start}+{count}")

    async def header_by_hash(self, block_hash: BlockHash) -> BlockRef | None:
        """The header of ``block_hash`` if it is on the followed node's main chain."""
        await self._ensure_started()

        async def op(c: BitcoinRpcClient) -> BlockRef | None:
            info = await c.main_chain_header(block_hash)
            if info is None:
                return None
            (raw,) = await c.raw_headers([block_hash])
            if raw is None:
                raise NodeAnswerInvalid(f"no raw header for block {block_hash} it described",
                                        check=AnswerCheck.NULL_BLOCK)
            header = blocks.parse_header(raw, f"header {block_hash}")
            parent = info.previous_hash if info.previous_hash is not None else _NO_PARENT
            if header.hash != block_hash or header.prev_hash != parent:
                raise NodeAnswerInvalid(f"header {block_hash}: raw and verbose forms disagree",
                                        check=AnswerCheck.BLOCK_HASH)
            return BlockRef(number=info.height, hash=block_hash, parent_hash=header.prev_hash,
                            timestamp=header.time)

        return await self._pool.ask(op, what="header by hash")

    async def canonical_hashes(self, heights: Sequence[int]) -> dict[str, dict[int, BlockHash]]:
        """For each alive endpoint that answered, its main-chain hash at each of ``heights``
        it has. For confirm quorums."""
        await self._ensure_started()
        wanted = sorted(set(heights))
        if not wanted:
            return {}
        answers = await self._pool.ask_each(lambda c: c.hashes_at(wanted),
                                            what="canonical hashes")
        return {n: a for n, a in answers.items() if not isinstance(a, ChainError)}

    # ------------------------------------------------------------ contents

    async def contents(self, refs: Sequence[BlockRef],
                       watched: WatchedAddressLookup) -> list[BlockContents]:
        """Transfers to watched addresses in each block, in the order of ``refs``. Blocks are
        fetched by hash in batches of at most ``blocks_per_request``, at most
        ``max_concurrency`` batches at once."""
        await self._ensure_started()
        if not refs:
            return []
        conc = self._cfg.max_concurrency
        size = max(1, min(self._cfg.blocks_per_request, math.ceil(len(refs) / conc)))
        chunks = [refs[i:i + size] for i in range(0, len(refs), size)]
        gate = asyncio.Semaphore(conc)

        async def run(chunk: Sequence[BlockRef]) -> list[BlockContents]:
            async with gate:
                return await self._chunk_contents(chunk, watched)

        results = await _gather_or_cancel([run(c) for c in chunks])
        return [c for chunk in results for c in chunk]

    async def _chunk_contents(self, refs: Sequence[BlockRef],
                              watched: WatchedAddressLookup) -> list[BlockContents]:
        hashes = [r.hash for r in refs]

        async def op(c: BitcoinRpcClient) -> list[blocks.RawBlock]:
            raws = await c.raw_blocks(hashes)
            parsed: list[blocks.RawBlock] = []
            for ref, raw in zip(refs, raws, strict=True):
                if raw is None:
                    raise NodeAnswerInvalid(f"not found: block {ref.hash} of the followed "
                                            "chain", check=AnswerCheck.NULL_BLOCK)
                block = blocks.parse_block(raw, expect_hash=ref.hash)
                if block.header.prev_hash != ref.parent_hash:
                    raise NodeAnswerInvalid(f"block {ref.hash}: parent {block.header.prev_hash}"
                                            f", its header said {ref.parent_hash}",
                                            check=AnswerCheck.PARENT_LINK)
                parsed.append(block)
            self._bytes.inc(sum(b.size for b in parsed))
            return parsed

        wanted = self._raw_outpoints  # as told before this fetch began
        what = f"blocks {refs[0].number}+{len(refs)}"
        return [self._block_contents(ref, block, watched, wanted)
                for ref, block in zip(refs, await self._pool.ask(op, what=what), strict=True)]

    def _block_contents(self, ref: BlockRef, block: blocks.RawBlock,
                        watched: WatchedAddressLookup,
                        wanted: Mapping[blocks.Outpoint, Outpoint]) -> BlockContents:
        result = self._scan(block.txs, watched)
        spends: tuple[Spend, ...] = ()
        if wanted:
            txs = block.txs
            spends = tuple(Spend(wanted[op], txs.txid(i))
                           for op, i in sorted(txs.spenders(wanted).items(), key=_by_spender))
        return BlockContents(ref=ref, transfers=result.transfers, spends=spends)

    def _scan(self, txs: blocks.Transactions, watched: WatchedAddressLookup, *,
              count_dust: bool = True) -> blocks.ScanResult:
        result = blocks.scan(txs, watched, self._net, asset=self._cfg.native_symbol,
                             decimals=self._cfg.native_decimals,
                             dust_threshold=self._cfg.dust_threshold)
        if result.dust_ignored and count_dust:
            self._dust.inc(result.dust_ignored)  # counted once: in its block, not its mempool
        return result

    # ------------------------------------------------------------ mempool

    def watch_outpoints(self, outpoints: frozenset[Outpoint]) -> None:
        """Block contents fetched from now on list the inputs spending ``outpoints``."""
        if outpoints != self._outpoints:
            self._outpoints = outpoints
            self._raw_outpoints = {blocks.Outpoint(o.txid, o.vout): o for o in outpoints}

    async def mempool(self, watched: WatchedAddressLookup, *, full: bool) -> MempoolChange:
        """What changed in the followed node's mempool since the previous successful call
        (see :class:`watcher.ports.MempoolSource`). The txids are listed before the tip is
        read, so a transaction missing from the list was missing at that tip already."""
        await self._ensure_started()

        async def listing(c: BitcoinRpcClient) -> tuple[list[TxId], BlockHash, str]:
            txids = await c.mempool_txids()
            return txids, await c.best_block_hash(), c.name

        txids, tip, endpoint = await self._pool.ask(listing, what="mempool listing")
        # Another node's mempool is no baseline for this one's: a failover is a resync.
        full = full or self._mempool_known is None or endpoint != self._mempool_endpoint
        previous: frozenset[TxId] = frozenset() if full else (self._mempool_known or frozenset())
        current = frozenset(txids)
        new = [t for t in dict.fromkeys(txids) if t not in previous]
        added: list[UnconfirmedTx] = []
        left: set[TxId] = set()
        for i in range(0, len(new), MEMPOOL_FETCH_BATCH):
            chunk = new[i:i + MEMPOOL_FETCH_BATCH]
            raws = await self._pool.ask(_fetch_transactions(chunk), what="mempool transactions")
            self._mempool_fetched.inc(len(chunk))
            for txid, raw in zip(chunk, raws, strict=True):
                if raw is None:
                    left.add(txid)  # mined or evicted since the listing
                    continue
                tx = self._unconfirmed(txid, raw, watched)
                if tx is not None:
                    added.append(tx)
        present = current - left
        self._mempool_known = present
        self._mempool_endpoint = endpoint
        return MempoolChange(added=tuple(added), gone=tuple(sorted(previous - present)),
                             tip=tip, present=present if full else None)

    def _unconfirmed(self, txid: TxId, raw: bytes, watched: WatchedAddressLookup
                     ) -> UnconfirmedTx | None:
        """A mempool transaction as the core wants it; None (counted) for one that cannot
        be read or is not the transaction asked for: the block path stays authoritative."""
        try:
            txs = blocks.parse_transaction(raw, expect_txid=txid)
            spends = tuple(Outpoint(o.txid, o.vout) for o in txs.spends(0))
            result = self._scan(txs, watched, count_dust=False)
            return UnconfirmedTx(txid=txid, transfers=result.transfers,
                                 spends=spends, rbf=txs.signals_rbf(0))
        except (NodeAnswerInvalid, ValueError):
            self._mempool_unreadable.inc()
            log.warning("chain %s: mempool transaction %s unreadable, left out", self._chain,
                        txid)
            return None

    async def close(self) -> None:
        await self._pool.close()


def _fetch_transactions(txids: list[TxId]
                        ) -> Callable[[BitcoinRpcClient], Awaitable[list[bytes | None]]]:
    def op(c: BitcoinRpcClient) -> Awaitable[list[bytes | None]]:
        return c.raw_transactions(txids)
    return op


def _by_spender(item: tuple[blocks.Outpoint, int]) -> tuple[int, str, int]:
    op, index = item
    return index, op.txid, op.vout


async def _gather_or_cancel(aws: Sequence[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels the rest and is raised as it is."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def build_family(cfg: ChainConfig) -> tuple[BitcoinChainSource, UtxoAddressCodec, int]:
    """The source, the address codec of the configured network and the index key width."""
    walker.announce()  # compiled or interpreted block walk: logged once, and the metric
    source = BitcoinChainSource(cfg)
    return source, UtxoAddressCodec(source.network), KEY_SIZE
