"""The EVM chain family behind :class:`watcher.ports.ChainSource` and ``AddressCodec``.

An endpoint serves nothing before its chain id has been checked (and, with
traces on, its tracer). Heads are polled from every endpoint each round and
the choice of the node to follow is left to :mod:`watcher.core.endpoints`.
Block contents are always fetched by hash, in batches, and checked by
:mod:`chains.evm.parse`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from chains.evm import parse
from chains.evm.errors import RpcError
from chains.evm.rpc import Call, RpcPool, raise_errors
from watcher.config import ChainConfig, FinalityMode, TraceMode
from watcher.core.endpoints import choose_endpoint
from watcher.errors import (
    ChainError,
    ChainIdentityMismatch,
    ErrorKind,
    InvalidAddress,
    NodeAnswerInvalid,
)
from watcher.metrics import ENDPOINT_HEAD, ENDPOINT_IN_SYNC, NODE_HEAD
from watcher.ports import WatchedAddressLookup
from watcher.types import Address, AddressKey, BlockContents, BlockHash, BlockRef, ChainHead, TxId

log = logging.getLogger(__name__)

REVERIFY_INTERVAL_S = 30.0
"""How often an endpoint that could not be verified is tried again."""

TRACE_CONFIG = {"tracer": "callTracer"}

_ADDRESS_TEXT_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")


class EvmAddressCodec:
    """``0x`` + 40 hex digits; mixed case must carry a valid EIP-55 checksum."""

    def parse(self, text: str) -> tuple[Address, AddressKey]:
        if not isinstance(text, str) or not _ADDRESS_TEXT_RE.match(text):
            raise InvalidAddress("not 0x followed by 40 hex digits")
        digits = text[2:]
        checksummed = parse.to_checksum_address(text)
        if digits != digits.lower() and digits != digits.upper() and checksummed != text:
            raise InvalidAddress("bad checksum")
        return Address(checksummed), AddressKey(bytes.fromhex(digits))


class EvmChainSource:
    """Read access to one EVM chain through its configured endpoints."""

    def __init__(self, cfg: ChainConfig, pool: RpcPool | None = None) -> None:
        if cfg.chain_id is None:
            raise ValueError(f"chain {cfg.id}: an EVM chain needs chain_id")
        self._cfg = cfg
        self._chain = str(cfg.id)
        self._pool = pool if pool is not None else RpcPool.from_config(cfg)
        self._assets = parse.Assets.from_config(cfg)
        self._log_filter_addresses = self._assets.token_contracts
        self._verified: set[str] = set()
        self._tried_at: dict[str, float] = {}
        self._head_failing: set[str] = set()
        self._traces: bool | None = None if cfg.traces is not TraceMode.OFF else False
        self._started = False
        self._pool.set_usable(())

    @property
    def pool(self) -> RpcPool:
        return self._pool

    @property
    def traces_enabled(self) -> bool | None:
        """Whether internal transfers are traced; None until decided at start."""
        return self._traces

    # ------------------------------------------------------------ identity

    async def verify_identity(self) -> None:
        """Checks ``eth_chainId`` of every endpoint and, with traces on or auto, its tracer.

        A node on another chain raises :class:`ChainIdentityMismatch` naming it. A node
        that cannot be reached stays unused until it is verified on a later head round;
        if none can be reached a RETRIABLE :class:`ChainError` is raised.
        """
        self._started = True
        await self._verify([n for n in self._pool.names if n not in self._verified])
        if not self._verified:
            raise ChainError(ErrorKind.RETRIABLE, f"chain {self._chain}: no endpoint verified")

    async def _verify_pending(self) -> None:
        """Verifies endpoints that could not be reached before (all at once if none is)."""
        now = time.monotonic()
        due = [n for n in self._pool.names if n not in self._verified and (
            not self._verified or now - self._tried_at.get(n, 0.0) >= REVERIFY_INTERVAL_S)]
        if due:
            await self._verify(due)

    async def _verify(self, names: Sequence[str]) -> None:
        results = await asyncio.gather(*(self._verify_endpoint(n) for n in names),
                                       return_exceptions=True)
        probes: dict[str, bool] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, _Unreachable):
                log.warning("chain %s: endpoint %s unreachable, not used until verified",
                            self._chain, name)
            elif isinstance(result, BaseException):
                raise result
            else:
                probes[name] = result
        if self._traces is None and probes:
            # AUTO, decided once: on when every endpoint reached at start can trace.
            self._traces = all(probes.values())
            log.info("chain %s: traces %s", self._chain, "on" if self._traces else "off")
        for name, can_trace in probes.items():
            if self._traces and not can_trace:
                log.warning("chain %s: endpoint %s unused: it cannot trace", self._chain, name)
                continue
            self._verified.add(name)
        self._pool.set_usable(self._verified)

    async def _verify_endpoint(self, name: str) -> bool:
        """True when verified and tracing works (or is off); raises on a mismatch."""
        self._tried_at[name] = time.monotonic()
        try:
            chain_id = await self._pool.call("eth_chainId", [], endpoint=name)
        except ChainError as exc:
            if exc.kind is ErrorKind.RETRIABLE:
                raise _Unreachable(name) from None
            raise ChainIdentityMismatch(
                f"chain {self._chain}: endpoint {name} cannot report its chain id") from None
        try:
            got = parse.quantity(chain_id, "eth_chainId")
        except NodeAnswerInvalid:
            raise ChainIdentityMismatch(
                f"chain {self._chain}: endpoint {name} answered no chain id") from None
        if got != self._cfg.chain_id:
            raise ChainIdentityMismatch(
                f"chain {self._chain}: endpoint {name} serves chain id {got}, "
                f"configured {self._cfg.chain_id}")
        if self._traces is False:
            return True
        return await self._probe_traces(name)

    async def _probe_traces(self, name: str) -> bool:
        try:
            latest = await self._pool.call("eth_getBlockByNumber", ["latest", False],
                                           endpoint=name)
            ref = parse.parse_header(latest)
            await self._pool.call("debug_traceBlockByHash", [ref.hash, TRACE_CONFIG],
                                  endpoint=name)
        except ChainError as exc:
            if exc.kind is ErrorKind.RETRIABLE:
                raise _Unreachable(name) from None
            if self._cfg.traces is TraceMode.ON:
                raise ChainError(
                    ErrorKind.FINAL,
                    f"chain {self._chain}: traces: on, but endpoint {name} cannot "
                    "debug_traceBlockByHash with callTracer", name) from None
            return False
        return True

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.verify_identity()

    # ------------------------------------------------------------ heads

    async def head(self) -> ChainHead:
        await self._ensure_started()
        pending = self._verify_pending()
        names = [n for n in self._pool.names if n in self._verified]
        results = await asyncio.gather(pending, *(self._endpoint_head(n) for n in names))
        heads: dict[str, ChainHead | None] = dict(zip(names, results[1:], strict=True))
        choice = choose_endpoint({n: (h.number if h else None) for n, h in heads.items()},
                                 self._pool.followed, self._pool.names,
                                 self._cfg.lag_tolerance_blocks)
        for name in self._pool.names:
            h = heads.get(name)
            if h is not None:
                ENDPOINT_HEAD.labels(self._chain, name).set(h.number)
            ENDPOINT_IN_SYNC.labels(self._chain, name).set(1 if name in choice.in_sync else 0)
        if choice.followed is None:
            raise ChainError(ErrorKind.RETRIABLE, f"chain {self._chain}: no endpoint answered")
        self._pool.route(choice.followed, choice.in_sync)
        followed = heads[choice.followed]
        assert followed is not None
        NODE_HEAD.labels(self._chain).set(followed.number)
        return followed

    async def _endpoint_head(self, name: str) -> ChainHead | None:
        calls: list[Call] = [("eth_getBlockByNumber", ["latest", False])]
        if self._cfg.finality_mode is FinalityMode.FINALIZED:
            calls.append(("eth_getBlockByNumber", ["finalized", False]))

        def decode(replies: list[Any]) -> ChainHead:
            latest = replies[0]
            if isinstance(latest, RpcError):
                raise latest
            ref = parse.parse_header(latest)
            finalized: int | None = None
            if len(replies) > 1 and replies[1] is not None and not isinstance(replies[1],
                                                                              RpcError):
                # A node without the tag (or failing on it) gives no finalized height.
                finalized = parse.parse_header(replies[1]).number
                if finalized > ref.number:
                    raise NodeAnswerInvalid(f"finalized {finalized} above latest {ref.number}")
            return ChainHead(number=ref.number, hash=ref.hash, finalized_number=finalized)

        try:
            head = await self._pool.batch_decoded(calls, decode, endpoint=name, attempts=1)
        except ChainError as exc:
            if name not in self._head_failing:
                log.warning("chain %s: head of %s failed: %s", self._chain, name, exc)
                self._head_failing.add(name)
            return None
        if name in self._head_failing:
            log.info("chain %s: head of %s answers again", self._chain, name)
            self._head_failing.discard(name)
        return head

    # ------------------------------------------------------------ headers

    async def headers(self, start: int, count: int) -> list[BlockRef]:
        await self._ensure_started()
        if count <= 0:
            return []
        calls: list[Call] = [("eth_getBlockByNumber", [hex(n), False])
                             for n in range(start, start + count)]

        def decode(replies: list[Any]) -> list[BlockRef]:
            refs: list[BlockRef] = []
            for n, obj in enumerate(raise_errors(replies), start):
                if obj is None:
                    break  # beyond the node's tip
                refs.append(parse.parse_header(obj, expect_number=n))
            return refs

        return await self._pool.batch_decoded(calls, decode)

    async def header_by_hash(self, block_hash: BlockHash) -> BlockRef | None:
        await self._ensure_started()

        def decode(obj: Any) -> BlockRef | None:
            return None if obj is None else parse.parse_header(obj, expect_hash=block_hash)

        return await self._pool.call_decoded("eth_getBlockByHash", [block_hash, False], decode)

    # ------------------------------------------------------------ contents

    async def contents(self, refs: Sequence[BlockRef],
                       watched: WatchedAddressLookup) -> list[BlockContents]:
        await self._ensure_started()
        if not refs:
            return []
        size = max(1, min(self._cfg.blocks_per_request,
                          math.ceil(len(refs) / self._cfg.max_concurrency)))
        chunks = [refs[i:i + size] for i in range(0, len(refs), size)]
        gate = asyncio.Semaphore(self._cfg.max_concurrency)

        async def run(chunk: Sequence[BlockRef]) -> list[BlockContents]:
            async with gate:
                return await self._contents_chunk(chunk, watched)

        results = await _gather_or_cancel([run(c) for c in chunks])
        return [c for chunk_result in results for c in chunk_result]

    async def _contents_chunk(self, refs: Sequence[BlockRef],
                              watched: WatchedAddressLookup) -> list[BlockContents]:
        try:
            scanned = await self._scan(refs, watched)
        except RpcError as exc:
            if not exc.too_large or len(refs) == 1:
                raise
            half = len(refs) // 2
            log.info("chain %s: batch of %d blocks too large, splitting", self._chain, len(refs))
            return [*await self._contents_chunk(refs[:half], watched),
                    *await self._contents_chunk(refs[half:], watched)]
        succeeded = await self._succeeded(scanned)
        return [BlockContents(ref=s.ref, transfers=s.transfers(succeeded)) for s in scanned]

    async def _scan(self, refs: Sequence[BlockRef],
                    watched: WatchedAddressLookup) -> list[parse.ScannedBlock]:
        """One batch: each block by hash with its transactions, its token logs, its traces."""
        with_logs = bool(self._log_filter_addresses)
        with_traces = bool(self._traces)
        calls: list[Call] = []
        for ref in refs:
            calls.append(("eth_getBlockByHash", [ref.hash, True]))
            if with_logs:
                calls.append(("eth_getLogs", [{"blockHash": ref.hash,
                                               "address": self._log_filter_addresses,
                                               "topics": [parse.TRANSFER_TOPIC]}]))
            if with_traces:
                calls.append(("debug_traceBlockByHash", [ref.hash, TRACE_CONFIG]))
        per_block = 1 + with_logs + with_traces
        assets = self._assets

        def decode(replies: list[Any]) -> list[parse.ScannedBlock]:
            raise_errors(replies)
            out: list[parse.ScannedBlock] = []
            for i, ref in enumerate(refs):
                at = i * per_block
                block = replies[at]
                if block is None:
                    raise ChainError(ErrorKind.RETRIABLE, f"unknown block {ref.hash}")
                scanned = parse.scan_block(block, ref, watched, assets)
                if with_logs:
                    at += 1
                    parse.scan_logs(replies[at], scanned, watched, assets)
                if with_traces:
                    at += 1
                    parse.scan_traces(replies[at], scanned, watched, assets)
                out.append(scanned)
            return out

        return await self._pool.batch_decoded(calls, decode)

    async def _succeeded(self, scanned: Sequence[parse.ScannedBlock]) -> set[TxId]:
        """Txids of native candidates whose receipt reports success (one batch)."""
        wanted = parse.candidates_of(scanned)
        if not wanted:
            return set()
        calls: list[Call] = [("eth_getTransactionReceipt", [txid]) for _, txid in wanted]

        def decode(replies: list[Any]) -> set[TxId]:
            return {txid for (bh, txid), receipt in zip(wanted, raise_errors(replies), strict=True)
                    if parse.receipt_succeeded(receipt, txid, bh)}

        return await self._pool.batch_decoded(calls, decode)

    async def close(self) -> None:
        await self._pool.close()


class _Unreachable(ChainError):
    """An endpoint that could not be asked (not a verdict about it)."""

    def __init__(self, name: str) -> None:
        super().__init__(ErrorKind.RETRIABLE, "unreachable", name)


async def _gather_or_cancel(aws: Sequence[Awaitable[list[BlockContents]]]
                            ) -> list[list[BlockContents]]:
    """Like gather, but the first failure cancels the rest and is raised as it is."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def build_source(cfg: ChainConfig) -> EvmChainSource:
    return EvmChainSource(cfg)
