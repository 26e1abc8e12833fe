"""The EVM chain family behind :class:`watcher.ports.ChainSource` and ``AddressCodec``.

Endpoint handling (identity, head rounds, states, failover, retries) is the
chain-agnostic :class:`watcher.runtime.pool.EndpointPool`; this module supplies
its clients (:class:`chains.evm.rpc.EvmRpcClient`) and what to ask them. An
endpoint serves nothing before its chain id has been checked (and, with traces
on, its tracer). Block contents are always fetched by hash, in batches, and
checked by :mod:`chains.evm.parse` and :mod:`chains.evm.verify`: a defective
answer is asked again of another endpoint, never taken as "no deposits".
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chains.evm import answers, parse, verify
from chains.evm.errors import RpcError
from chains.evm.rpc import TRACE_CONFIG, Call, EvmRpcClient, Transport, raise_errors
from chains.evm.scanworker import ScanWorker, WorkerGone, WorkerInit
from watcher.config import ChainConfig, TraceMode
from watcher.core.endpoints import EndpointPolicy, EndpointView
from watcher.errors import AnswerCheck, ChainError, ErrorKind, InvalidAddress, NodeAnswerInvalid
from watcher.metrics import NODE_HEAD
from watcher.ports import WatchedAddressLookup
from watcher.runtime.pool import EndpointPool
from watcher.runtime.retry import RetryPolicy
from watcher.types import Address, AddressKey, BlockContents, BlockHash, BlockRef, ChainHead, TxId

log = logging.getLogger(__name__)

__all__ = ["TRACE_CONFIG", "EvmAddressCodec", "EvmChainSource", "build_pool", "build_source"]

_ADDRESS_TEXT_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")

SCAN_WORKER_MIN_BLOCKS = int(os.environ.get("WATCHER_EVM_SCAN_WORKER_MIN_BLOCKS", "16"))
"""Ranges at least this long go to the scan worker: catch-up batches, never the one or two
blocks of following the head (that stays in process, as cheap as before)."""

SCAN_WORKERS = max(1, int(os.environ.get("WATCHER_EVM_SCAN_WORKERS", "2")))
"""Scan worker processes per chain, each a share of a range: on the 2-core benchmark machine
one worker was the bottleneck (the daemon 32 % busy), two use both cores."""

RECEIPTS_PER_REQUEST = 64
"""Native-candidate receipts per POST when a whole range's are asked at once (worker)."""


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


def build_pool(cfg: ChainConfig, *, transports: Mapping[str, Transport] | None = None,
               retry: RetryPolicy | None = None, policy: EndpointPolicy | None = None,
               clock: Callable[[], float] | None = None) -> EndpointPool[EvmRpcClient]:
    """The endpoint pool of an EVM chain; ``transports`` replaces HTTP per endpoint (tests)."""
    if cfg.chain_id is None:
        raise ValueError(f"chain {cfg.id}: an EVM chain needs chain_id")
    clients = [EvmRpcClient(str(cfg.id), e, chain_id=cfg.chain_id,
                            timeout_s=cfg.rpc_timeout_ms / 1000, finality_mode=cfg.finality_mode,
                            transport=(transports or {}).get(e.name),
                            connections=max(4, 2 * cfg.max_concurrency))
               for e in cfg.endpoints]
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    return EndpointPool(
        str(cfg.id), clients,
        policy=policy or EndpointPolicy(lag_tolerance_blocks=cfg.lag_tolerance_blocks),
        retry=retry or RetryPolicy.from_config(cfg), **kwargs)


@dataclass(frozen=True, slots=True)
class ScanPlan:
    """The calls that fetch a batch of blocks' contents, and the checks and scans of their
    answers: one place, used in process and by the scan worker (:mod:`chains.evm.scanworker`).
    """

    assets: parse.Assets
    log_contracts: tuple[str, ...]
    with_traces: bool
    check_bloom: bool

    @property
    def with_logs(self) -> bool:
        return bool(self.log_contracts)

    @property
    def log_filter(self) -> verify.LogFilter:
        return verify.LogFilter.of(self.log_contracts, parse.TRANSFER_TOPIC)

    def calls(self, refs: Sequence[BlockRef]) -> list[Call]:
        calls: list[Call] = []
        contracts = list(self.log_contracts)
        for ref in refs:
            calls.append(("eth_getBlockByHash", [ref.hash, True]))
            if contracts:
                calls.append(("eth_getLogs", [{"blockHash": ref.hash, "address": contracts,
                                               "topics": [parse.TRANSFER_TOPIC]}]))
            if self.with_traces:
                calls.append(("debug_traceBlockByHash", [ref.hash, TRACE_CONFIG]))
        return calls

    def decode(self, replies: list[Any], refs: Sequence[BlockRef], watched: WatchedAddressLookup
               ) -> tuple[list[parse.ScannedBlock], list[parse.ScannedBlock]]:
        """The scanned blocks of a batch's raw replies, and those whose empty logs answer
        the bloom does not let us believe (their receipts must settle it)."""
        raise_errors(replies)
        with_logs, with_traces = self.with_logs, self.with_traces
        per_block = 1 + with_logs + with_traces
        assets = self.assets
        log_filter = self.log_filter if self.check_bloom and with_logs else None
        out: list[parse.ScannedBlock] = []
        doubtful: list[parse.ScannedBlock] = []
        for i, ref in enumerate(refs):
            at = i * per_block
            scanned = parse.scan_block_json(replies[at], ref, watched, assets)
            if with_logs:
                at += 1
                logs = answers.generic(replies[at])
                parse.scan_logs(logs, scanned, watched, assets)
                if log_filter is not None and not verify.check_logs_answer(
                        logs, verify.parse_bloom(scanned.logs_bloom, "block.logsBloom"),
                        log_filter):
                    doubtful.append(scanned)
            if with_traces:
                at += 1
                parse.scan_traces(answers.generic(replies[at]), scanned, watched, assets)
            out.append(scanned)
        return out, doubtful


def receipt_calls(wanted: Sequence[tuple[BlockHash, TxId, int]]) -> list[Call]:
    """The receipts of native candidates (``parse.candidates_of``), one call each."""
    return [("eth_getTransactionReceipt", [txid]) for _, txid, _ in wanted]


def succeeded_of(replies: list[Any], wanted: Sequence[tuple[BlockHash, TxId, int]]) -> set[TxId]:
    """Txids whose receipt (checked to be of that transaction, block and index) says success."""
    return {txid for (bh, txid, index), receipt in zip(wanted, raise_errors(replies), strict=True)
            if parse.receipt_succeeded(receipt, txid, bh, index)}


def receipt_groups(wanted: Sequence[tuple[BlockHash, TxId, int]], size: int
                   ) -> list[Sequence[tuple[BlockHash, TxId, int]]]:
    return [wanted[i:i + size] for i in range(0, len(wanted), size)]


class EvmChainSource:
    """Read access to one EVM chain through its endpoint pool."""

    def __init__(self, cfg: ChainConfig, pool: EndpointPool[EvmRpcClient] | None = None, *,
                 check_bloom: bool = True, scan_worker: bool | None = None) -> None:
        """``check_bloom=False`` believes empty ``eth_getLogs`` answers: only for a benchmark
        measuring what the bloom check costs, never in production (deposits can be lost).

        ``scan_worker``: whether ranges of at least :data:`SCAN_WORKER_MIN_BLOCKS` blocks
        are fetched and scanned by a second process (:mod:`chains.evm.scanworker`). None
        (the default): on when this process may run on two cores or more, every endpoint
        speaks HTTP, the source built its own pool, and ``WATCHER_EVM_SCAN_WORKER`` is not
        ``off``."""
        self._cfg = cfg
        self._check_bloom = check_bloom
        self._chain = str(cfg.id)
        if scan_worker is None:
            scan_worker = pool is None and _two_cores() and \
                os.environ.get("WATCHER_EVM_SCAN_WORKER", "auto") != "off"
        self._pool = pool if pool is not None else build_pool(cfg)
        self._want_worker = scan_worker and all(self._pool.client(n).url is not None
                                                for n in self._pool.names)
        self._workers: list[ScanWorker] = []
        if self._want_worker:
            # Now, while the daemon has no thread and no socket yet (the worker is forked).
            self._start_worker()
        self._assets = parse.Assets.from_config(cfg)
        self._log_filter_addresses = self._assets.token_contracts
        self._traces: bool | None = None if cfg.traces is not TraceMode.OFF else False
        if cfg.traces is TraceMode.ON:
            self._require_traces()
        self._plan_cache: ScanPlan | None = None
        self._started = False

    @property
    def pool(self) -> EndpointPool[EvmRpcClient]:
        return self._pool

    @property
    def scan_workers(self) -> list[ScanWorker]:
        """The processes scanning catch-up ranges, each a share of a range (none: in process)."""
        return list(self._workers)

    @property
    def traces_enabled(self) -> bool | None:
        """Whether internal transfers are traced; None until decided at start."""
        return self._traces

    def endpoint_states(self) -> Mapping[str, EndpointView]:
        return self._pool.states()

    @property
    def _plan(self) -> ScanPlan:
        """What to ask for each block and how to check it (fixed once traces are decided)."""
        plan = self._plan_cache
        if plan is None or plan.with_traces != bool(self._traces):
            plan = ScanPlan(self._assets, tuple(self._log_filter_addresses), bool(self._traces),
                            self._check_bloom)
            self._plan_cache = plan
        return plan

    def _require_traces(self) -> None:
        for name in self._pool.names:
            self._pool.client(name).require_traces = True

    # ------------------------------------------------------------ identity

    async def verify_identity(self) -> None:
        """Identifies every endpoint (chain id and, with traces on, the tracer) in one head
        round. An endpoint on another chain is set aside (state ``wrong_chain``), never
        followed; a RETRIABLE :class:`ChainError` is raised when none is alive."""
        await self._pool.refresh()
        if self._traces is None:
            # AUTO, decided once: on when every endpoint reached at start can trace.
            probes = await self._pool.ask_each(lambda c: c.can_trace(), what="trace probe")
            answered = {n: r for n, r in probes.items() if isinstance(r, bool)}
            if not answered:
                raise ChainError(ErrorKind.RETRIABLE,
                                 f"chain {self._chain}: no endpoint answered the trace probe")
            self._traces = all(answered.values())
            log.info("chain %s: traces %s", self._chain, "on" if self._traces else "off")
            if self._traces:
                self._require_traces()
        self._started = True

    def _start_worker(self) -> None:
        cfg = self._cfg
        assert cfg.chain_id is not None
        endpoints = []
        for name in self._pool.names:
            url = self._pool.client(name).url
            assert url is not None
            endpoints.append((name, url))
        init = WorkerInit(
            chain=self._chain, chain_id=cfg.chain_id, endpoints=tuple(endpoints),
            timeout_s=cfg.rpc_timeout_ms / 1000, connections=max(4, 2 * cfg.max_concurrency),
            blocks_per_request=cfg.blocks_per_request, max_concurrency=cfg.max_concurrency,
            key_size=20)
        pool = self._pool
        for _ in range(SCAN_WORKERS):
            worker = ScanWorker(init)
            worker.observe = lambda name, label, seconds: pool.client(name).observe_latency(
                label, seconds)
            try:
                worker.start()
            except Exception as exc:  # no process can be started: catch-up stays in process
                log.warning("chain %s: scan worker not started (%s)", self._chain,
                            type(exc).__name__)
                break
            self._workers.append(worker)

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.verify_identity()

    # ------------------------------------------------------------ heads

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
        calls: list[Call] = [("eth_getBlockByNumber", [hex(n), False])
                             for n in range(start, start + count)]

        async def op(c: EvmRpcClient) -> list[BlockRef]:
            known = c.known_head

            def decode(replies: list[Any]) -> list[BlockRef]:
                refs: list[BlockRef] = []
                for n, raw in enumerate(raise_errors(replies), start):
                    obj = answers.header(raw)
                    if obj is None:
                        if known is not None and n <= known:
                            raise NodeAnswerInvalid(
                                f"null for block {n} at or below its own head {known}",
                                check=AnswerCheck.NULL_BLOCK)
                        break  # beyond the node's tip
                    refs.append(parse.parse_header(obj, expect_number=n))
                return refs

            return await c.batch_raw_decoded(calls, decode)

        return await self._pool.ask(op, what=f"headers {start}+{count}")

    async def header_by_hash(self, block_hash: BlockHash) -> BlockRef | None:
        await self._ensure_started()

        def decode(obj: Any) -> BlockRef | None:
            return None if obj is None else parse.parse_header(obj, expect_hash=block_hash)

        return await self._pool.ask(
            lambda c: c.call_decoded("eth_getBlockByHash", [block_hash, False], decode),
            what="header by hash")

    async def canonical_hashes(self, heights: Sequence[int]) -> dict[str, dict[int, BlockHash]]:
        """For each identified endpoint (alive or lagging) that answered, the hash it has at
        each of ``heights`` in its canonical chain (heights it has no block at are left out).
        For confirmation quorums: a lagging endpoint may still vouch for an older block."""
        await self._ensure_started()
        wanted = sorted(set(heights))
        if not wanted:
            return {}
        calls: list[Call] = [("eth_getBlockByNumber", [hex(n), False]) for n in wanted]

        def decode(replies: list[Any]) -> dict[int, BlockHash]:
            out: dict[int, BlockHash] = {}
            for n, obj in zip(wanted, raise_errors(replies), strict=True):
                if obj is not None:
                    out[n] = parse.parse_header(obj, expect_number=n).hash
            return out

        answers = await self._pool.ask_each(lambda c: c.batch_decoded(calls, decode),
                                            self._pool.identified(), what="canonical hashes")
        return {n: a for n, a in answers.items() if not isinstance(a, ChainError)}

    # ------------------------------------------------------------ contents

    async def contents(self, refs: Sequence[BlockRef],
                       watched: WatchedAddressLookup) -> list[BlockContents]:
        await self._ensure_started()
        if not refs:
            return []
        workers = self._workers
        if workers and len(refs) >= SCAN_WORKER_MIN_BLOCKS and \
                getattr(watched, "generation", None) is not None and \
                all([await w.ready(watched) for w in workers]):
            done = await self._contents_by_worker(workers, refs, watched)
            if done is not None:
                return done
        size = max(1, min(self._cfg.blocks_per_request,
                          math.ceil(len(refs) / self._cfg.max_concurrency)))
        chunks = [refs[i:i + size] for i in range(0, len(refs), size)]
        gate = asyncio.Semaphore(self._cfg.max_concurrency)

        async def run(chunk: Sequence[BlockRef]) -> list[BlockContents]:
            async with gate:
                return await self._contents_chunk(chunk, watched)

        results = await _gather_or_cancel([run(c) for c in chunks])
        return [c for chunk_result in results for c in chunk_result]

    async def _contents_by_worker(self, workers: Sequence[ScanWorker], refs: Sequence[BlockRef],
                                  watched: WatchedAddressLookup) -> list[BlockContents] | None:
        """``refs`` fetched, checked and scanned, and their native candidates' receipts fetched
        and checked, by the workers (a contiguous share each) at the endpoint the pool picks
        (one attempt each, the pool's retries and failover); then, in process, the receipts
        that settle doubtful logs. None: scan in process instead."""

        plan = self._plan
        share = math.ceil(len(refs) / len(workers))
        parts = [(w, refs[i * share:(i + 1) * share]) for i, w in enumerate(workers)
                 if refs[i * share:(i + 1) * share]]

        async def op(c: EvmRpcClient) -> tuple[list[BlockContents | parse.ScannedBlock],
                                               set[TxId]] | None:
            tasks = [asyncio.ensure_future(w.scan(c.name, plan, part, watched))
                     for w, part in parts]
            try:
                results = await asyncio.gather(*tasks)
            except WorkerGone:
                return None
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            if any(r is None for r in results):
                return None  # the watched set changed meanwhile
            blocks = [b for r in results if r is not None for b in r[0]]
            succeeded: set[TxId] = set().union(*(r[1] for r in results if r is not None))
            return blocks, succeeded

        got = await self._pool.ask(op, what=f"contents of {len(refs)} blocks (scan worker)")
        if got is None:
            return None
        blocks, succeeded = got
        out: list[BlockContents] = []
        for block in blocks:
            if type(block) is parse.ScannedBlock:
                # Doubtful: the worker's logs answer was empty where the bloom says maybe.
                logs = await self._logs_from_receipts(block)
                parse.scan_logs(logs, block, watched, self._assets)
                out.append(BlockContents(ref=block.ref, transfers=block.transfers(succeeded)))
            else:
                assert type(block) is BlockContents
                out.append(block)
        return out

    async def _contents_chunk(self, refs: Sequence[BlockRef],
                              watched: WatchedAddressLookup) -> list[BlockContents]:
        try:
            scanned, doubtful = await self._scan(refs, watched)
        except RpcError as exc:
            if not exc.too_large or len(refs) == 1:
                raise
            half = len(refs) // 2
            log.info("chain %s: batch of %d blocks too large, splitting", self._chain, len(refs))
            return [*await self._contents_chunk(refs[:half], watched),
                    *await self._contents_chunk(refs[half:], watched)]
        for block in doubtful:
            # The bloom says matching logs may be there and the logs answer had none: only
            # the block's receipts, checked against its bloom, can say "none" for sure.
            logs = await self._logs_from_receipts(block)
            parse.scan_logs(logs, block, watched, self._assets)
        succeeded = await self._succeeded(scanned)
        return [BlockContents(ref=s.ref, transfers=s.transfers(succeeded)) for s in scanned]

    async def _scan(self, refs: Sequence[BlockRef], watched: WatchedAddressLookup
                    ) -> tuple[list[parse.ScannedBlock], list[parse.ScannedBlock]]:
        """One batch: each block by hash with its transactions, its token logs, its traces.
        Also the blocks whose empty logs answer the bloom does not let us believe."""
        plan = self._plan
        calls = plan.calls(refs)
        return await self._pool.ask(
            lambda c: c.batch_raw_decoded(calls, lambda r: plan.decode(r, refs, watched),
                                              contents=True),
            what=f"contents of {len(refs)} blocks")

    async def _logs_from_receipts(self, block: parse.ScannedBlock) -> list[Any]:
        bh = block.ref.hash
        bloom = verify.parse_bloom(block.logs_bloom, "block.logsBloom")
        txs = block.txs

        async def op(c: EvmRpcClient) -> list[Any]:
            try:
                return await c.call_decoded(
                    "eth_getBlockReceipts", [bh],
                    lambda r: verify.logs_of_receipts(r, txs, bh, bloom))
            except ChainError as exc:
                if exc.kind is not ErrorKind.FINAL:
                    raise
            # No eth_getBlockReceipts on this node: one receipt per transaction, one batch.
            calls: list[Call] = [("eth_getTransactionReceipt", [answers.tx_hash_of(tx)])
                                 for tx in txs]
            return await c.batch_decoded(
                calls, lambda r: verify.logs_of_receipts(raise_errors(r), txs, bh, bloom))

        return await self._pool.ask(op, what="receipts of a block with maybe-logs")

    async def _succeeded(self, scanned: Sequence[parse.ScannedBlock]) -> set[TxId]:
        """Txids of native candidates whose receipt reports success (one batch)."""
        wanted = parse.candidates_of(scanned)
        if not wanted:
            return set()
        calls = receipt_calls(wanted)
        return await self._pool.ask(
            lambda c: c.batch_decoded(calls, lambda r: succeeded_of(r, wanted)),
            what="receipts of native transfers")

    async def close(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            await worker.close()
        await self._pool.close()


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


def _two_cores() -> bool:
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) >= 2


def build_source(cfg: ChainConfig) -> EvmChainSource:
    return EvmChainSource(cfg)
