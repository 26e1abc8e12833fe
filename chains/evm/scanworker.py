"""A second process that fetches, checks and scans block contents during catch-up.

Why: catch-up is CPU-bound in one interpreter (HTTP, JSON, scans, Kafka, the core),
and the second core sat idle. The work that needs no order, fetching a range of
blocks by hash and checking and scanning the answers, moves here; the window, the
lifecycle, receipts of candidates and the Kafka transaction stay in the follower's
process, in order.

What does not change:

* Every check runs, the same code (:class:`chains.evm.adapter.ScanPlan`) on the
  same answers. A failed check comes back as the same :class:`NodeAnswerInvalid`
  (with its ``check``) and is raised inside the endpoint pool's ``ask``, so retries,
  failover, endpoint states and the rejected-answer metrics are the pool's, as in
  process. The pool chooses the endpoint; the worker makes one attempt at it.
* The watched set: the worker holds a copy of the keys taken at an index
  :attr:`~watcher.core.addresses.AddressIndex.generation`. A range is sent only
  when the worker's copy is of the current generation, and its answer is used only
  if the generation is still the same when it arrives; otherwise that range is
  scanned in process (and a fresh copy sent, at most once a second). A scan never
  uses a set older than the one the in-process path would have used.
* Empty-logs answers the bloom does not let us believe come back with their
  transactions, and their receipts are fetched and checked in process.

Failure: if the worker dies or answers nonsense, every range in flight fails with
a RETRIABLE :class:`ChainError` (retried by the pool) and the source stops using the
worker for good (logged once). The worker exits when its pipe closes, so a SIGKILL
of the daemon leaves nothing behind.

Round-trip latencies are measured in the worker and replayed into ``RPC_LATENCY``
by the daemon (the worker's own registry is never scraped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from chains.evm import parse
from chains.evm.errors import RpcError
from chains.evm.rpc import EvmRpcClient
from watcher.config import Endpoint
from watcher.errors import AnswerCheck, ChainError, ErrorKind, NodeAnswerInvalid
from watcher.runtime.gc_tuning import tune_for_throughput
from watcher.types import BlockContents, BlockRef, Transfer, TxId

log = logging.getLogger(__name__)

RESYNC_INTERVAL_S = 1.0
"""At most one fresh copy of the watched keys per second, per 100,000 keys (a copy costs
O(keys) on the daemon's event loop)."""

MAX_KEYS = 1_000_000
"""Above this many watched keys catch-up stays in process: copying them to the worker would
hold the daemon's event loop for too long at every change."""

KEYS_WAIT_S = 0.5
"""How long a range waits for the worker to take a fresh copy of the keys before it is
scanned in process instead."""


@dataclass(frozen=True, slots=True)
class WorkerInit:
    """Everything the worker needs, picklable: no config object, no transport."""

    chain: str
    chain_id: int
    endpoints: tuple[tuple[str, str], ...]
    """(name, url): the URL stays in memory, never in a message."""
    timeout_s: float
    connections: int
    blocks_per_request: int
    max_concurrency: int
    key_size: int


class WorkerGone(Exception):
    """The worker is not there (any more): scan in process. Never counted against a node."""


# ----------------------------------------------------------------- errors across the pipe


def _encode_error(exc: ChainError) -> tuple[Any, ...]:
    prefix = f"[{exc.kind.value}] {exc.endpoint}: " if exc.endpoint else ""
    text = str(exc)
    message = text[len(prefix):] if prefix and text.startswith(prefix) else text
    if isinstance(exc, NodeAnswerInvalid):
        return ("invalid", message, exc.check.value)
    if isinstance(exc, RpcError):
        return ("rpc", exc.kind.value, exc.code, exc.rpc_message, exc.too_large)
    return ("chain", exc.kind.value, message)


def _decode_error(data: tuple[Any, ...], endpoint: str) -> ChainError:
    match data:
        case ("invalid", str(message), str(check)):
            return NodeAnswerInvalid(message, endpoint, AnswerCheck(check))
        case ("rpc", str(kind), code, str(message), bool(too_large)):
            return RpcError(ErrorKind(kind), code, message, endpoint, too_large)
        case ("chain", str(kind), str(message)):
            return ChainError(ErrorKind(kind), message, endpoint)
    return ChainError(ErrorKind.RETRIABLE, "scan worker: unreadable error", endpoint)


# ----------------------------------------------------------------- the worker process


def _keys_from(blob: bytes, size: int) -> Any:
    from watcher.core.addresses import SMALL_SET_LIMIT, AddressIndex

    count = len(blob) // size
    if count <= SMALL_SET_LIMIT:
        return {blob[i * size:(i + 1) * size] for i in range(count)}
    index = AddressIndex(size, capacity=count * 2)
    for i in range(count):
        index.add(blob[i * size:(i + 1) * size])
    return index


def worker_main(conn: Connection, init: WorkerInit, parent_end: Connection | None = None) -> None:
    """The worker process: serves scan requests until its pipe closes.

    Forked, it first drops what it inherited and must not use: the daemon's end of the
    pipe (else the pipe would never close when the daemon dies), the daemon's running
    event loop and its signal wake-up fd. SIGINT is ignored (a terminal's Ctrl-C reaches
    the whole process group; the daemon closing the pipe is what stops the worker)."""
    if parent_end is not None:
        parent_end.close()
        asyncio.events._set_running_loop(None)
        asyncio.set_event_loop_policy(None)
        with contextlib.suppress(ValueError, OSError):
            signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forked before the daemon tuned its collector (at start-up, after the registrations):
    # with the interpreter's thresholds the worker ran ~200 collections per 4,000 blocks over
    # the logs' dicts and everything the daemon had imported (0.07 ms/block, bench/scan_cpu.py).
    tune_for_throughput()
    asyncio.run(_serve(conn, init))


async def _serve(conn: Connection, init: WorkerInit) -> None:
    observations: list[tuple[str, str, float]] = []

    def observer(name: str) -> Any:
        return lambda label, seconds: observations.append((name, label, seconds))

    clients = {name: EvmRpcClient(init.chain, Endpoint(name, url), chain_id=init.chain_id,
                                  timeout_s=init.timeout_s, connections=init.connections,
                                  observe=observer(name))
               for name, url in init.endpoints}
    state: dict[str, Any] = {"generation": None, "keys": set()}
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(None)

    loop.add_reader(conn.fileno(), readable)
    tasks: set[asyncio.Task[None]] = set()

    async def scan(rid: int, name: str, plan: Any, refs: list[BlockRef]) -> None:
        generation, keys = state["generation"], state["keys"]
        start = len(observations)
        try:
            client = clients[name]
            scanned, doubtful = await _scan_range(client, init, plan, refs, keys)
            succeeded = await _succeeded(client, init, scanned)
            reply = _ok_reply(rid, generation, scanned, doubtful, succeeded,
                              observations[start:])
        except ChainError as exc:
            reply = ("err", rid, _encode_error(exc), observations[start:])
        except Exception as exc:  # a bug here must not hang the daemon: it hears of it
            reply = ("crash", rid, type(exc).__name__)
        with contextlib.suppress(OSError, ValueError):
            conn.send(reply)

    try:
        while (msg := await inbox.get()) is not None:
            if msg[0] == "keys":
                _, generation, blob = msg
                state["keys"] = _keys_from(blob, init.key_size)
                state["generation"] = generation
                try:
                    conn.send(("keys", generation))
                except OSError:
                    break  # the daemon is gone
            elif msg[0] == "scan":
                _, rid, name, plan, refs = msg
                task = asyncio.create_task(scan(rid, name, plan, refs))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif msg[0] == "stop":
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients.values():
            await client.close()


Packed = tuple[int, str, str, int, list[tuple[Any, ...]]]
"""A settled block as it crosses the pipe: (number, hash, parent hash, timestamp, transfers
as :func:`_transfer_fields`)."""


def _transfer_fields(t: Transfer) -> tuple[Any, ...]:
    return (t.txid, t.locator, t.asset, t.token_contract, t.to_address, t.from_address,
            t.amount, t.decimals)


def _ok_reply(rid: int, generation: Any, scanned: Sequence[parse.ScannedBlock],
              doubtful: Sequence[parse.ScannedBlock], succeeded: set[TxId],
              observations: list[tuple[str, str, float]]) -> tuple[Any, ...]:
    """The worker's answer to a scan that succeeded, as it crosses the pipe.

    A block whose logs the worker could believe is settled here (its transfers, the native
    ones only if their receipt said success) and sent as plain tuples: pickling dataclasses
    goes through ``__getstate__`` in Python, which cost more CPU than the block's scan. A
    doubtful block (its empty logs answer must be settled by its receipts, in process)
    travels whole, with its transactions and the successes among its candidates."""
    doubtful_ids = {id(d) for d in doubtful}
    blocks: list[Packed | parse.ScannedBlock] = []
    for s in scanned:
        if id(s) in doubtful_ids:
            blocks.append(s)
            continue
        r = s.ref
        blocks.append((r.number, r.hash, r.parent_hash, r.timestamp,
                       [_transfer_fields(t) for t in s.transfers(succeeded)]))
    kept = {c.transfer.txid for d in doubtful for c in d.candidates} & succeeded
    return ("ok", rid, generation, blocks, kept, observations)


def _ok_result(reply: tuple[Any, ...]
               ) -> tuple[Any, list[BlockContents | parse.ScannedBlock], set[TxId],
                          list[tuple[str, str, float]]]:
    """(generation, blocks, succeeded, observations) of an :func:`_ok_reply`: each block
    settled (:class:`BlockContents`) or doubtful (a :class:`parse.ScannedBlock`, whose
    candidates that succeeded are in ``succeeded``). Raises ``TypeError`` or ``ValueError``
    for a reply of another shape."""
    _, _, generation, packed, succeeded, observations = reply
    if type(packed) is not list or type(succeeded) is not set:
        raise TypeError("scan reply")
    blocks: list[BlockContents | parse.ScannedBlock] = []
    for item in packed:
        if type(item) is tuple:
            number, hash_, parent, timestamp, transfers = item
            blocks.append(BlockContents(BlockRef(number, hash_, parent, timestamp),
                                        tuple([Transfer(*t) for t in transfers])))
        elif type(item) is parse.ScannedBlock:
            blocks.append(item)
        else:
            raise TypeError("scan reply block")
    return generation, blocks, succeeded, observations


async def _scan_range(client: EvmRpcClient, init: WorkerInit, plan: Any, refs: Sequence[BlockRef],
                      keys: Any) -> tuple[list[parse.ScannedBlock], list[parse.ScannedBlock]]:
    """The in-process chunking (``blocks_per_request`` a POST, ``max_concurrency`` at a time,
    a batch too large split in halves), against one endpoint, with ``plan``'s calls and
    checks (a :class:`chains.evm.adapter.ScanPlan`, sent with each range: traces may be
    decided after the worker started)."""
    size = max(1, min(init.blocks_per_request, math.ceil(len(refs) / init.max_concurrency)))
    gate = asyncio.Semaphore(init.max_concurrency)

    async def chunk(part: Sequence[BlockRef]) -> tuple[list[parse.ScannedBlock],
                                                        list[parse.ScannedBlock]]:
        try:
            calls = plan.calls(part)
            return await client.batch_raw_decoded(calls, lambda r: plan.decode(r, part, keys),
                                                  contents=True)
        except RpcError as exc:
            if not exc.too_large or len(part) == 1:
                raise
        half = len(part) // 2
        a, b = await chunk(part[:half]), await chunk(part[half:])
        return a[0] + b[0], a[1] + b[1]

    async def gated(part: Sequence[BlockRef]) -> tuple[list[parse.ScannedBlock],
                                                        list[parse.ScannedBlock]]:
        async with gate:
            return await chunk(part)

    tasks = [asyncio.ensure_future(gated(refs[i:i + size])) for i in range(0, len(refs), size)]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return ([s for r in results for s in r[0]], [s for r in results for s in r[1]])


async def _succeeded(client: EvmRpcClient, init: WorkerInit,
                     scanned: Sequence[parse.ScannedBlock]) -> set[TxId]:
    """The native candidates whose receipt says success, ``RECEIPTS_PER_REQUEST`` a POST."""
    from chains.evm.adapter import RECEIPTS_PER_REQUEST, receipt_calls, receipt_groups, succeeded_of

    wanted = parse.candidates_of(scanned)
    gate = asyncio.Semaphore(init.max_concurrency)

    async def one(group: Sequence[tuple[Any, TxId, int]]) -> set[TxId]:
        async with gate:
            return await client.batch_decoded(receipt_calls(group),
                                              lambda r: succeeded_of(r, group))

    found = await asyncio.gather(*(one(g) for g in receipt_groups(wanted, RECEIPTS_PER_REQUEST)))
    return set().union(*found)


# ----------------------------------------------------------------- the daemon's side


class ScanWorker:
    """The daemon's handle on one chain's scan worker (one event loop, not thread-safe)."""

    def __init__(self, init: WorkerInit) -> None:
        self._init = init
        self._conn: Connection | None = None
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._acked: int | None = None
        self._sent: int | None = None
        self._sent_at = -math.inf
        self._attached = False
        self._keys_acked: asyncio.Future[int] | None = None
        self.failed = False
        self.ranges = 0
        """Ranges whose scan came from the worker and was used."""
        self.observe: Any = None
        """``observe(endpoint, label, seconds)``: where the worker's latencies go."""

    def start(self) -> None:
        """Starts the process: forked where the platform can (no imports to repeat: it is
        ready in milliseconds, where a spawned interpreter took seconds of CPU on the
        benchmark machine), else spawned. Call it before the process starts threads (the
        chain source does, when it is built, before any Kafka or HTTP client exists)."""
        fork = "fork" in multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork") if fork else multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=True)
        args = (child, self._init, parent if fork else None)
        self._proc = ctx.Process(target=worker_main, args=args, daemon=True,
                                 name=f"scan-{self._init.chain}")
        self._proc.start()
        child.close()
        self._conn = parent

    def _attach(self) -> bool:
        """Listens to the worker from the running event loop (once)."""
        if not self._attached and self._conn is not None:
            asyncio.get_running_loop().add_reader(self._conn.fileno(), self._readable)
            self._attached = True
        return self._attached

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        return self._proc

    def usable(self, watched: Any) -> bool:
        """Whether a range may be sent now: the worker runs and holds the current keys.
        Sends a fresh copy of them when they changed (at most once a second)."""
        if self.failed or self._conn is None or not self._attach():
            return False
        generation = watched.generation
        if self._acked == generation:
            return True
        size = len(watched)
        if size > MAX_KEYS:
            return False
        interval = RESYNC_INTERVAL_S * max(1.0, size / 100_000)
        if self._sent != generation and time.monotonic() - self._sent_at >= interval:
            self._sent, self._sent_at = generation, time.monotonic()
            self._keys_acked = asyncio.get_running_loop().create_future()
            try:
                self._send(("keys", generation, b"".join(watched)))
            except WorkerGone:
                return False
        return False

    async def ready(self, watched: Any, wait_s: float = KEYS_WAIT_S) -> bool:
        """:meth:`usable`, waiting up to ``wait_s`` for a copy of the keys just sent to be
        taken (a thousand keys take milliseconds; millions, longer than a range in process)."""
        if self.usable(watched):
            return True
        acked = self._keys_acked
        if acked is None or self._sent != watched.generation or self.failed:
            return False
        with contextlib.suppress(TimeoutError, WorkerGone):
            await asyncio.wait_for(asyncio.shield(acked), wait_s)
        return self.usable(watched)

    async def scan(self, endpoint: str, plan: Any, refs: Sequence[BlockRef], watched: Any
                   ) -> tuple[list[BlockContents | parse.ScannedBlock], set[TxId]] | None:
        """(blocks, succeeded) of ``refs`` at ``endpoint``: each block settled (its
        :class:`BlockContents`) or, when its empty logs answer must be settled by its
        receipts, the :class:`parse.ScannedBlock` to finish, with the txids of its native
        candidates that succeeded in ``succeeded``. None when the watched set changed
        meanwhile (scan in process). Raises the endpoint's error as the pool expects it, and
        :class:`WorkerGone` when the worker is not there (scan in process)."""
        if self.failed:
            raise WorkerGone("failed before")
        rid = self._next_id = self._next_id + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            self._send(("scan", rid, endpoint, plan, list(refs)))
            reply = await future
        finally:
            self._pending.pop(rid, None)
        if reply[0] == "ok":
            try:
                generation, blocks, succeeded, observations = _ok_result(reply)
            except (TypeError, ValueError):
                self._fail("scan worker: unreadable reply")
                raise WorkerGone("unreadable reply") from None
            self._replay(observations)
            if generation != watched.generation:
                return None
            if len(blocks) != len(refs) or any(b.ref != r for b, r in zip(blocks, refs, strict=True)):
                self._fail("scan worker: reply of other blocks")
                raise WorkerGone("reply of other blocks")
            self.ranges += 1
            if self.ranges == 1:
                log.info("chain %s: catch-up ranges fetched and scanned by the scan worker",
                         self._init.chain)
            return blocks, succeeded
        if reply[0] == "err":
            self._replay(reply[3])
            raise _decode_error(reply[2], endpoint)
        self._fail(f"scan worker error {reply[2]}")
        raise WorkerGone(reply[2])

    def _replay(self, observations: list[tuple[str, str, float]]) -> None:
        if self.observe is not None:
            for name, label, seconds in observations:
                self.observe(name, label, seconds)

    def _send(self, msg: tuple[Any, ...]) -> None:
        assert self._conn is not None
        try:
            self._conn.send(msg)
        except (OSError, ValueError) as exc:
            self._fail(f"scan worker pipe: {type(exc).__name__}")
            raise WorkerGone(type(exc).__name__) from None

    def _readable(self) -> None:
        conn = self._conn
        assert conn is not None
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "keys":
                    self._acked = msg[1]
                    if self._keys_acked is not None and not self._keys_acked.done():
                        self._keys_acked.set_result(msg[1])
                    continue
                future = self._pending.get(msg[1])
                if future is not None and not future.done():
                    future.set_result(msg)
        except (EOFError, OSError):
            self._fail("scan worker exited")

    def _fail(self, why: str) -> None:
        if not self.failed:
            log.warning("chain %s: %s; catch-up scans in process from now on", self._init.chain, why)
        self.failed = True
        if self._conn is not None and self._attached:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._conn.fileno())
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerGone(why))
        if self._keys_acked is not None and not self._keys_acked.done():
            self._keys_acked.set_result(-1)  # whoever waits for it sees failed

    async def close(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = None
        if conn is not None:
            if self._attached:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(conn.fileno())
            with contextlib.suppress(Exception):
                conn.send(("stop",))
            conn.close()
        if proc is not None:
            await asyncio.to_thread(proc.join, 2)
            if proc.is_alive():
                proc.kill()
                await asyncio.to_thread(proc.join, 1)
