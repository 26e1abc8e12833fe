"""The withdrawal runtime of one chain: carries out what the pure book decides.

One :class:`WithdrawalRunner` per chain, run only by the replica that leads the chain
(the one that follows its deposits). It reads ``payments.withdrawal-requests`` by manual
assignment (``read_committed``, every partition, no consumer group) and commits, in one
Kafka transaction of its own transactional id ``<prefix>-withdrawals-<chain>``:

* the ``payments.withdrawals`` events of the step,
* the checkpoint ``withdrawals`` in ``watcher.checkpoints.<chain>`` (compacted): the
  input offsets (next offset per partition), the hot-wallet block scan cursor and the
  live :meth:`WithdrawalBook.snapshot` (requests in flight, counters: small, whatever
  the history),
* the settled records of the step (one per request id that left the live state, was
  refused after authentication or was claimed by another chain) on the chain's compacted
  ``watcher.checkpoints.<chain>.withdrawals`` (:mod:`watcher.kafka.settled`), loaded when
  a runner starts (from the newest snapshot of their index, written every
  :data:`INDEX_EVERY` records, and the records after it), so that an exact repeat of a
  request paid long ago adds no event.

So the input offsets, the events and the state are consume-process-produce atomic: the
offsets live in the checkpoint instead of a group's ``__consumer_offsets`` (same
atomicity as ``send_offsets_to_transaction``, and a takeover reads them with the state
it belongs to). A zombie leader's producer is fenced by the next leader's.

Routing: every chain's runner reads every request; a record is handled by the chain its
``chain`` field names when that chain has withdrawals configured, else (unreadable,
no or unknown chain) by the *primary* chain (the smallest configured chain id), so each
record gets exactly one verdict. Others' records move the offset, and claim their id:
a request another chain accepts or refuses after authentication is
:meth:`WithdrawalBook.claim` ed here too (the contract's duplicate rule: one
``request_id``, one content, across chains). Every runner reaches the same claims, since
each evaluates the same records in the same order (a request's id is its record key, so
every record of one id is in one partition, read in offset order).

Order: records are decided in the order of :class:`~watcher.withdrawals.order.RequestOrder`
(by their timestamps across partitions, within a bounded wait), not in fetch order, so
that the rolling 24-hour limit charges requests in the same order whoever decides them.

Guarantees carried over from the book (see :mod:`watcher.core.withdrawals`):

* decisions are carried out depth first; a :class:`Commit` is a transaction, and the end
  of each observation (an input record, a chain round) is one too;
* signed bytes are committed before they are broadcast; after a restart
  :meth:`WithdrawalBook.resume` broadcasts the same bytes again;
* a node failure never stops the loop: the decision is kept and carried out again next
  round; a commit that fails sends the runner back to its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import orjson
import structlog

from watcher.config import ChainConfig, ChainWithdrawals
from watcher.core.batching import batches_due
from watcher.core.settled import SettledIndex
from watcher.core.withdrawals import (
    TERMINAL,
    Bind,
    Broadcast,
    BroadcastOutcome,
    CheckFunds,
    Commit,
    Decision,
    Emit,
    ReconcileNonce,
    RequestId,
    Sign,
    SnapshotError,
    WithdrawalBook,
    WithdrawalEvent,
    WithdrawalEventType,
    WithdrawalState,
)
from watcher.errors import ChainError, ErrorKind, SignerError, SinkError
from watcher.kafka.client import Consumed
from watcher.kafka.registrations import DeadLetters
from watcher.metrics import (
    HOT_WALLET_LOW_THRESHOLD,
    WITHDRAWAL_BATCHED_REQUESTS,
    WITHDRAWAL_BATCHES,
    WITHDRAWAL_CONFIRMATION_SECONDS,
    WITHDRAWAL_EVENTS,
    WITHDRAWAL_NONCE_GAP,
    WITHDRAWAL_REPLACEMENTS,
    WITHDRAWAL_REQUESTS,
    WITHDRAWAL_SENDS_REFUSED,
    WITHDRAWAL_STATE_BYTES,
    WITHDRAWAL_TO_BROADCAST,
    WITHDRAWAL_TO_CONFIRMED,
    WITHDRAWALS_BY_STATE,
    WITHDRAWALS_GATHERING,
    WITHDRAWALS_STUCK,
    WITHDRAWALS_WAITING_FUNDS,
)
from watcher.ports import (
    EvmHotWalletNode,
    HotWalletNode,
    OutRecord,
    RequestSource,
    SettledRecords,
    Signer,
    TransactionalSink,
    UtxoHotWalletNode,
)
from watcher.runtime.follower import FollowerStatus
from watcher.types import Address, BlockHash, ChainHead, ChainId
from watcher.withdrawals.events import rejection_record, withdrawal_record
from watcher.withdrawals.families import BatchPayments, EvmPayments, Payments, UtxoPayments
from watcher.withdrawals.intake import Accepted, DeadLetter, IntakePolicy, Rejected, Repeat, evaluate
from watcher.withdrawals.order import RequestOrder
from watcher.withdrawals.policy import machine_config

log = structlog.get_logger("watcher.withdrawals")

CHECKPOINT_NAME = "withdrawals"
"""Key of the runner's checkpoint in ``watcher.checkpoints.<chain>``."""
STATE_VERSION = 2
"""2: the book's snapshot holds live state only (settled records beside it). 1 still loads."""
DEAD_LETTER_SOURCE = "withdrawal-requests"
MAX_BLOCKS_PER_ROUND = 200
BALANCE_EVERY_S = 15.0
INDEX_EVERY = 65_536
"""Settled records between two snapshots of the settled index (24 bytes an id each)."""


def route(value: bytes | None, configured: frozenset[str], primary: ChainId) -> str:
    """The chain whose runner gives the record its verdict: the one its ``chain`` field
    names when that chain has withdrawals configured, else the primary chain."""
    if value is None:
        return primary
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError:
        return primary
    chain = obj.get("chain") if isinstance(obj, dict) else None
    return chain if isinstance(chain, str) and chain in configured else primary


@dataclass(frozen=True, slots=True)
class RunnerTopics:
    requests: str
    withdrawals: str


def payments_for(chain: ChainConfig, cw: ChainWithdrawals, policy: IntakePolicy, signer: Signer,
                 node: HotWalletNode) -> Payments:
    """The family strategy of a chain: EVM (nonce and gas) or UTXO (coins and fee rate),
    chosen by the chain's family; ``node`` is that family's adapter (the composition root
    builds it)."""
    from chains.bitcoin.networks import network
    from watcher.config import Family

    if chain.family is Family.EVM:
        assets = {a.symbol: a.token_contract for a in policy.chains[chain.id].assets.values()}
        return EvmPayments(chain=chain, cw=cw, signer=signer, node=cast(EvmHotWalletNode, node),
                           assets=assets)
    if chain.network is None:
        raise ValueError(f"chain {chain.id}: a UTXO chain needs its network")
    return UtxoPayments(chain=chain, cw=cw, signer=signer, node=cast(UtxoHotWalletNode, node),
                        network=network(chain.network))


class WithdrawalRunner:
    """Intake, signing, broadcasting and confirmation of one chain's withdrawals (EVM or
    UTXO: what differs is in :mod:`watcher.withdrawals.families`)."""

    def __init__(self, *, chain: ChainConfig, cw: ChainWithdrawals, policy: IntakePolicy,
                 primary: ChainId, topics: RunnerTopics, signer: Signer, node: HotWalletNode,
                 sink: TransactionalSink, requests: RequestSource, dead_letters: DeadLetters,
                 settled: SettledRecords, order: RequestOrder | None = None,
                 clock: Callable[[], float] = time.time, payments: Payments | None = None) -> None:
        self.chain = chain.id
        self._ccfg = chain
        self._cw = cw
        self._policy = policy
        self._configured = frozenset(policy.chains)
        self._primary = primary
        self._topics = topics
        self._signer = signer
        self._node = node
        self.sink = sink
        self._requests = requests
        self._dead_letters = dead_letters
        self._settled = settled
        self._order = order if order is not None else RequestOrder()
        self._partitions: list[int] = []
        self._since_index = 0
        """Settled records committed since the last index snapshot (or read past it)."""
        self._clock = clock
        self._mcfg = machine_config(cw, chain.family)
        self.family: Payments = payments or payments_for(chain, cw, policy, signer, node)
        # A batch recorded in the book is signed as one whatever the configuration says now;
        # the configuration only decides whether new requests are gathered.
        self._batcher: BatchPayments | None = (self.family if isinstance(self.family, UtxoPayments)
                                               else None)
        self._batch = cw.batch if self._batcher is not None else None
        self._gathering: dict[RequestId, int] = {}
        """Batching: requests waiting for company -> tip height when they first waited. In
        memory only: after a restart :meth:`WithdrawalBook.resume` asks for them again."""
        self.hot_address: Address = self.family.hot_address
        self._assets = dict(policy.chains[chain.id].assets)
        self.book = WithdrawalBook(chain.id, self._mcfg)
        self._offsets: dict[int, int] = {}
        self._scanned: list[tuple[int, BlockHash]] = []
        self._out: list[OutRecord] = []
        self._out_events: list[WithdrawalEvent] = []
        self._retry: list[Decision] = []
        self._committed: bytes | None = None
        self._tip = 0
        self.status: FollowerStatus | None = None
        """The chain's status, where the open withdrawals are shown (set by the app)."""
        self._balances_at = 0.0
        self.started = False

    # --------------------------------------------------------- state

    def _state(self, snapshot: bytes) -> bytes:
        return orjson.dumps({
            "version": STATE_VERSION, "chain": self.chain,
            "offsets": {str(p): o for p, o in sorted(self._offsets.items())},
            "scanned": [[n, h] for n, h in self._scanned],
            "book": orjson.Fragment(snapshot),
            "coins": self.family.state(),
        })

    def _load(self, data: bytes | None, settled: SettledIndex) -> None:
        """From the last checkpoint and the committed settled records (``settled``, kept
        across a reload: the book adds to it only once a commit succeeded)."""
        self._out, self._out_events, self._retry = [], [], []
        self._order.clear()
        self._committed = data
        if data is None:
            self.book = WithdrawalBook(self.chain, self._mcfg, settled)
            self._offsets, self._scanned = {}, []
            self.family.load(None)
            return
        try:
            raw = orjson.loads(data)
            if raw.get("version") not in (1, STATE_VERSION) or raw.get("chain") != self.chain:
                raise SnapshotError(f"withdrawal checkpoint of {self.chain}: version "
                                    f"{raw.get('version')!r} of chain {raw.get('chain')!r}")
            self.book = WithdrawalBook.restore(orjson.dumps(raw["book"]), self.chain, self._mcfg,
                                               settled)
            self._offsets = {int(p): int(o) for p, o in raw["offsets"].items()}
            self._scanned = [(int(n), BlockHash(str(h))) for n, h in raw["scanned"]]
            self.family.load(raw.get("coins"))
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
            raise SnapshotError(f"withdrawal checkpoint of {self.chain} is unreadable: "
                                f"{type(exc).__name__}") from exc

    # --------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Fences the previous writer, restores the checkpoint, positions the consumer and
        takes up what was under way (the recorded bytes are broadcast again)."""
        await self.sink.start()
        await self._settled.ensure()
        checkpoint = await self.sink.load_checkpoint(CHECKPOINT_NAME)
        started = time.perf_counter()
        loaded = await self._settled.load()
        self._load(checkpoint, loaded.index)
        # Many records read past the last index snapshot: the next commit writes one.
        self._since_index = loaded.read
        log.info("withdrawals: state loaded", chain=self.chain, settled=len(loaded.index),
                 index_seq=loaded.seq, records_read=loaded.read,
                 seconds=round(time.perf_counter() - started, 3))
        self._partitions = await self._requests.start()
        await self._position()
        WITHDRAWAL_SENDS_REFUSED.labels(self.chain)  # exported at 0 from the start
        if self._batch is not None:
            WITHDRAWAL_BATCHES.labels(self.chain)
            WITHDRAWAL_BATCHED_REQUESTS.labels(self.chain)
            WITHDRAWALS_GATHERING.labels(self.chain).set(0)
        for symbol, limits in self._cw.assets.items():
            HOT_WALLET_LOW_THRESHOLD.labels(self.chain, symbol).set(float(limits.low_balance))
        head = await self._node.head()
        self._tip = head.number
        if not self._scanned:
            self._scanned = [await self._scan_origin(head)]
        self.started = True
        log.info("withdrawals: started", chain=self.chain, hot_wallet=self.hot_address,
                 in_flight=len(self.book.withdrawals()), signer=self._signer.name)
        await self._settle([self.book.resume()])

    async def _scan_origin(self, head: ChainHead) -> tuple[int, BlockHash]:
        """Where the hot-wallet scan starts on a first start (no checkpoint): the tip on EVM
        (nonces come from the node's counts), but the chain's ``start_block`` on a UTXO chain
        when configured, since coins received before the first start are only known from
        the blocks that created them."""
        start = self._ccfg.start_block
        if self._mcfg.uses_nonces or start is None or start > head.number or start < 1:
            return head.number, head.hash
        blk = await self._node.block(start - 1)
        if blk is None:
            return head.number, head.hash
        return blk.number, blk.hash

    async def _position(self) -> None:
        self._order.clear()  # held records are read again from the committed offsets
        await self._requests.seek_to_beginning()
        for p, o in self._offsets.items():
            self._requests.seek(p, o)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._requests.stop()
        with contextlib.suppress(Exception):
            await self.sink.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: input records, then a chain round, each committed. A FENCED sink
        raises (another replica leads); other commit failures go back to the checkpoint."""
        poll_ms = max(50, self._ccfg.poll_interval_ms)
        while not stop.is_set():
            try:
                await self.step(poll_ms)
            except SinkError as exc:
                if exc.kind is ErrorKind.FENCED:
                    raise
                log.warning("withdrawals: commit failed; back to the last checkpoint",
                            chain=self.chain, error=str(exc))
                await asyncio.sleep(poll_ms / 1000)
                await self._reload()

    async def step(self, poll_ms: int = 100) -> None:
        """One batch of input records (group-committed: see :meth:`_settle`), then one
        chain round."""
        waiting: list[list[Decision]] = []
        self._order.add(await self._requests.fetch(timeout_ms=poll_ms, max_records=200),
                        int(self._clock() * 1000))
        if self._order.held():
            ready = self._order.release(self._partitions, await self._requests.behind(),
                                        int(self._clock() * 1000))
            for rec in ready:
                waiting.extend(await self._record(rec))
        await self._settle(waiting)
        await self._round()

    async def _settle(self, waiting: list[list[Decision]]) -> None:
        """Commits, then carries out what waited behind a :class:`Commit`, until nothing
        waits; the last commit ends the observation.

        A group commit: the observations of a batch each run up to their first barrier,
        then one transaction makes all of it durable, then each goes on. Nothing after a
        barrier is carried out before a commit that covers the state at that barrier (it
        covers more: later observations' changes, with their events), so the book's
        ordering holds with one transaction per barrier level instead of per request.

        Only intake observations (``accept``, ``reject``) and the continuations themselves
        run while a barrier waits: none of them broadcasts before a barrier of its own.
        ``tip``, ``blocks_removed`` and ``resume`` decide ``Broadcast`` of recorded bytes
        with no barrier before it, so they are only ever called once nothing waits (else
        they could send bytes signed a moment ago and not committed yet)."""
        while True:
            await self._commit()
            if not waiting:
                return
            later: list[list[Decision]] = []
            for rest in waiting:
                more = await self._carry(rest)
                if more is not None:
                    later.append(more)
            waiting = later

    async def _barrier(self, waiting: list[list[Decision]]) -> None:
        """Settles only when something waits behind a barrier (else the round's final
        commit covers it: one transaction per round, not per block)."""
        if waiting:
            await self._settle(waiting)

    async def _reload(self) -> None:
        self._load(await self.sink.load_checkpoint(CHECKPOINT_NAME), self.book.settled)
        await self._position()
        await self._settle([self.book.resume()])

    # --------------------------------------------------------- intake

    async def _record(self, rec: Consumed) -> list[list[Decision]]:
        """The verdict on one record; returns what waits behind a commit barrier."""
        self._offsets[rec.partition] = rec.offset + 1
        judge = route(rec.value, self._configured, self._primary)
        if judge != self.chain:
            self._claim(rec, judge)
            return []
        rest: list[Decision] | None = None
        verdict = evaluate(rec.value, rec.timestamp_ms, self._policy, {self.chain: self.book})
        if isinstance(verdict, DeadLetter):
            WITHDRAWAL_REQUESTS.labels(self._label(None), "dead_letter").inc()
            # Not transactional: written before the offset commits, so a crash can write it
            # twice (same source partition and offset: readers dedup), never lose it.
            await self._dead_letters.write(source=DEAD_LETTER_SOURCE, source_topic=rec.topic,
                                           partition=rec.partition, offset=rec.offset,
                                           key=rec.key, value=rec.value, error=verdict.error)
        elif isinstance(verdict, Rejected):
            WITHDRAWAL_REQUESTS.labels(self._label(verdict.chain), verdict.reason.value).inc()
            self._out.append(rejection_record(self._topics.withdrawals, rec.key, verdict,
                                              self._clock()))
            if verdict.remember_in == self.chain and verdict.request_id is not None:
                rest = await self._carry(self.book.reject(RequestId(verdict.request_id),
                                                          verdict.digest))
        elif isinstance(verdict, Repeat):
            WITHDRAWAL_REQUESTS.labels(self.chain, "repeat").inc()
        elif isinstance(verdict, Accepted):
            WITHDRAWAL_REQUESTS.labels(self.chain, "accepted").inc()
            rest = await self._carry(self.book.accept(verdict.request))
        return [] if rest is None else [rest]

    def _claim(self, rec: Consumed, judge: str) -> None:
        """Another chain's runner gives the record its verdict; when that verdict takes the
        request id (accepted, or refused after authentication), it is taken here too."""
        if judge not in self._configured:
            return
        verdict = evaluate(rec.value, rec.timestamp_ms, self._policy, {self.chain: self.book})
        if isinstance(verdict, Accepted) and verdict.chain == judge:
            self.book.claim(verdict.request.request_id, verdict.request.digest, verdict.chain)
        elif (isinstance(verdict, Rejected) and verdict.remember_in == judge
              and verdict.request_id is not None):
            self.book.claim(RequestId(verdict.request_id), verdict.digest, verdict.remember_in)

    def _label(self, chain: str | None) -> str:
        return chain if chain is not None and chain in self._configured else "unknown"

    # --------------------------------------------------------- the chain

    async def _round(self) -> None:
        """Postponed decisions, new blocks, the tip; each settled before the next."""
        retry, self._retry = self._retry, []
        await self._barrier(await self._carry_all(retry))
        try:
            head = await self._node.head()
            await self._scan(head)
        except ChainError as exc:
            log.warning("withdrawals: chain round failed; next round retries", chain=self.chain,
                        error=str(exc))
            return
        self._tip = head.number
        finalized = head.finalized_number
        if finalized is None:
            finalized = head.number - self._ccfg.finality_depth
        await self._settle(await self._carry_all(
            self.book.tip(head.number, finalized if finalized >= 0 else None)))
        if self._batch is not None:
            if self._gathering:
                await self._settle(await self._pay_gathered())
            WITHDRAWALS_GATHERING.labels(self.chain).set(len(self._gathering))
        if self._clock() - self._balances_at >= BALANCE_EVERY_S:
            with contextlib.suppress(ChainError):
                await self._balances()

    async def _scan(self, head: ChainHead) -> None:
        """The hot wallet's transactions in the blocks since the last round, parent links
        checked; blocks that left the canonical chain are reported removed."""
        removed: list[BlockHash] = []
        self.family.before_scan()
        if self._scanned and head.number <= self._scanned[-1][0]:
            known = dict(self._scanned).get(head.number)
            if known == head.hash:
                return
            while self._scanned and self._scanned[-1][0] >= head.number:
                removed.append(self._scanned.pop()[1])
        n = self._scanned[-1][0] + 1 if self._scanned else head.number
        budget = MAX_BLOCKS_PER_ROUND
        while n <= head.number and budget > 0:
            blk = await self._node.block(n)
            if blk is None:
                break
            if self._scanned and blk.parent_hash != self._scanned[-1][1]:
                num, h = self._scanned.pop()
                removed.append(h)
                n = num
                continue
            if removed:
                await self._removed(removed)
                removed = []
            self.family.block_added(blk)
            await self._barrier(await self._carry_all(self.book.block_added(blk.number, blk.hash,
                                                                            blk.spends)))
            self._scanned.append((blk.number, blk.hash))
            del self._scanned[:-self._ccfg.reorg_window]
            self.family.prune(self._scanned[0][0])
            n += 1
            budget -= 1
        if removed:
            await self._removed(removed)

    async def _removed(self, removed: list[BlockHash]) -> None:
        self.family.blocks_removed(removed)
        await self._barrier(await self._carry_all(self.book.blocks_removed(removed)))

    # --------------------------------------------------------- decisions

    async def _carry(self, decisions: Sequence[Decision]) -> list[Decision] | None:
        """Depth first, up to the first :class:`Commit` (here or in what a decision led to):
        returns what comes after it, to be carried out once committed (None: no barrier was
        met). A decision a node or the signer failed is carried out again next round."""
        for i, d in enumerate(decisions):
            if isinstance(d, Commit):
                return list(decisions[i + 1:])
            try:
                rest = await self._do(d)
            except (ChainError, SignerError) as exc:
                log.warning("withdrawals: decision postponed", chain=self.chain,
                            decision=type(d).__name__, request_id=getattr(d, "request_id", None),
                            error=str(exc))
                if d not in self._retry:
                    self._retry.append(d)
                continue
            if rest is not None:
                return rest + list(decisions[i + 1:])
        return None

    async def _carry_all(self, decisions: Sequence[Decision]) -> list[list[Decision]]:
        rest = await self._carry(decisions)
        return [] if rest is None else [rest]

    async def _do(self, d: Decision) -> list[Decision] | None:
        """Carries out one decision; what it leads to up to a barrier (see :meth:`_carry`)."""
        book = self.book
        if isinstance(d, Emit):
            self._out.append(withdrawal_record(self._topics.withdrawals, self.chain, d.event,
                                               self._clock(), null_nonce=not self._mcfg.uses_nonces))
            self._out_events.append(d.event)
        elif isinstance(d, Bind):
            pass  # recorded in the book; effective with the Commit that follows
        elif isinstance(d, CheckFunds):
            if self._batch is not None:
                # Gathered, paid with others at the end of a round (:meth:`_pay_gathered`).
                w = book.get(d.request_id)
                if w is not None and w.binding is None and w.state not in TERMINAL:
                    self._gathering.setdefault(d.request_id, self._tip)
                return None
            available, inputs = await self.family.can_pay(book, d.request_id, self._tip)
            return await self._carry(book.funds(d.request_id, available, inputs))
        elif isinstance(d, ReconcileNonce):
            latest, pending = await self.family.nonce_counts()
            rest = await self._carry(book.nonce_counts(latest, pending))
            WITHDRAWAL_NONCE_GAP.labels(self.chain).set(book.nonces.last_gap)
            return rest
        elif isinstance(d, Sign):
            return await self._sign(d)
        elif isinstance(d, Broadcast):
            outcome = await self._node.send_raw(d.raw, d.txid)
            if outcome is BroadcastOutcome.REFUSED:
                WITHDRAWAL_SENDS_REFUSED.labels(self.chain).inc()
                log.warning("withdrawals: every node refuses the payment; the same bytes are "
                            "sent again later (stuck until then)", chain=self.chain,
                            request_id=d.request_id, txid=d.txid)
            else:
                log.info("withdrawals: broadcast", chain=self.chain, request_id=d.request_id,
                         txid=d.txid, again=d.again, outcome=outcome.value)
            return await self._carry(book.broadcast_result(d.request_id, d.txid, outcome,
                                                           self._tip))
        return None

    async def _pay_gathered(self) -> list[list[Decision]]:
        """The gathered requests that are due (:func:`batches_due`): each group is bound
        as one batch to the inputs coin selection finds for it (the longest prefix that
        can be paid; the rest wait for funds, and are gathered again)."""
        assert self._batch is not None and self._batcher is not None
        book = self.book
        waiting: list[list[Decision]] = []
        for group in batches_due(self._gathering, self._tip, self._batch.max_outputs,
                                 self._batch.max_wait_blocks):
            live = []
            for rid in group:
                self._gathering.pop(rid, None)
                w = book.get(rid)
                if w is not None and w.binding is None and w.state in (
                        WithdrawalState.ACCEPTED, WithdrawalState.WAITING_FUNDS):
                    live.append(rid)
            try:
                if len(live) == 1:
                    available, inputs = await self.family.can_pay(book, live[0], self._tip)
                    paid = tuple(live) if available else ()
                else:
                    paid, inputs = await self._batcher.can_pay_batch(book, live, self._tip)
            except (ChainError, SignerError) as exc:
                log.warning("withdrawals: batch postponed", chain=self.chain, error=str(exc))
                for rid in live:
                    self._gathering.setdefault(rid, self._tip)
                continue
            ds: list[Decision] = []
            for rid in live:
                if rid not in paid:
                    ds.extend(book.funds(rid, False))
            bound = 0
            if len(paid) == 1:
                ds.extend(book.funds(paid[0], True, inputs))
                bound = 1
            elif paid and inputs:
                log.info("withdrawals: batch bound", chain=self.chain, requests=len(paid),
                         inputs=len(inputs))
                ds.extend(book.funds_batch(paid, inputs))
                bound = len(paid)
            if bound:
                WITHDRAWAL_BATCHES.labels(self.chain).inc()
                WITHDRAWAL_BATCHED_REQUESTS.labels(self.chain).inc(bound)
            waiting.extend(await self._carry_all(ds))
        return waiting

    async def _sign(self, d: Sign) -> list[Decision] | None:
        w = self.book.get(d.request_id)
        if w is None or w.binding != d.binding or w.state in TERMINAL:
            return None  # decided before a rebinding or a settlement: nothing to sign any more
        if w.batch:
            if self._batcher is None:
                raise ValueError(f"chain {self.chain}: a batch on a family that does not batch")
            signed = await self._batcher.sign_batch(self.book.members(w), d)
        else:
            signed = await self.family.sign(w, d)
        if signed is None:
            # No room for a bump (fee cap, or UTXO change too small): the same bytes go out
            # again, which also restarts the stuck count instead of re-deciding every round.
            tx = w.latest
            if tx is None:
                return None
            return await self._do(Broadcast(d.request_id, tx.txid, tx.raw, again=True))
        return await self._carry(self.book.signed(d.request_id, signed))

    async def _balances(self) -> None:
        self._balances_at = self._clock()
        await self.family.balances()

    # --------------------------------------------------------- commit

    async def _commit(self) -> None:
        """Events, settled records and state so far in one transaction; nothing when
        nothing changed."""
        changes = self.book.take_changes()
        state = self._state(changes.snapshot)
        if not self._out and not changes.records and state == self._committed:
            await self._maybe_index()
            return
        settled = [OutRecord(self._settled.topic, rid.encode(), value)
                   for rid, value in changes.records.items()]
        await self.sink.commit([*self._out, *settled], CHECKPOINT_NAME, state)
        self.book.changes_committed()
        self._committed = state
        WITHDRAWAL_STATE_BYTES.labels(self.chain).observe(
            len(state) + sum(len(r.key) + len(r.value or b"") for r in settled))
        self._since_index += len(settled)
        events, self._out, self._out_events = self._out_events, [], []
        now = self._clock()
        for ev in events:
            self._count(ev, now)
        self._gauges()
        await self._maybe_index()

    async def _maybe_index(self) -> None:
        """Every :data:`INDEX_EVERY` settled records, a snapshot of the settled index in a
        transaction of its own (with the unchanged checkpoint), so that a start reads the
        index and the records after it instead of every record ever written."""
        if self._since_index < INDEX_EVERY or self._committed is None:
            return
        covered = await self._settled.end_offset()
        records = self._settled.index_records(self.book.settled, covered)
        await self.sink.commit(records, CHECKPOINT_NAME, self._committed)
        log.info("withdrawals: settled index snapshot written", chain=self.chain,
                 settled=len(self.book.settled), covered=covered, chunks=len(records) - 1)
        self._since_index = 0

    def _count(self, ev: WithdrawalEvent, now: float) -> None:
        WITHDRAWAL_EVENTS.labels(self.chain, ev.type.value).inc()
        since = max(0.0, now - ev.request.received_ms / 1000)
        if ev.type is WithdrawalEventType.BROADCAST:
            WITHDRAWAL_TO_BROADCAST.labels(self.chain).observe(since)
        elif ev.type is WithdrawalEventType.REPLACED:
            WITHDRAWAL_REPLACEMENTS.labels(self.chain).inc()
        elif ev.type in (WithdrawalEventType.CONFIRMED, WithdrawalEventType.FAILED):
            WITHDRAWAL_CONFIRMATION_SECONDS.labels(self.chain).observe(since)
            WITHDRAWAL_TO_CONFIRMED.labels(self.chain).observe(since)

    def _gauges(self) -> None:
        summary = self.book.summary(self._tip)
        for state, count in summary.by_state.items():
            WITHDRAWALS_BY_STATE.labels(self.chain, state.value).set(count)
        if self.status is not None:  # what `watcher status` shows beside pending deposits
            self.status.pending_withdrawals = sum(
                n for state, n in summary.by_state.items() if state not in TERMINAL)
        WITHDRAWALS_STUCK.labels(self.chain).set(summary.stuck)
        waiting: dict[str, int] = dict.fromkeys(self._assets, 0)
        for w in self.book.withdrawals():
            if w.state is WithdrawalState.WAITING_FUNDS:
                waiting[w.request.asset] = waiting.get(w.request.asset, 0) + 1
        for asset, count in waiting.items():
            WITHDRAWALS_WAITING_FUNDS.labels(self.chain, asset).set(count)


__all__ = ["CHECKPOINT_NAME", "RunnerTopics", "WithdrawalRunner", "route"]
