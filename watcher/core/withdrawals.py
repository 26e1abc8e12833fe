"""The withdrawal state machine: observations in, decisions out, never performed here.

Pure and synchronous. One :class:`WithdrawalBook` per chain holds every live
request, the hot wallet's nonce counter, the rolling 24-hour amounts and the
digests of every request id ever claimed (for the duplicate rule).

State is kept in two parts, so that what is committed with every step stays small
however long the watcher runs (see :meth:`WithdrawalBook.take_changes`):

* the **snapshot** (:meth:`WithdrawalBook.snapshot`): live state only -- requests not
  yet settled at finality, the nonce counter, the rolling amounts. Its size follows
  the requests in flight and one day's traffic, never the history;
* one **settled record** per request id that left the live set (settled at finality,
  refused after authentication, or claimed by another chain), written once, on a
  compacted topic keyed by the request id, in the same transaction as the snapshot.
  The book keeps only ``request id -> digest`` of them, compactly
  (:class:`~watcher.core.settled.SettledIndex`, 24 bytes each), which is all the
  duplicate rule needs, and which is loaded back at a restart.

States::

    accepted ──funds()──▶ (bound) ──signed()──▶ signed ──broadcast ok──▶ broadcast
       │  ▲                                                          │   ▲ │
       ▼  │ funds later                               stuck: replace ▼   │ │ reorg
    waiting_funds                                                 replaced─┘ │
                                                                           ▼
                    confirmed (at the required confirmations) / failed (reverted)

Guarantees (what "never paid twice" rests on):

* **One binding at a time.** A request is bound to one EVM nonce or one set of
  UTXO inputs before anything is signed (:class:`Bind` then :class:`Commit`);
  :meth:`WithdrawalBook.signed` refuses (:class:`BindingViolation`) any transaction
  for it that spends anything else, so all its transactions are mutually exclusive
  on chain and at most one can ever confirm. A UTXO batch (:meth:`WithdrawalBook.funds_batch`)
  binds each member to the batch's whole input set: the members share every transaction
  and move in lockstep (signed, sent and bumped once, by the first member).
* **Re-binding only on proof.** A request is bound again only once a transaction
  that is *not* one of its own consumed the binding in a block at or below the
  finalized height; the new binding is committed before the new payload is signed.
* **Record before broadcast.** A signed transaction is in the state (and must be
  committed, :class:`Commit`) before :class:`Broadcast` is decided; after a restart
  :meth:`resume` broadcasts the very same bytes again.
* **One event per fact.** ``withdrawal.broadcast``/``.replaced`` once per transaction,
  ``.confirmed`` and ``.failed`` once per request, whatever reorgs or rebroadcasts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, NewType

import orjson

from watcher.core.settled import SettledIndex
from watcher.errors import ErrorKind, WatcherError
from watcher.types import Address, AssetSymbol, BlockHash, ChainId, EventId, TxId

RequestId = NewType("RequestId", str)

SNAPSHOT_VERSION = 2
"""Live state only (settled requests live in settled records). Version 1 (everything,
with the digests of every settled request) still loads: see :meth:`WithdrawalBook.restore`.
Adding a field: write it, read it with a default (``.get``), keep the version; bump it
only for a change an older reader must refuse."""
SETTLED_VERSION = 1
REFUSAL_BACKOFF_MAX_BLOCKS = 64
"""A transaction every node refuses (FINAL) is sent again after 1, 2, 4, ... blocks, at most this many."""
DAY_MS = 24 * 3600 * 1000
BUMP_PERCENT = 10
"""Minimum raise of both the fee cap and the tip of a replacement (geth's default price bump)."""


class WithdrawalState(StrEnum):
    ACCEPTED = "accepted"
    WAITING_FUNDS = "waiting_funds"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    REPLACED = "replaced"
    CONFIRMED = "confirmed"
    FAILED = "failed"


TERMINAL = frozenset({WithdrawalState.CONFIRMED, WithdrawalState.FAILED})


class WithdrawalEventType(StrEnum):
    ACCEPTED = "withdrawal.accepted"
    REJECTED = "withdrawal.rejected"
    BROADCAST = "withdrawal.broadcast"
    REPLACED = "withdrawal.replaced"
    CONFIRMED = "withdrawal.confirmed"
    FAILED = "withdrawal.failed"


class BroadcastOutcome(StrEnum):
    """A node's answer to a raw transaction, classified once at the adapter edge."""

    OK = "ok"
    ALREADY_KNOWN = "already_known"
    UNDERPRICED = "underpriced"
    CONSUMED = "consumed"
    """EVM "nonce too low"; UTXO inputs missing or already spent."""
    REFUSED = "refused"
    """A FINAL refusal (insufficient funds for gas, say): the same bytes are sent again,
    with a growing delay (:data:`REFUSAL_BACKOFF_MAX_BLOCKS`), and the request counts as stuck."""
    RETRIABLE = "retriable"
    """Not handed over (timeout, no endpoint): the same bytes are sent again later."""

    @classmethod
    def of(cls, kind: ErrorKind | None) -> BroadcastOutcome:
        """The outcome of a send that raised a :class:`ChainError` of ``kind`` (None: it
        returned). A FINAL refusal is never answered by signing something else: the bytes
        are recorded and may be valid once funds arrive, and nothing else may ever be signed
        for the binding; they are sent again, later and later (never every block)."""
        return {None: cls.OK, ErrorKind.ALREADY_KNOWN: cls.ALREADY_KNOWN,
                ErrorKind.UNDERPRICED: cls.UNDERPRICED, ErrorKind.FINAL: cls.REFUSED,
                ErrorKind.NONCE_TOO_LOW: cls.CONSUMED}.get(kind, cls.RETRIABLE)


class BindingViolation(WatcherError):
    """A transaction for a request spends something else than the request's binding.

    A bug in the caller: the transaction must not be broadcast. Never raised on input
    from the network or from requesters.
    """


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class NonceBinding:
    nonce: int

    def spend_keys(self) -> tuple[str, ...]:
        return (f"nonce:{self.nonce}",)


@dataclass(frozen=True, slots=True)
class InputsBinding:
    outpoints: tuple[str, ...]
    """``<txid>:<vout>``, sorted, at least one."""

    def __post_init__(self) -> None:
        if not self.outpoints or tuple(sorted(set(self.outpoints))) != self.outpoints:
            raise ValueError("outpoints must be a non-empty sorted tuple without repeats")

    def spend_keys(self) -> tuple[str, ...]:
        return tuple(f"in:{o}" for o in self.outpoints)


Binding = NonceBinding | InputsBinding


@dataclass(frozen=True, slots=True)
class Request:
    """A validated, authenticated withdrawal request."""

    request_id: RequestId
    asset: AssetSymbol
    token_contract: Address | None
    to_address: Address
    amount: int
    decimals: int
    digest: str
    """Hex SHA-256 of the request's canonical bytes: the duplicate rule compares it."""
    received_ms: int


@dataclass(frozen=True, slots=True)
class Fees:
    """EVM: max fee per gas and max priority fee per gas (wei). UTXO: fee rate, tip 0."""

    max_fee: int
    tip: int

    def bumped(self) -> Fees:
        """At least ``BUMP_PERCENT`` more on both, rounded up, and at least one unit more."""
        def up(x: int) -> int:
            return max(x + 1, -(-x * (100 + BUMP_PERCENT) // 100))
        return Fees(up(self.max_fee), up(self.tip) if self.tip else 0)

    def covers(self, other: Fees) -> bool:
        return self.max_fee >= other.max_fee and self.tip >= other.tip


@dataclass(frozen=True, slots=True)
class SignedTx:
    txid: TxId
    raw: bytes
    binding: Binding
    fees: Fees
    fee: int
    """The most this transaction can cost, in base units of the chain's fee asset."""


@dataclass(frozen=True, slots=True)
class Spend:
    """A transaction in a block that consumed a binding key of the hot wallet.

    ``key`` is ``nonce:<n>`` (EVM: a transaction from the hot wallet) or
    ``in:<txid>:<vout>`` (UTXO: an input spending a hot-wallet output).
    """

    key: str
    txid: TxId
    reverted: bool = False
    fee_paid: int | None = None


@dataclass(frozen=True, slots=True)
class Inclusion:
    txid: TxId
    block_number: int
    block_hash: BlockHash
    ours: bool
    """The transaction is one of the request's own (it pays the request, unless reverted)."""
    reverted: bool
    fee_paid: int | None


@dataclass(frozen=True, slots=True)
class Withdrawal:
    request: Request
    state: WithdrawalState
    binding: Binding | None = None
    epoch: int = 0
    """How many times the request was bound again after a proven foreign spend."""
    attempts: tuple[SignedTx, ...] = ()
    """Every transaction signed for the current binding, oldest first."""
    retired: tuple[SignedTx, ...] = ()
    """Transactions of earlier bindings, each proven unpayable at finality."""
    announced: tuple[TxId, ...] = ()
    """Transactions whose ``broadcast``/``replaced`` event was emitted."""
    sent_height: int | None = None
    """Tip height when the latest attempt was last handed to the network."""
    consumed_hint: bool = False
    """A node said the binding is already consumed: never bump, wait for the block proof."""
    inclusion: Inclusion | None = None
    final_announced: bool = False
    refusals: int = 0
    """FINAL refusals of the latest send in a row (0 once a node took it)."""
    retry_height: int | None = None
    """After a refusal: the height from which the bytes are sent again."""
    batch: tuple[RequestId, ...] = ()
    """UTXO batching: every request paid by the same transactions (sorted, this one
    included), all bound to the same inputs and moved in lockstep; () when paid alone."""

    @property
    def latest(self) -> SignedTx | None:
        return self.attempts[-1] if self.attempts else None


@dataclass(frozen=True, slots=True)
class WithdrawalEvent:
    type: WithdrawalEventType
    request: Request
    txid: TxId | None = None
    replaces_txid: TxId | None = None
    nonce: int | None = None
    fee: int | None = None
    block_number: int | None = None
    block_hash: BlockHash | None = None
    confirmations: int | None = None
    reason: str | None = None
    message: str | None = None

    @property
    def event_id(self) -> EventId:
        """Type, request and transaction (and block for confirmation facts)."""
        parts = [self.type.value, self.request.request_id, self.request.digest, self.txid or "",
                 self.block_hash or ""]
        return EventId(hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest())


# ---------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Emit:
    event: WithdrawalEvent


@dataclass(frozen=True, slots=True)
class Commit:
    """A barrier: commit the snapshot and the events so far before carrying out what follows."""


@dataclass(frozen=True, slots=True)
class CheckFunds:
    """Find out whether the hot wallet can pay the request now, then call :meth:`funds`
    (UTXO: with the inputs chosen by coin selection)."""

    request_id: RequestId


@dataclass(frozen=True, slots=True)
class Bind:
    """The request is bound (recorded in the state; effective once committed)."""

    request_id: RequestId
    binding: Binding
    epoch: int


@dataclass(frozen=True, slots=True)
class Sign:
    """Build and sign a payment of the request spending exactly ``binding``, with fees at
    least ``min_fees`` (zero: the fee policy's own quote), then call :meth:`signed`."""

    request_id: RequestId
    binding: Binding
    min_fees: Fees
    replaces: TxId | None


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Hand these recorded bytes to the network, then call :meth:`broadcast_result`."""

    request_id: RequestId
    txid: TxId
    raw: bytes
    again: bool
    """Already handed over before (restart, reorg, stuck at the fee cap)."""


@dataclass(frozen=True, slots=True)
class ReconcileNonce:
    """Ask a node for the hot wallet's ``latest`` and ``pending`` transaction counts, then
    call :meth:`nonce_counts`."""


Decision = Emit | Commit | CheckFunds | Bind | Sign | Broadcast | ReconcileNonce


@dataclass(frozen=True, slots=True)
class MachineConfig:
    confirmations: int
    stuck_blocks: int
    """Blocks without inclusion after which the payment is replaced with higher fees."""
    fee_cap: Fees
    """Fees are never raised above this; at the cap a stuck payment is sent again unchanged."""
    uses_nonces: bool
    """EVM (one nonce per payment) or UTXO (inputs chosen by coin selection)."""


# ---------------------------------------------------------------- nonce manager


@dataclass(slots=True)
class NonceManager:
    """The hot wallet's next nonce, durable, and never believed over the chain.

    Reconciled with the node's ``latest`` (mined) and ``pending`` (mined + mempool)
    counts at start and after every "nonce too low": the next nonce becomes
    ``max(latest, pending, highest nonce held by a live request + 1)``. That raises it
    over nonces another sender used and rewinds a counter that drifted above anything
    the chain or our own live payments hold (an endless resubmit of nonces that can
    never be mined otherwise), without ever handing out a nonce a live request holds.
    """

    next: int | None = None
    last_gap: int = 0
    """How far the counter was from the reconciled value (positive: it was above)."""

    def reconcile(self, latest: int, pending: int, held: Iterable[int]) -> int:
        if latest < 0 or pending < 0:
            raise ValueError("transaction counts are non-negative")
        floor = max(latest, pending, max((n + 1 for n in held), default=0))
        self.last_gap = 0 if self.next is None else self.next - floor
        self.next = floor
        return floor

    def allocate(self) -> int:
        if self.next is None:
            raise ValueError("nonce counter not reconciled with the chain yet")
        n = self.next
        self.next = n + 1
        return n


# ---------------------------------------------------------------- rolling limit


BUCKET_MS = 60_000


@dataclass(slots=True)
class RollingAmounts:
    """Amounts accepted per asset with their times, for the rolling 24-hour limit.

    Guarantees:

    * **Time never runs backwards.** An amount is charged at ``max(now_ms, the latest
      charge)``: a request read after a later one (another partition, a skewed clock) is
      charged as if it came last, so no charge is ever pruned while a window that holds it
      can still be asked about, and the sum over any 24 hours of charge times stays within
      the limit.
    * **Bounded.** Charges of one asset within one minute are merged into one entry at
      the latest of their times (so each counts at least as long as it should, never
      shorter): at most 1,440 entries per asset, whatever the traffic.
    """

    entries: list[tuple[int, AssetSymbol, int]] = field(default_factory=list)

    def _now(self, now_ms: int) -> int:
        return max(now_ms, max((t for t, _, _ in self.entries), default=now_ms))

    def used(self, asset: AssetSymbol, now_ms: int) -> int:
        now = self._now(now_ms)
        return sum(a for t, s, a in self.entries if s == asset and now - t < DAY_MS)

    def add(self, asset: AssetSymbol, amount: int, now_ms: int) -> None:
        now = self._now(now_ms)
        kept = [e for e in self.entries if now - e[0] < DAY_MS]
        for i in range(len(kept) - 1, -1, -1):
            t, s, a = kept[i]
            if t // BUCKET_MS != now // BUCKET_MS:
                break
            if s == asset:
                del kept[i]
                amount += a
                break
        kept.append((now, asset, amount))
        self.entries = kept


# ---------------------------------------------------------------- the book


@dataclass(frozen=True, slots=True)
class Changes:
    """What one commit must write: the live snapshot and the settled records made since the
    last commit (request id -> record, see :func:`settled_record`)."""

    snapshot: bytes
    records: dict[RequestId, bytes]


@dataclass(frozen=True, slots=True)
class BookSummary:
    by_state: dict[WithdrawalState, int]
    stuck: int
    """Broadcast and not in a block for ``stuck_blocks``, or refused by the nodes (FINAL)."""
    nonce_gap: int
    refused: int = 0
    """Of which: the latest send was refused by the nodes and waits for its next try."""


class SettledOutcome(StrEnum):
    CONFIRMED = "confirmed"
    FAILED = "failed"
    REJECTED = "rejected"
    """Refused after authentication (a limit, an unknown asset...): never accepted later."""
    CLAIMED = "claimed"
    """Accepted or refused by another chain's runner: the id is taken on every chain."""
    MIGRATED = "migrated"
    """Known from a version 1 snapshot, which kept only the digest."""


def settled_record(digest: str, chain: str, outcome: SettledOutcome) -> bytes:
    """The value of a settled request's record (its key: the request id, UTF-8)."""
    return orjson.dumps({"version": SETTLED_VERSION, "digest": digest, "chain": chain,
                         "outcome": outcome.value})


def load_settled(records: Iterable[tuple[bytes | None, bytes | None]],
                 into: SettledIndex | None = None) -> SettledIndex:
    """``request id -> digest`` from the ``(key, value)`` of each settled record (staged:
    one sort at the first lookup, however many batches are loaded).

    Raises :class:`SnapshotError` naming the record's key and field when one cannot be read:
    a settled record is what stops an old request from being paid again, so none is skipped.
    """
    out = SettledIndex() if into is None else into
    loads = orjson.loads
    for key, value in records:
        if key is None or value is None:
            raise SnapshotError(f"settled record with key {key!r}: a record without key or value")
        try:
            rid = key.decode()
            x = loads(value)
            digest = x["digest"]
            if x.get("version") != SETTLED_VERSION or not isinstance(digest, str):
                raise SnapshotError(f"settled record {rid!r}: version {x.get('version')!r}, "
                                    f"field digest of type {type(digest).__name__}")
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
            raise SnapshotError(f"settled record with key {key[:140]!r} is unreadable: "
                                f"{exc!r}") from exc
        out.stage(rid, digest)
    return out


class SnapshotError(ValueError):
    """A withdrawal snapshot that cannot be read, or belongs to another chain."""


class WithdrawalBook:
    """Every withdrawal of one chain and the hot wallet's counters.

    Each method is one observation; it returns the decisions in the order they must
    be carried out. A :class:`Commit` in the list is a barrier: the snapshot as it is
    now, with the events emitted so far, must be durable before anything after it is
    done. Every :class:`Emit` of an observation comes before its first ``Commit``, so a
    committed state never claims an event that was not committed with it, provided the
    runtime works depth first: when carrying out a decision means calling another
    observation (:meth:`funds` for :class:`CheckFunds`, :meth:`signed` after
    :class:`Sign`, :meth:`broadcast_result` after :class:`Broadcast`, :meth:`nonce_counts`
    after :class:`ReconcileNonce`), what that call returns is carried out before the rest
    of the list. The end of each observation is a commit too (one Kafka transaction).
    """

    def __init__(self, chain: ChainId, cfg: MachineConfig,
                 settled: SettledIndex | None = None) -> None:
        """``settled``: the committed settled records (:func:`load_settled`); the book adds
        to it only in :meth:`changes_committed`, so after a failed commit the same index
        serves the book restored from the last snapshot."""
        self.chain = chain
        self.cfg = cfg
        self.nonces = NonceManager()
        self.limits = RollingAmounts()
        self._w: dict[RequestId, Withdrawal] = {}
        self.settled = SettledIndex() if settled is None else settled
        self._fresh: dict[RequestId, tuple[str, str, SettledOutcome]] = {}
        """Settled since the last commit: id -> (digest, claiming chain, outcome)."""
        self._by_key: dict[str, set[RequestId]] = {}
        """Binding key -> the requests bound to it: one, or every member of a batch."""

    # --------------------------------------------------------- reading

    def get(self, request_id: RequestId) -> Withdrawal | None:
        return self._w.get(request_id)

    def withdrawals(self) -> list[Withdrawal]:
        return list(self._w.values())

    def seen(self, request_id: str, digest: str) -> bool | None:
        """For the duplicate rule (:mod:`watcher.withdrawals.intake`): whether a request was
        accepted (or refused after authentication) under this id, here or by another chain,
        however long ago: None (never), True (with this digest: an exact repeat), False
        (with other content)."""
        rid = RequestId(request_id)
        w = self._w.get(rid)
        if w is not None:
            return w.request.digest == digest
        fresh = self._fresh.get(rid)
        if fresh is not None:
            return fresh[0] == digest
        return self.settled.seen(rid, digest)

    def knows(self, request_id: str) -> bool:
        """The id is taken (live, settled, refused or claimed)."""
        rid = RequestId(request_id)
        return rid in self._w or rid in self._fresh or rid in self.settled

    def bound_keys(self) -> frozenset[str]:
        """Every binding key a request holds (``in:<txid>:<vout>``, ``nonce:<n>``): coin
        selection must leave these outputs alone."""
        return frozenset(self._by_key)

    def used_today(self, asset: AssetSymbol, now_ms: int) -> int:
        return self.limits.used(asset, now_ms)

    def summary(self, height: int) -> BookSummary:
        """Counts for the gauges: by state, stuck payments, the last nonce gap."""
        by_state = dict.fromkeys(WithdrawalState, 0)
        stuck = refused = 0
        for w in self._w.values():
            by_state[w.state] += 1
            if w.state in TERMINAL or w.inclusion is not None:
                continue
            if w.refusals:
                refused += 1
                stuck += 1
            elif (w.state in (WithdrawalState.BROADCAST, WithdrawalState.REPLACED)
                    and w.sent_height is not None and height - w.sent_height >= self.cfg.stuck_blocks):
                stuck += 1
        return BookSummary(by_state, stuck, self.nonces.last_gap, refused)

    # --------------------------------------------------------- observations

    def accept(self, request: Request) -> list[Decision]:
        """A request passed intake: recorded, counted against the daily limit, announced."""
        rid = request.request_id
        if self.knows(rid):
            raise ValueError(f"request {rid} is already accepted")
        self.limits.add(request.asset, request.amount, request.received_ms)
        self._w[rid] = Withdrawal(request, WithdrawalState.ACCEPTED)
        return [Emit(WithdrawalEvent(WithdrawalEventType.ACCEPTED, request)), Commit(),
                CheckFunds(rid)]

    def reject(self, request_id: RequestId, digest: str) -> list[Decision]:
        """An authenticated request of this chain was refused: remembered, so that the same
        request is a silent repeat from now on and never accepted later."""
        if not self.knows(request_id):
            self._fresh[request_id] = (digest, self.chain, SettledOutcome.REJECTED)
        return []

    def claim(self, request_id: RequestId, digest: str, chain: ChainId) -> list[Decision]:
        """Another chain's runner accepted or refused (after authentication) a request with
        this id: the id is taken here too, so the same id for this chain is a duplicate."""
        if chain == self.chain:
            raise ValueError("a chain's own requests are accepted or rejected, not claimed")
        if not self.knows(request_id):
            self._fresh[request_id] = (digest, chain, SettledOutcome.CLAIMED)
        return []

    def funds(self, request_id: RequestId, available: bool,
              inputs: Sequence[str] | None = None) -> list[Decision]:
        """Whether the hot wallet can pay now; UTXO chains pass the selected inputs."""
        w = self._w.get(request_id)
        if w is None or w.binding is not None or w.state not in (
                WithdrawalState.ACCEPTED, WithdrawalState.WAITING_FUNDS):
            return []
        if not available:
            self._put(replace(w, state=WithdrawalState.WAITING_FUNDS))
            return []
        binding: Binding
        if self.cfg.uses_nonces:
            if self.nonces.next is None:
                return [ReconcileNonce()]
            binding = NonceBinding(self.nonces.allocate())
        else:
            if not inputs:
                raise ValueError("a UTXO payment needs the inputs chosen for it")
            binding = InputsBinding(tuple(sorted(set(inputs))))
            taken = [k for k in binding.spend_keys() if k in self._by_key]
            if taken:
                raise BindingViolation(f"inputs {', '.join(taken)} are already bound")
        w = replace(w, state=WithdrawalState.ACCEPTED, binding=binding)
        self._put(w)
        return [Bind(request_id, binding, w.epoch), Commit(),
                Sign(request_id, binding, Fees(0, 0), None)]

    def funds_batch(self, request_ids: Sequence[RequestId], inputs: Sequence[str]) -> list[Decision]:
        """UTXO batching: the hot wallet pays these requests (two or more, each unbound and
        accepted or waiting for funds) together by one transaction spending ``inputs``.
        Each is bound to the *whole* input set, so every transaction of the batch (the
        first and each bump: same inputs, same outputs) spends each member's binding, and
        at most one of them can confirm. One :class:`Sign` follows, for the first member."""
        if self.cfg.uses_nonces:
            raise ValueError("only UTXO payments are batched")
        rids = tuple(sorted(set(request_ids)))
        if len(rids) < 2:
            raise ValueError("a batch pays at least two requests")
        if not inputs:
            raise ValueError("a UTXO payment needs the inputs chosen for it")
        members = []
        for rid in rids:
            w = self._w.get(rid)
            if w is None or w.binding is not None or w.state not in (
                    WithdrawalState.ACCEPTED, WithdrawalState.WAITING_FUNDS):
                raise ValueError(f"request {rid} cannot join a batch (unknown, bound or settled)")
            members.append(w)
        binding = InputsBinding(tuple(sorted(set(inputs))))
        taken = [k for k in binding.spend_keys() if k in self._by_key]
        if taken:
            raise BindingViolation(f"inputs {', '.join(taken)} are already bound")
        out: list[Decision] = []
        for w in members:
            self._put(replace(w, state=WithdrawalState.ACCEPTED, binding=binding, batch=rids))
            out.append(Bind(w.request.request_id, binding, w.epoch))
        return [*out, Commit(), Sign(rids[0], binding, Fees(0, 0), None)]

    def members(self, w: Withdrawal) -> list[Withdrawal]:
        """The requests paid by ``w``'s transactions: its batch, or ``w`` alone."""
        if not w.batch:
            return [w]
        return [m for m in (self._w.get(r) for r in w.batch) if m is not None]

    def signed(self, request_id: RequestId, tx: SignedTx) -> list[Decision]:
        """A transaction was signed for the request (for a batch: for every member, which
        all record it): recorded, then (after commit) sent."""
        w = self._w.get(request_id)
        if w is None or w.binding is None:
            raise BindingViolation(f"request {request_id} is not bound")
        members = self.members(w)
        for m in members:
            if tx.binding != m.binding:
                raise BindingViolation(f"a transaction for {m.request.request_id} spends another binding")
            if m.attempts != w.attempts or m.batch != w.batch:
                raise BindingViolation(f"batch of {request_id} is out of step")
        if w.state in TERMINAL or w.inclusion is not None:
            return []  # a block already holds a payment for the binding: this one is never sent
        if any(a.txid == tx.txid for a in w.attempts):
            return []
        prev = w.latest
        if prev is not None and not tx.fees.covers(prev.fees.bumped()):
            # A stale Sign (another replacement was recorded since it was decided): never sent,
            # since a node would refuse it as underpriced; the stuck rule decides again.
            return []
        if not self.cfg.fee_cap.covers(tx.fees):
            raise BindingViolation(f"a transaction for {request_id} exceeds the fee cap")
        for m in members:
            state = m.state if m.state in (WithdrawalState.BROADCAST, WithdrawalState.REPLACED) \
                else WithdrawalState.SIGNED
            # sent_height None: not handed over yet, so the stuck rule sends it rather than bumping it.
            self._put(replace(m, state=state, attempts=(*m.attempts, tx), sent_height=None))
        return [Commit(), Broadcast(request_id, tx.txid, tx.raw, again=False)]

    def broadcast_result(self, request_id: RequestId, txid: TxId, outcome: BroadcastOutcome,
                         tip_height: int) -> list[Decision]:
        """What a node answered to the bytes; for a batch, the answer holds for every member
        (each gets its own event), and what follows (a bump) is decided once."""
        w = self._w.get(request_id)
        if w is None:
            return []
        emits: list[Decision] = []
        rest: list[Decision] = []
        for m in self.members(w):
            for d in self._broadcast_one(m, txid, outcome, tip_height):
                if isinstance(d, Emit):
                    emits.append(d)
                elif d not in rest:
                    rest.append(d)
        return [*emits, *rest]

    def _broadcast_one(self, w: Withdrawal, txid: TxId, outcome: BroadcastOutcome,
                       tip_height: int) -> list[Decision]:
        request_id = w.request.request_id
        if w.state in TERMINAL:
            return []
        tx = next((a for a in w.attempts if a.txid == txid), None)
        if tx is None:
            return []
        if outcome in (BroadcastOutcome.OK, BroadcastOutcome.ALREADY_KNOWN):
            out: list[Decision] = []
            if txid not in w.announced:
                # It replaces the last transaction a node took; one no node took replaces nothing.
                replaces = _last_announced(w, before=tx)
                kind = WithdrawalEventType.REPLACED if replaces else WithdrawalEventType.BROADCAST
                out.append(Emit(WithdrawalEvent(kind, w.request, txid=txid, replaces_txid=replaces,
                                                nonce=_nonce(tx.binding),
                                                fee=fee_share(tx.fee, w.batch, request_id))))
                w = replace(w, announced=(*w.announced, txid))
            state = w.state
            if w.inclusion is None:
                state = WithdrawalState.REPLACED if len(w.announced) > 1 else WithdrawalState.BROADCAST
            self._put(replace(w, state=state, sent_height=tip_height, refusals=0, retry_height=None))
            return out
        if outcome is BroadcastOutcome.REFUSED:
            # Never something else for the binding (the bytes are bound): the same bytes
            # later, after 1, 2, 4 ... blocks; counted stuck meanwhile (the alert).
            if tx is not w.latest or w.inclusion is not None:
                return []
            delay = min(REFUSAL_BACKOFF_MAX_BLOCKS, 2 ** min(w.refusals, 16))
            self._put(replace(w, refusals=w.refusals + 1, retry_height=tip_height + delay))
            return []
        if outcome is BroadcastOutcome.UNDERPRICED:
            if tx is not w.latest or w.consumed_hint or w.inclusion is not None:
                return []
            want = tx.fees.bumped()
            if not self.cfg.fee_cap.covers(want):
                # At the cap: nothing higher may be signed; the stuck rule sends it again later.
                self._put(replace(w, sent_height=tip_height))
                return []
            assert w.binding is not None
            return [Sign(_lead(w), w.binding, want, _last_announced(w))]
        if outcome is BroadcastOutcome.CONSUMED:
            # Our own earlier transaction may be mined, or another sender used the nonce: only
            # a block can tell. Never bump a nonce that is gone (Chainlink #5478).
            self._put(replace(w, consumed_hint=True, sent_height=tip_height))
            return [ReconcileNonce()] if self.cfg.uses_nonces else []
        return []

    def nonce_counts(self, latest: int, pending: int) -> list[Decision]:
        """The node's counts for the hot wallet: the counter is reconciled, waiting
        requests are looked at again."""
        held = [w.binding.nonce for w in self._w.values()
                if isinstance(w.binding, NonceBinding) and w.state not in TERMINAL]
        self.nonces.reconcile(latest, pending, held)
        return [Commit(), *(CheckFunds(w.request.request_id) for w in self._w.values()
                            if w.binding is None and w.state in (WithdrawalState.ACCEPTED,
                                                                 WithdrawalState.WAITING_FUNDS))]

    def block_added(self, number: int, block_hash: BlockHash,
                    spends: Sequence[Spend]) -> list[Decision]:
        """A block joined the canonical chain; ``spends`` are its consumptions of hot-wallet
        binding keys (every transaction from the hot wallet / every input spending its outputs)."""
        for s in spends:
            rids = self._by_key.get(s.key)
            if not rids:
                self._nonce_seen(s.key)
                continue
            for rid in sorted(rids):  # every member of a batch: they share the key
                w = self._w[rid]
                # Hex case must not turn our own payment into a "foreign" one: that would re-bind
                # the request at finality and pay it a second time. The recorded form is kept.
                own = next((a for a in w.attempts if a.txid.lower() == s.txid.lower()), None)
                ours = own is not None
                if w.inclusion is not None and w.inclusion.ours and not ours:
                    continue
                txid = own.txid if own is not None else s.txid
                inc = Inclusion(txid, number, block_hash, ours, s.reverted and ours, s.fee_paid)
                self._put(replace(w, inclusion=inc))
        return []

    def blocks_removed(self, hashes: Iterable[BlockHash]) -> list[Decision]:
        """Blocks left the canonical chain: payments in them are sent again, same bytes."""
        gone = set(hashes)
        out: list[Decision] = []
        sent: set[TxId] = set()  # a batch's bytes once: the answer holds for every member
        for w in list(self._w.values()):
            inc = w.inclusion
            if inc is None or inc.block_hash not in gone:
                continue
            state = w.state
            if state is WithdrawalState.CONFIRMED or state is WithdrawalState.FAILED:
                # Deeper than the confirmations: the event stays (one per request), the payment
                # goes on with the same bytes; an operator alert belongs to the runtime.
                state = WithdrawalState.REPLACED if len(w.announced) > 1 else WithdrawalState.BROADCAST
            self._put(replace(w, inclusion=None, state=state, consumed_hint=False, retry_height=None))
            tx = next((a for a in w.attempts if a.txid == inc.txid), None) or w.latest
            if tx is not None and tx.txid not in sent:
                sent.add(tx.txid)
                out.append(Broadcast(w.request.request_id, tx.txid, tx.raw, again=True))
        return out

    def tip(self, height: int, finalized: int | None) -> list[Decision]:
        """The canonical tip moved: confirmations, failures, proven foreign spends, stuck payments."""
        out: list[Decision] = []
        for w in list(self._w.values()):
            if w.state in TERMINAL and w.inclusion is not None:
                if finalized is not None and w.inclusion.block_number <= finalized:
                    self._forget(w)
                continue
            inc = w.inclusion
            if inc is not None and inc.ours:
                out.extend(self._settle(w, inc, height))
            elif inc is not None:
                if finalized is not None and inc.block_number <= finalized:
                    out.extend(self._rebind(w))
            elif w.state is WithdrawalState.WAITING_FUNDS:
                out.append(CheckFunds(w.request.request_id))
            elif (w.state in (WithdrawalState.BROADCAST, WithdrawalState.REPLACED, WithdrawalState.SIGNED)
                  and _lead(w) == w.request.request_id):  # a batch is sent or bumped once, by its lead
                out.extend(self._stuck(w, height))
        return _events_first(out)

    def resume(self) -> list[Decision]:
        """After a restart from a snapshot: what was under way is taken up again, the
        recorded bytes broadcast again, unbound requests looked at again."""
        out: list[Decision] = []
        if self.cfg.uses_nonces:
            out.append(ReconcileNonce())
        for w in self._w.values():
            rid = w.request.request_id
            if w.state in TERMINAL or (w.binding is not None and _lead(w) != rid):
                continue  # a batch's bytes are signed or sent once, by its lead
            if w.binding is None:
                out.append(CheckFunds(rid))
            elif w.latest is None:
                out.append(Sign(rid, w.binding, Fees(0, 0), None))
            elif w.inclusion is None:
                tx = w.latest
                out.append(Broadcast(rid, tx.txid, tx.raw, again=True))
        return out

    # --------------------------------------------------------- transitions

    def _settle(self, w: Withdrawal, inc: Inclusion, height: int) -> list[Decision]:
        confirmations = height - inc.block_number + 1
        if confirmations < self.cfg.confirmations or w.final_announced:
            if w.final_announced and w.state not in TERMINAL:
                self._put(replace(w, state=WithdrawalState.FAILED if inc.reverted
                                  else WithdrawalState.CONFIRMED))
            return []
        tx = next(a for a in w.attempts if a.txid == inc.txid)
        fee = fee_share(inc.fee_paid if inc.fee_paid is not None else tx.fee, w.batch,
                        w.request.request_id)
        if inc.reverted:
            ev = WithdrawalEvent(WithdrawalEventType.FAILED, w.request, txid=inc.txid,
                                 nonce=_nonce(tx.binding), fee=fee, block_number=inc.block_number,
                                 block_hash=inc.block_hash, confirmations=confirmations,
                                 reason="reverted", message="the paying transaction reverted on chain")
            state = WithdrawalState.FAILED
        else:
            ev = WithdrawalEvent(WithdrawalEventType.CONFIRMED, w.request, txid=inc.txid,
                                 nonce=_nonce(tx.binding), fee=fee, block_number=inc.block_number,
                                 block_hash=inc.block_hash, confirmations=confirmations)
            state = WithdrawalState.CONFIRMED
        self._put(replace(w, state=state, final_announced=True))
        return [Emit(ev)]

    def _rebind(self, w: Withdrawal) -> list[Decision]:
        # Proven at finality: the binding was consumed by a transaction that does not pay the
        # request, so none of its transactions can ever confirm. Start over unbound.
        if w.final_announced:
            return []
        assert w.binding is not None
        # Each member of a batch starts over alone (the same proof holds for all of them).
        self._put(replace(w, state=WithdrawalState.ACCEPTED, binding=None, epoch=w.epoch + 1,
                          retired=(*w.retired, *w.attempts), attempts=(), sent_height=None,
                          consumed_hint=False, inclusion=None, batch=()))
        return [Commit(), CheckFunds(w.request.request_id)]

    def _stuck(self, w: Withdrawal, height: int) -> list[Decision]:
        tx = w.latest
        assert tx is not None and w.binding is not None
        rid = w.request.request_id
        if w.retry_height is not None:
            if height < w.retry_height:
                return []  # refused by the nodes: backing off
            return [Broadcast(rid, tx.txid, tx.raw, again=True)]
        if w.sent_height is None:
            # Signed but never handed over (no node answered): send again.
            return [Broadcast(rid, tx.txid, tx.raw, again=True)]
        if height - w.sent_height < self.cfg.stuck_blocks:
            return []
        want = tx.fees.bumped()
        if w.consumed_hint or not self.cfg.fee_cap.covers(want):
            for m in self.members(w):
                self._put(replace(m, sent_height=height))
            return [Broadcast(rid, tx.txid, tx.raw, again=True)]
        return [Sign(rid, w.binding, want, _last_announced(w))]

    def _forget(self, w: Withdrawal) -> None:
        # Settled in a final block: nothing can change it any more. It leaves the snapshot for
        # a settled record (its digest: the duplicate rule), so the snapshot committed with
        # every step holds what is in flight only.
        rid = w.request.request_id
        if w.binding is not None:
            self._unkey(rid, w.binding)
        del self._w[rid]
        outcome = SettledOutcome.FAILED if w.state is WithdrawalState.FAILED else SettledOutcome.CONFIRMED
        self._fresh[rid] = (w.request.digest, self.chain, outcome)

    def _nonce_seen(self, key: str) -> None:
        # A nonce of the hot wallet used on chain by no request of ours (another sender of the
        # same key): the counter moves past it now, so no request is bound to a nonce the chain
        # already shows consumed (its proof would be in a block we have already looked at).
        if not key.startswith("nonce:") or self.nonces.next is None:
            return
        n = int(key.removeprefix("nonce:"))
        if n >= self.nonces.next:
            self.nonces.next = n + 1

    def _put(self, w: Withdrawal) -> None:
        rid = w.request.request_id
        old = self._w.get(rid)
        if old is not None and old.binding is not None and old.binding != w.binding:
            self._unkey(rid, old.binding)
        if w.binding is not None:
            for k in w.binding.spend_keys():
                self._by_key.setdefault(k, set()).add(rid)
        self._w[rid] = w

    def _unkey(self, rid: RequestId, binding: Binding) -> None:
        for k in binding.spend_keys():
            held = self._by_key.get(k)
            if held is not None:
                held.discard(rid)
                if not held:
                    del self._by_key[k]

    # --------------------------------------------------------- persistence

    def snapshot(self) -> bytes:
        """The live state (version :data:`SNAPSHOT_VERSION`): no settled request in it."""
        return orjson.dumps({
            "version": SNAPSHOT_VERSION,
            "chain": self.chain,
            "next_nonce": self.nonces.next,
            "limits": [[t, s, str(a)] for t, s, a in self.limits.entries],
            "withdrawals": [_w_out(w) for w in self._w.values()],
        })

    def take_changes(self) -> Changes:
        """What the next commit writes: the live snapshot and one settled record per request
        that left the live set (or was refused or claimed) since the last commit. Both in one
        transaction; then :meth:`changes_committed`. Nothing is cleared here, so a commit that
        fails leaves the book as it was (the runtime restores it from the last snapshot)."""
        return Changes(self.snapshot(),
                       {rid: settled_record(d, c, o) for rid, (d, c, o) in self._fresh.items()})

    def changes_committed(self) -> None:
        """The last :meth:`take_changes` is durable: its records join :attr:`settled`."""
        for rid, (digest, _, _) in self._fresh.items():
            self.settled.add(rid, digest)
        self._fresh.clear()

    @classmethod
    def restore(cls, data: bytes, chain: ChainId, cfg: MachineConfig,
                settled: SettledIndex | None = None) -> WithdrawalBook:
        """The book from its last snapshot and the settled records (:func:`load_settled`).

        A version 1 snapshot (from before settled records) loads too: every digest it holds
        of a request no longer live becomes a settled record of the next commit
        (outcome ``migrated``), so the first commit after the upgrade moves the history out of
        the snapshot, and the duplicate rule holds for it all along."""
        book = cls(chain, cfg, settled)
        try:
            raw = orjson.loads(data)
            version = raw.get("version")
            if version not in (1, SNAPSHOT_VERSION):
                raise SnapshotError(f"withdrawal snapshot version {version!r} is not supported")
            if raw.get("chain") != chain:
                raise SnapshotError(f"withdrawal snapshot belongs to chain {raw.get('chain')!r}")
            nxt = raw["next_nonce"]
            book.nonces.next = None if nxt is None else int(nxt)
            book.limits.entries = [(int(t), AssetSymbol(str(s)), int(a)) for t, s, a in raw["limits"]]
            for x in raw["withdrawals"]:
                book._put(_w_in(x))
            if version == 1:
                for k, v in raw["digests"].items():
                    rid = RequestId(str(k))
                    if not book.knows(rid):
                        book._fresh[rid] = (str(v), chain, SettledOutcome.MIGRATED)
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, orjson.JSONDecodeError) as exc:
            raise SnapshotError(f"withdrawal snapshot of {chain} is unreadable: {exc!r}") from exc
        return book


def _events_first(ds: list[Decision]) -> list[Decision]:
    # Every state change of an observation is made before its decisions are returned, so any
    # Commit in the list makes all of them durable: the events stating them must be emitted
    # before it, or a crash right after that Commit would lose an event whose fact is
    # already recorded as announced (found by the property test).
    return [d for d in ds if isinstance(d, Emit)] + [d for d in ds if not isinstance(d, Emit)]


def fee_share(fee: int, batch: Sequence[RequestId], request_id: RequestId) -> int:
    """A member's part of a batch's ``fee``, in base units: an equal share, the remainder
    one unit each to the first members (in request id order), so the shares of a batch
    sum exactly to its fee. Alone (``batch`` empty): the whole fee."""
    if not batch:
        return fee
    n = len(batch)
    return fee // n + (1 if batch.index(request_id) < fee % n else 0)


def _lead(w: Withdrawal) -> RequestId:
    """Who signs and sends a batch's transactions (its first member); a lone request itself."""
    return w.batch[0] if w.batch else w.request.request_id


def _last_announced(w: Withdrawal, before: SignedTx | None = None) -> TxId | None:
    attempts = w.attempts if before is None else w.attempts[:w.attempts.index(before)]
    for a in reversed(attempts):
        if a.txid in w.announced:
            return a.txid
    return None


def _nonce(b: Binding) -> int | None:
    return b.nonce if isinstance(b, NonceBinding) else None


def _binding_out(b: Binding | None) -> Any:
    if b is None:
        return None
    if isinstance(b, NonceBinding):
        return {"nonce": b.nonce}
    return {"inputs": list(b.outpoints)}


def _binding_in(x: Any) -> Binding | None:
    if x is None:
        return None
    if "nonce" in x:
        return NonceBinding(int(x["nonce"]))
    return InputsBinding(tuple(str(o) for o in x["inputs"]))


def _tx_out(t: SignedTx) -> list[Any]:
    return [t.txid, t.raw.hex(), _binding_out(t.binding), str(t.fees.max_fee), str(t.fees.tip), str(t.fee)]


def _tx_in(x: list[Any]) -> SignedTx:
    txid, raw, b, max_fee, tip, fee = x
    binding = _binding_in(b)
    if binding is None:
        raise ValueError("a signed transaction without binding")
    return SignedTx(TxId(str(txid)), bytes.fromhex(raw), binding, Fees(int(max_fee), int(tip)), int(fee))


def _w_out(w: Withdrawal) -> dict[str, Any]:
    out = _w_fields(w)
    if w.batch:  # only then: a lone request's form is the one before batching
        out["batch"] = list(w.batch)
    return out


def _w_fields(w: Withdrawal) -> dict[str, Any]:
    r = w.request
    inc = w.inclusion
    return {
        "r": [r.request_id, r.asset, r.token_contract, r.to_address, str(r.amount), r.decimals,
              r.digest, r.received_ms],
        "state": w.state.value, "binding": _binding_out(w.binding), "epoch": w.epoch,
        "attempts": [_tx_out(t) for t in w.attempts], "retired": [_tx_out(t) for t in w.retired],
        "announced": list(w.announced), "sent_height": w.sent_height, "consumed_hint": w.consumed_hint,
        "inclusion": None if inc is None else [inc.txid, inc.block_number, inc.block_hash, inc.ours,
                                               inc.reverted, inc.fee_paid],
        "final_announced": w.final_announced,
        "refusals": w.refusals, "retry_height": w.retry_height,
    }


def _w_in(x: dict[str, Any]) -> Withdrawal:
    rid, asset, token, to, amount, decimals, digest, received = x["r"]
    request = Request(RequestId(str(rid)), AssetSymbol(str(asset)), Address(token) if token else None,
                      Address(str(to)), int(amount), int(decimals), str(digest), int(received))
    inc_raw = x["inclusion"]
    inclusion = None
    if inc_raw is not None:
        txid, number, h, ours, reverted, fee_paid = inc_raw
        inclusion = Inclusion(TxId(str(txid)), int(number), BlockHash(str(h)), bool(ours), bool(reverted),
                              None if fee_paid is None else int(fee_paid))
    sent = x["sent_height"]
    retry = x.get("retry_height")  # fields added after version 1: defaults when absent
    return Withdrawal(
        request=request, state=WithdrawalState(x["state"]), binding=_binding_in(x["binding"]),
        epoch=int(x["epoch"]), attempts=tuple(_tx_in(t) for t in x["attempts"]),
        retired=tuple(_tx_in(t) for t in x["retired"]),
        announced=tuple(TxId(str(t)) for t in x["announced"]),
        sent_height=None if sent is None else int(sent), consumed_hint=bool(x["consumed_hint"]),
        inclusion=inclusion, final_announced=bool(x["final_announced"]),
        refusals=int(x.get("refusals", 0)), retry_height=None if retry is None else int(retry),
        batch=tuple(RequestId(str(r)) for r in x.get("batch", ())),
    )
