"""The per-chain loop: ask the node, let the core decide, publish and checkpoint at once.

Each step reads the committed state, fetches what the window's decision needs,
applies it in memory, and commits the resulting events together with the new
state snapshot in one Kafka transaction. If the commit fails the in-memory
state is thrown away and reloaded from the last committed checkpoint, so the
published stream and the checkpoint can never disagree.

Where the source also offers a mempool (:class:`watcher.ports.MempoolSource`),
each poll interval in which the block path is caught up ends with a mempool
step: the changes since the last poll go through the same state and are
committed the same way, events and snapshot in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Protocol

import structlog
from prometheus_client import Counter

from watcher import metrics
from watcher.config import ChainConfig, FinalityMode
from watcher.core.chainstate import (
    DEFAULT_MEMPOOL_DROP_AFTER_S,
    ChainState,
    SnapshotError,
    operator_resume,
)
from watcher.core.deposits import DepositEvent, quorum_agreed
from watcher.core.endpoints import EndpointView
from watcher.core.mempool import UnconfirmedEvent
from watcher.core.window import BeyondWindow, BrokenBranch, Extend, NeedParent, Rewind, linked_prefix
from watcher.errors import ChainError, ErrorKind, SinkError
from watcher.events import deposit_record, unconfirmed_record
from watcher.ports import AddressCodec, ChainSource, MempoolSource, OutRecord, TransactionalSink
from watcher.runtime.retry import until_kafka_answers
from watcher.types import (
    AddressKey,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainHead,
    DepositEventType,
    Outpoint,
    Transfer,
)

log = structlog.get_logger("watcher.follower")

ADDRESS_CACHE = 1 << 14
"""Parsed transfer addresses kept per chain (the codec's EIP-55 or bech32 work; ~0.3 kB each
with the cache's own entry, ~5 MB when full)."""


class LabelledAddresses(Protocol):
    def __contains__(self, key: object) -> bool: ...
    def label(self, key: bytes) -> str | None: ...


class StepOutcome(StrEnum):
    PROGRESS = "progress"
    """Blocks were committed and the node is further ahead: step again at once."""
    CAUGHT_UP = "caught_up"
    IDLE = "idle"
    LAGGING_NODE = "lagging_node"
    HALTED = "halted"


@dataclass
class FollowerStatus:
    started: bool = False
    started_at: float = 0.0
    halted_reason: str | None = None
    fenced: bool = False
    last_ok_at: float = 0.0
    last_cycle_at: float = 0.0
    """When the loop last began a step, successful or not: a wedged loop stops updating it."""
    processed_height: int | None = None
    head_height: int | None = None
    last_error: str | None = None
    caught_up: bool = False
    committed_events: int = 0
    role: str = "single"
    """``single`` (no leadership configured), ``leader`` or ``standby``."""
    endpoints: dict[str, EndpointView] = field(default_factory=dict)
    """Each endpoint's state as of the last cycle."""
    quorum_problem: str | None = None
    """Why deposits deep enough are held back from confirmation, while they are."""
    pending_deposits: int | None = None
    pending_withdrawals: int | None = None
    """Withdrawals accepted and not yet confirmed or failed (None: no withdrawals here)."""
    """Tracked deposits not yet confirmed (in the window, below their required confirmations)."""
    listeners: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Batch:
    added: tuple[BlockRef, ...]
    contents: tuple[BlockContents, ...]
    outpoints: frozenset[Outpoint] = frozenset()
    """The mempool outpoints whose spenders these contents list."""


class ChainFollower:
    def __init__(self, cfg: ChainConfig, source: ChainSource, sink: TransactionalSink,
                 addresses: LabelledAddresses, codec: AddressCodec, deposits_topic: str,
                 clock: Callable[[], float] = time.time, *,
                 mempool: MempoolSource | None = None,
                 mempool_drop_after_s: float = DEFAULT_MEMPOOL_DROP_AFTER_S,
                 mempool_interval_s: float = 0.0) -> None:
        self.cfg = cfg
        self.source = source
        self.sink = sink
        self.addresses = addresses
        self.codec = codec
        self.topic = deposits_topic
        self.clock = clock
        self.status = FollowerStatus()
        self.state: ChainState | None = None
        self._checkpoint_read: tuple[bytes | None] | None = None
        """The committed checkpoint as :meth:`start` read it, for the first state load only."""
        self._checkpoint_name = f"chain:{cfg.id}"
        self._prefetch: asyncio.Task[_Batch | None] | None = None
        self._next_headers: tuple[BlockRef, asyncio.Task[list[BlockRef] | None]] | None = None
        """Headers of the range after the one being prefetched, asked while its contents are
        (they follow the block of the pair): the scan workers need not wait for them."""
        self._prefetch_head = -1
        """The head height the prefetch was started under (how far its follower may read)."""
        self._prefetch_final: int | None = None
        """The highest block final under that head (config's finality): headers are asked
        ahead only up to it, where a reorg halts the chain anyway; above it a header asked a
        range early could name a block orphaned meanwhile and get it published."""
        self._node_behind = False
        self.mempool = mempool
        self.mempool_drop_after_s = mempool_drop_after_s
        self.mempool_interval_s = mempool_interval_s
        self._mempool_polled_at: float | None = None
        # A full mempool listing is due at start, after the state went back to the
        # checkpoint, and after a reorg put transactions back into the node's mempool.
        self._mempool_resync = True
        self._event_series: dict[str, Counter] = {}
        """This chain's ``DEPOSIT_EVENTS`` series by event type: ``labels()`` per event was a
        visible share of the daemon's CPU in catch-up (7,000 events, three lookups each)."""
        self._detection = metrics.DETECTION_LATENCY.labels(cfg.id)
        self._confirmation = metrics.CONFIRMATION_LATENCY.labels(cfg.id)
        self._parse_address = lru_cache(maxsize=ADDRESS_CACHE)(codec.parse)
        """The codec's parse of a transfer's address (pure: the same text, the same key), for
        its label: the same watched addresses recur in every batch."""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        # The endpoints' identity probe needs nothing of Kafka: it runs while the sink fences
        # and the checkpoint is read, not after them (independent round trips).
        identity = asyncio.ensure_future(self._verify_identity())
        try:
            # Fence first: an older instance's open transaction is aborted by this, and only
            # then can the checkpoint be read up to the true end.
            await until_kafka_answers(f"chain {self.cfg.id}: fencing its producer",
                                      self.sink.start)
            # The checkpoint needs no watched address: read it now, while the registrations
            # load, not after them. Read after the fencing above, so it is the true last
            # one; nobody else writes it unless they fence this sink (whose commits then fail
            # and the state is reloaded). A failure here is left to the first step to retry.
            with contextlib.suppress(SinkError):
                self._checkpoint_read = (await self.sink.load_checkpoint(self._checkpoint_name),)
        except BaseException:
            identity.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await identity  # the sink's error is the one raised
            raise
        await identity
        self._observe_endpoints()
        self.status.started = True
        self.status.started_at = self.clock()

    async def _verify_identity(self) -> None:
        try:
            await self.source.verify_identity()
        except ChainError as exc:
            # No endpoint alive yet: not a reason to die; every step retries the round.
            log.warning("no endpoint verified at start; retrying each cycle", chain=self.cfg.id,
                        error=str(exc))
            self.status.last_error = str(exc)

    async def run(self, stop: asyncio.Event) -> None:
        poll = self.cfg.poll_interval_ms / 1000
        while not stop.is_set():
            outcome = await self.step()
            if outcome is StepOutcome.HALTED and self.status.fenced:
                return
            if outcome is StepOutcome.PROGRESS:
                continue
            if outcome is StepOutcome.CAUGHT_UP and self._mempool_due():
                await self.mempool_step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
        await self._cancel_prefetch()

    async def close(self) -> None:
        await self._cancel_prefetch()

    # ------------------------------------------------------------ one step

    async def step(self) -> StepOutcome:
        return await self._guarded(self._step)

    async def mempool_step(self) -> StepOutcome:
        """One mempool poll, committed with the snapshot; call when the block path is caught
        up (drops are decided only at the tip the state has processed)."""
        return await self._guarded(self._mempool_step)

    async def _guarded(self, body: Callable[[], Awaitable[StepOutcome]]) -> StepOutcome:
        chain = self.cfg.id
        self.status.last_cycle_at = self.clock()  # the loop turns (liveness), whatever follows
        if self.status.halted_reason is not None:
            return StepOutcome.HALTED
        try:
            return await body()
        except SinkError as exc:
            await self._cancel_prefetch()
            self.state = None
            self._mempool_resync = True
            metrics.CYCLE_ERRORS.labels(chain, exc.kind.value).inc()
            self.status.last_error = str(exc)
            if exc.kind is ErrorKind.FENCED:
                self.status.fenced = True
                self._halt("fenced: another instance owns this chain's transactional id")
                return StepOutcome.HALTED
            log.warning("commit failed; state reloaded from the last checkpoint", chain=chain,
                        error=str(exc))
            return StepOutcome.IDLE
        except ChainError as exc:
            await self._cancel_prefetch()
            self._observe_endpoints()
            metrics.CYCLE_ERRORS.labels(chain, exc.kind.value).inc()
            self.status.last_error = str(exc)
            log.warning("node error", chain=chain, kind=exc.kind.value, error=str(exc))
            return StepOutcome.IDLE
        except SnapshotError as exc:
            # Halted in _load_state; nothing can be decided without the committed state.
            log.critical("checkpoint unreadable; chain halted", chain=chain, error=str(exc))
            return StepOutcome.HALTED
        except BrokenBranch as exc:
            await self._cancel_prefetch()
            metrics.CYCLE_ERRORS.labels(chain, "broken_branch").inc()
            self.status.last_error = str(exc)
            log.warning("node answered a branch that does not link; retrying", chain=chain,
                        error=str(exc))
            return StepOutcome.IDLE

    async def _step(self) -> StepOutcome:
        chain = self.cfg.id
        if self.state is None:
            self.state = await self._load_state()
        state = self.state
        head = await self.source.head()
        self._observe_endpoints()
        self._observe_head(head)
        tip = state.tip
        bound = log.bind(chain=chain, height=tip.number if tip else None,
                         block_hash=tip.hash if tip else None)

        if tip is not None:
            if head.number < tip.number:
                # Never a reorg: a node behind what we already verified is just behind. Said
                # once per episode, not at every poll; readiness and the lag metrics carry on.
                if not self._node_behind:
                    bound.warning("node is behind the processed tip; waiting for it",
                                  node_head=head.number)
                    self._node_behind = True
                self.status.last_error = f"node head {head.number} is behind processed {tip.number}"
                return StepOutcome.LAGGING_NODE
            if self._node_behind:
                bound.info("node caught up with the processed tip", node_head=head.number)
                self._node_behind = False
            if head.hash == tip.hash:
                state.window.set_finalized(self._finalized(head, tip))
                await self._confirm_held(state)
                self._mark_ok(caught_up=True)
                return StepOutcome.CAUGHT_UP

        batch = await self._next_batch(head, state)
        if batch is None:
            return StepOutcome.IDLE
        if isinstance(batch, BeyondWindow):
            metrics.REORG_BEYOND_WINDOW.labels(chain).inc()
            self._halt(f"reorg beyond the window: {batch.reason} (branch starts at "
                       f"{batch.branch_start.number} {batch.branch_start.hash})")
            bound.critical("reorg beyond the window or below finality; chain halted",
                           reason=batch.reason, branch_start=batch.branch_start.number,
                           window_bottom=batch.window_bottom.number)
            return StepOutcome.HALTED

        decision, contents = batch
        if decision.added:
            # Start fetching the next range now, while this one is applied and committed:
            # it follows this batch's last block, the tip once applied. Used only if it links
            # to the tip the next step finds (so never after a failed apply or commit).
            self._start_prefetch(decision.added[-1], head)
        agreed = await self._quorum(state.due_after(decision, contents, self._required_for))
        applied = state.apply(decision, contents, self._label_of, agreed)
        now = self.clock()
        records: list[OutRecord] = [deposit_record(self.topic, chain, ev, now)
                                    for ev in applied.events]
        records.extend(unconfirmed_record(self.topic, chain, ev, now)
                       for ev in applied.unconfirmed)
        new_tip = state.tip
        assert new_tip is not None
        # Only now is the window known to be the node's chain up to new_tip, so only now may
        # finality advance; taking it from the node's head before the branch was checked would
        # flag a reorg that happened while we were down as a finality violation.
        state.window.set_finalized(self._finalized(head, new_tip))
        await self.sink.commit(records, self._checkpoint_name, state.snapshot())
        self._count_unconfirmed(applied.unconfirmed, mined=applied.mined)

        for ev in applied.events:
            self._events_of(ev.type.value).inc()
            if ev.type is DepositEventType.REVERTED and \
                    ev.previous_type is DepositEventType.CONFIRMED:
                metrics.REVERTED_AFTER_CONFIRMATION.labels(chain).inc()
                bound.error("deposit reverted after it was confirmed",
                            deposit_id=ev.deposit.deposit_id, block_hash=ev.deposit.block.hash)
            if ev.type is not DepositEventType.REVERTED and ev.deposit.block.timestamp:
                self._detection.observe(max(0.0, now - ev.deposit.block.timestamp))
            self._observe_confirmed(ev, now)
        if applied.reorg_depth:
            self._mempool_resync = True
            metrics.REORGS.labels(chain).inc()
            metrics.REORG_DEPTH.labels(chain).observe(applied.reorg_depth)
            bound.warning("reorg", depth=applied.reorg_depth, new_tip=new_tip.number,
                          new_tip_hash=new_tip.hash)
        metrics.BLOCKS_PROCESSED.labels(chain).inc(len(decision.added))
        metrics.PROCESSED_HEIGHT.labels(chain).set(new_tip.number)
        metrics.LAG_BLOCKS.labels(chain).set(max(0, head.number - new_tip.number))
        if new_tip.timestamp:
            metrics.LAG_SECONDS.labels(chain).set(max(0.0, now - new_tip.timestamp))
        metrics.TRACKED_DEPOSITS.labels(chain).set(len(state.tracker))
        self.status.pending_deposits = state.tracker.unconfirmed()
        self.status.committed_events += len(records)
        self.status.processed_height = new_tip.number
        behind = head.number > new_tip.number
        self._mark_ok(caught_up=not behind)
        return StepOutcome.PROGRESS if behind else StepOutcome.CAUGHT_UP

    def _mempool_due(self) -> bool:
        if self.mempool is None:
            return False
        last = self._mempool_polled_at
        return last is None or time.monotonic() - last >= self.mempool_interval_s

    async def _mempool_step(self) -> StepOutcome:
        assert self.mempool is not None
        self._mempool_polled_at = time.monotonic()
        chain = self.cfg.id
        if self.state is None:
            self.state = await self._load_state()
        state = self.state
        full = self._mempool_resync
        change = await self.mempool.mempool(self.addresses, full=full)
        now = self.clock()
        observed = state.observe_mempool(change, now, self._label_of)
        records = [unconfirmed_record(self.topic, chain, ev, now) for ev in observed.events]
        # Nothing to publish and no timer started or stopped: no transaction at all.
        if observed.snapshot is not None:
            await self.sink.commit(records, self._checkpoint_name, observed.snapshot)
        self._mempool_resync = False
        self._count_unconfirmed(observed.events)
        self.status.committed_events += len(records)
        return StepOutcome.CAUGHT_UP

    def _count_unconfirmed(self, events: Sequence[UnconfirmedEvent], mined: int = 0) -> None:
        chain = self.cfg.id
        for ev in events:
            metrics.DEPOSIT_EVENTS.labels(chain, ev.type.value).inc()
            outcome = ev.reason.value if ev.reason is not None else "seen"
            metrics.MEMPOOL_TRANSITIONS.labels(chain, outcome).inc()
        if mined:
            metrics.MEMPOOL_TRANSITIONS.labels(chain, "mined").inc(mined)
        if self.state is not None:
            metrics.MEMPOOL_TRACKED.labels(chain).set(len(self.state.mempool))

    # ------------------------------------------------------------ confirmation quorum

    async def _quorum(self, due: list[BlockRef]) -> frozenset[BlockHash] | None:
        """Block hashes ``confirm_quorum`` endpoints agree on, among ``due``; None without a
        quorum (the followed endpoint's chain is enough)."""
        quorum = self.cfg.confirm_quorum
        if quorum <= 1:
            return None
        if not due:
            return frozenset()
        reports = await self.source.canonical_hashes(sorted({b.number for b in due}))
        agreed = quorum_agreed(reports, due, quorum)
        short = [b for b in due if b.hash not in agreed]
        metrics.QUORUM_HELD.labels(self.cfg.id).set(len(short))
        if short:
            metrics.QUORUM_DISAGREEMENTS.labels(self.cfg.id).inc(len(short))
            problem = (f"{len(short)} deposit block(s) lack {quorum} endpoints agreeing "
                       f"(lowest {short[0].number} {short[0].hash})")
            if self.status.quorum_problem is None:
                log.warning("confirmations held: endpoints disagree", chain=self.cfg.id,
                            blocks=len(short), height=short[0].number,
                            block_hash=short[0].hash, quorum=quorum,
                            answered=sorted(reports))
            self.status.quorum_problem = problem
        elif self.status.quorum_problem is not None:
            log.info("confirmation quorum agrees again", chain=self.cfg.id)
            self.status.quorum_problem = None
        return agreed

    async def _confirm_held(self, state: ChainState) -> None:
        """At an unchanged tip, confirms deposits held for a quorum that now agrees."""
        if self.cfg.confirm_quorum <= 1:
            return
        due = state.due_after(None, (), self._required_for)
        if not due:
            return
        agreed = await self._quorum(due)
        events = state.reevaluate(agreed)
        if not events:
            return
        now = self.clock()
        records = [deposit_record(self.topic, self.cfg.id, ev, now) for ev in events]
        await self.sink.commit(records, self._checkpoint_name, state.snapshot())
        self._count_events(events)
        self.status.committed_events += len(records)

    def _count_events(self, events: list[DepositEvent]) -> None:
        now = self.clock()
        for ev in events:
            self._events_of(ev.type.value).inc()
            self._observe_confirmed(ev, now)

    def _observe_confirmed(self, ev: DepositEvent, now: float) -> None:
        """The customer's wait for credit: the paying block's timestamp to ``confirmed``
        (a block's timestamp is when the deposit was first in the chain; a mempool sighting
        earlier is not kept per deposit)."""
        if ev.type is DepositEventType.CONFIRMED and ev.deposit.block.timestamp:
            self._confirmation.observe(max(0.0, now - ev.deposit.block.timestamp))

    def _events_of(self, event_type: str) -> Counter:
        series = self._event_series.get(event_type)
        if series is None:
            series = self._event_series[event_type] = metrics.DEPOSIT_EVENTS.labels(
                self.cfg.id, event_type)
        return series

    # ------------------------------------------------------------ fetching

    async def _next_batch(self, head: ChainHead, state: ChainState
                          ) -> tuple[Extend | Rewind, tuple[BlockContents, ...]] | BeyondWindow | None:
        tip = state.tip
        prefetched = await self._take_prefetch()
        outpoints = self._watch_outpoints(state)
        # Contents fetched before a seen transaction was tracked could miss its double-spend.
        if prefetched is not None and tip is not None and prefetched.added and \
                prefetched.added[0].parent_hash == tip.hash and outpoints <= prefetched.outpoints:
            return Extend(prefetched.added), prefetched.contents

        if tip is None:
            start = self.cfg.start_block if self.cfg.start_block is not None else head.number
            if start > head.number:
                return None  # the configured start is not mined yet: nothing below it counts
            count = max(1, min(self.cfg.batch_size, head.number - start + 1))
        else:
            start = tip.number + 1
            count = min(self.cfg.batch_size, head.number - tip.number)
        branch: list[BlockRef] = []
        if count > 0:
            branch = linked_prefix(await self.source.headers(start, count))
        if not branch:
            # Same height, other hash (or the node lost the range): start from its head.
            ref = await self.source.header_by_hash(head.hash)
            if ref is None:
                return None
            branch = [ref]

        decision = state.window.decide(branch)
        walked = 0
        while isinstance(decision, NeedParent):
            walked += 1
            if walked > state.window.size + 1:
                raise BrokenBranch("walked back further than the window without a fork point")
            parent = await self.source.header_by_hash(decision.parent_hash)
            if parent is None:
                raise ChainError(ErrorKind.RETRIABLE,
                                 f"node lacks block {decision.parent_hash} it named as a parent")
            if parent.hash != decision.parent_hash or parent.number != decision.number:
                raise BrokenBranch(f"asked for {decision.parent_hash}, got {parent.hash}")
            branch.insert(0, parent)
            decision = state.window.decide(branch)
        if isinstance(decision, BeyondWindow):
            return decision
        if decision.added and self._prefetch is None:
            self._set_prefetch_bounds(head)
            self._ask_next_headers(decision.added[-1])  # for the prefetch that follows this
        contents = await self.source.contents(decision.added, self.addresses)
        return decision, tuple(contents)

    def _start_prefetch(self, tip: BlockRef, head: ChainHead) -> None:
        remaining = head.number - tip.number
        if remaining <= 0 or self._prefetch is not None:
            return
        outpoints = self._watch_outpoints(self.state) if self.state else frozenset()
        self._set_prefetch_bounds(head)
        self._prefetch = asyncio.create_task(
            self._fetch_range(tip, min(self.cfg.batch_size, remaining), outpoints))

    def _set_prefetch_bounds(self, head: ChainHead) -> None:
        self._prefetch_head = head.number
        self._prefetch_final = (head.finalized_number
                                if self.cfg.finality_mode is FinalityMode.FINALIZED
                                else head.number - self.cfg.finality_depth)

    def _watch_outpoints(self, state: ChainState) -> frozenset[Outpoint]:
        """Tells the mempool source which outpoints' spenders block contents must list."""
        if self.mempool is None:
            return frozenset()
        outpoints = state.mempool.outpoints()
        self.mempool.watch_outpoints(outpoints)
        return outpoints

    async def _fetch_range(self, tip: BlockRef, count: int,
                           outpoints: frozenset[Outpoint]) -> _Batch | None:
        try:
            refs = await self._headers_after(tip, count)
            if not refs or refs[0].parent_hash != tip.hash:
                return None
            self._ask_next_headers(refs[-1])
            contents = await self.source.contents(refs, self.addresses)
            return _Batch(tuple(refs), tuple(contents), outpoints)
        except asyncio.CancelledError:
            raise
        except Exception:
            # and reports any error with its own counting and classification.
            return None

    async def _headers_after(self, tip: BlockRef, count: int) -> list[BlockRef]:
        """The linked headers of up to ``count`` blocks after ``tip``: those asked ahead when
        they follow ``tip`` itself (same hash), else asked now. Headers asked a moment
        earlier are checked exactly as fresh ones (parent link to the tip, then the window),
        as prefetched contents are."""
        ahead, self._next_headers = self._next_headers, None
        if ahead is not None:
            base, task = ahead
            if base == tip:
                refs = await task
                if refs and refs[0].parent_hash == tip.hash:
                    return refs[:count]
            else:
                task.cancel()
        return linked_prefix(await self.source.headers(tip.number + 1, count))

    def _ask_next_headers(self, last: BlockRef) -> None:
        """Asks the headers of the range after ``last`` now, when it is all final (see
        ``_prefetch_final``): catch-up far behind the head, where the scan workers would
        otherwise wait for them at each range."""
        remaining = self._prefetch_head - last.number
        final = self._prefetch_final
        count = min(self.cfg.batch_size, remaining)
        if count <= 0 or final is None or last.number + count > final:
            return

        async def ask() -> list[BlockRef] | None:
            try:
                return linked_prefix(await self.source.headers(last.number + 1, count))
            except asyncio.CancelledError:
                raise
            except Exception:
                return None  # asked again, in the open, by whoever needs them

        if self._next_headers is not None:
            self._next_headers[1].cancel()  # asked after another tip: never used
        self._next_headers = (last, asyncio.create_task(ask()))

    async def _take_prefetch(self) -> _Batch | None:
        task, self._prefetch = self._prefetch, None
        if task is None:
            return None
        return await task

    async def _cancel_prefetch(self) -> None:
        task, self._prefetch = self._prefetch, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # After the prefetch: until it ended, it could still ask for the next headers.
        ahead, self._next_headers = self._next_headers, None
        if ahead is not None:
            ahead[1].cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ahead[1]

    # ------------------------------------------------------------ helpers

    async def _load_state(self) -> ChainState:
        cfg = self.cfg
        read, self._checkpoint_read = self._checkpoint_read, None
        data = read[0] if read is not None else await self.sink.load_checkpoint(self._checkpoint_name)
        if data is None:
            log.info("no checkpoint; starting fresh", chain=cfg.id, start_block=cfg.start_block)
            return ChainState(cfg.id, cfg.reorg_window, self._required_for,
                              mempool_drop_after_s=self.mempool_drop_after_s)
        try:
            state = ChainState.restore(data, cfg.id, cfg.reorg_window, self._required_for,
                                       mempool_drop_after_s=self.mempool_drop_after_s)
        except SnapshotError as exc:
            self._halt(f"checkpoint unreadable: {exc}")
            raise
        resume = operator_resume(data)
        if resume is not None:
            # Written by `watcher halt resume`; the next commit's snapshot drops it, so it is
            # counted once by the instance that picks it up.
            metrics.OPERATOR_RESUMES.labels(cfg.id).inc()
            log.warning("operator resumed the chain", chain=cfg.id, **resume)
        self.status.pending_deposits = state.tracker.unconfirmed()
        tip = state.tip
        log.info("resumed from checkpoint", chain=cfg.id, height=tip.number if tip else None,
                 block_hash=tip.hash if tip else None, tracked=len(state.tracker),
                 unconfirmed=len(state.mempool))
        if tip is not None:
            self.status.processed_height = tip.number
            metrics.PROCESSED_HEIGHT.labels(cfg.id).set(tip.number)
        return state

    def _required_for(self, asset: str, amount: int) -> int:
        return self.cfg.rule_for(asset).required_for(amount)

    def _label_of(self, t: Transfer) -> str | None:
        try:
            _, key = self._parse_address(t.to_address)
        except Exception:
            return None
        return self.addresses.label(AddressKey(key))

    def _finalized(self, head: ChainHead, verified_tip: BlockRef) -> int | None:
        """Finality over blocks verified to be the node's; never above our own tip."""
        if self.cfg.finality_mode is FinalityMode.FINALIZED:
            if head.finalized_number is None:
                return None
            return min(head.finalized_number, verified_tip.number)
        return verified_tip.number - self.cfg.finality_depth

    def _observe_head(self, head: ChainHead) -> None:
        self.status.head_height = head.number
        metrics.NODE_HEAD.labels(self.cfg.id).set(head.number)
        if self.state is not None and self.state.window.finalized_number is not None:
            metrics.FINALIZED_HEIGHT.labels(self.cfg.id).set(max(self.state.window.finalized_number, 0))
        if self.state is not None and self.state.tip is not None:
            metrics.LAG_BLOCKS.labels(self.cfg.id).set(max(0, head.number - self.state.tip.number))

    def _observe_endpoints(self) -> None:
        self.status.endpoints = dict(self.source.endpoint_states())

    def _mark_ok(self, caught_up: bool) -> None:
        self.status.last_ok_at = self.clock()
        self.status.caught_up = caught_up
        self.status.last_error = None
        for listener in self.status.listeners:
            listener()

    def _halt(self, reason: str) -> None:
        self.status.halted_reason = reason
        metrics.CHAIN_HALTED.labels(self.cfg.id).set(1)

