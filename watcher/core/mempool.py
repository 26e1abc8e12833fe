"""Unconfirmed UTXO deposits: seen, replaced, double-spent, dropped — decided, never performed.

Pure and synchronous; time is an input (``now`` of each poll), never read.

The tracker keeps state only for unconfirmed transactions paying watched
addresses, plus an index from each outpoint they spend to their txid, so memory
is bounded by what is watched, never by the size of the mempool. For each such
transaction it guarantees:

* one ``deposit.seen`` per deposit (``vout:<n>``) per *episode*, with ``rbf``;
* at most one ``deposit.reverted`` per deposit per episode, only after its
  ``seen``, with ``reason``:

  - ``replaced``: a newer mempool transaction spends one of its outpoints; a
    replacement paying a watched address is a new deposit with its own ``seen``;
  - ``double_spent``: a connected block holds another transaction spending one
    of its outpoints;
  - ``dropped``: gone from the mempool, and not mined, for ``drop_after_s``,
    decided only while the block path is caught up with the node's tip the poll
    was taken at (a transaction gone because it was mined in a block not yet
    processed must not be called dropped);

* mined normally: no event; it leaves this state and the block path
  (:class:`watcher.core.deposits.DepositTracker`) carries it as
  ``pending``/``confirmed``, and reverts it with ``reason: reorg`` if its block
  leaves the chain. Seen again in the mempool afterwards, it is a new fact.

An episode is a number drawn from a counter kept in the state (and in the
checkpoint): a deposit seen, dropped and seen again gets a new episode, so its
events get new ids, while replaying the same polls from the same checkpoint
draws the same numbers and re-derives the same ids.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, replace

from watcher.core.deposits import LabelOf, RequiredConfirmations
from watcher.types import (
    BlockHash,
    ChainId,
    DepositEventType,
    DepositId,
    Outpoint,
    RevertReason,
    Spend,
    Transfer,
    TxId,
    deposit_id,
)


@dataclass(frozen=True, slots=True)
class UnconfirmedTx:
    """A mempool transaction as its chain family parsed it.

    ``transfers`` are only its outputs paying watched addresses (locator
    ``vout:<n>``, dust already left out), possibly none: a transaction paying
    nobody watched still matters when it spends an outpoint of a seen one.
    """

    txid: TxId
    transfers: tuple[Transfer, ...]
    spends: tuple[Outpoint, ...]
    rbf: bool

    def __post_init__(self) -> None:
        if not self.spends:
            raise ValueError(f"unconfirmed transaction {self.txid}: 'spends' is empty "
                             "(a coinbase is never in a mempool)")
        if len(set(self.spends)) != len(self.spends):
            raise ValueError(f"unconfirmed transaction {self.txid}: an outpoint in 'spends' twice")
        locators = set()
        for t in self.transfers:
            if t.txid != self.txid:
                raise ValueError(f"unconfirmed transaction {self.txid}: transfer 'txid' is {t.txid}")
            if t.locator in locators:
                raise ValueError(f"unconfirmed transaction {self.txid}: 'locator' {t.locator} twice")
            locators.add(t.locator)


@dataclass(frozen=True, slots=True)
class MempoolChange:
    """One poll of a node's mempool, relative to the previous poll of the same source.

    ``tip`` is the node's best block hash when the poll was taken. ``present``,
    when given, lists every txid in the mempool (a full resync, e.g. after a
    restart): any tracked transaction not in it counts as gone.
    """

    added: tuple[UnconfirmedTx, ...] = ()
    gone: tuple[TxId, ...] = ()
    tip: BlockHash | None = None
    present: frozenset[TxId] | None = None


@dataclass(frozen=True, slots=True)
class SeenDeposit:
    deposit_id: DepositId
    transfer: Transfer
    required: int
    label: str | None


@dataclass(frozen=True, slots=True)
class SeenTx:
    """A watched unconfirmed transaction; ``gone_since`` is set while the mempool lacks it."""

    txid: TxId
    episode: int
    rbf: bool
    spends: tuple[Outpoint, ...]
    deposits: tuple[SeenDeposit, ...]
    gone_since: float | None = None


@dataclass(frozen=True, slots=True)
class UnconfirmedEvent:
    """``deposit.seen`` or the ``deposit.reverted`` of a seen deposit (no block: null fields)."""

    type: DepositEventType
    deposit: SeenDeposit
    episode: int
    rbf: bool
    reason: RevertReason | None = None

    @property
    def previous_type(self) -> DepositEventType | None:
        return DepositEventType.SEEN if self.type is DepositEventType.REVERTED else None


class MempoolTracker:
    def __init__(self, chain: ChainId, required_for: RequiredConfirmations,
                 drop_after_s: float) -> None:
        if drop_after_s <= 0:
            raise ValueError(f"drop_after_s must be positive, got {drop_after_s!r}")
        self.chain = chain
        self.drop_after_s = drop_after_s
        self._required_for = required_for
        # Insertion order is the order seen: events come out deterministic.
        self._txs: dict[TxId, SeenTx] = {}
        self._spent_by: dict[Outpoint, TxId] = {}
        self.next_episode = 0
        self.mutations = 0
        """Counts every change of the state: equal before and after a poll means there is
        nothing new to checkpoint."""

    def __len__(self) -> int:
        return len(self._txs)

    def txs(self) -> list[SeenTx]:
        return list(self._txs.values())

    def outpoints(self) -> frozenset[Outpoint]:
        """Every outpoint a tracked transaction spends: the inputs a connected block's
        ``spends`` must list at least (to tell mined from double-spent)."""
        return frozenset(self._spent_by)

    def restore(self, txs: Iterable[SeenTx], next_episode: int) -> None:
        self._txs.clear()
        self._spent_by.clear()
        for tx in txs:
            if tx.episode >= next_episode:
                raise ValueError(f"mempool tx {tx.txid}: episode {tx.episode} is not below "
                                 f"next_episode {next_episode}")
            self._add(tx)
        self.next_episode = next_episode

    # ------------------------------------------------------------ inputs

    def observe(self, change: MempoolChange, now: float, label_of: LabelOf, *,
                caught_up: bool, in_blocks: Container[TxId] = frozenset()
                ) -> list[UnconfirmedEvent]:
        """Applies one mempool poll taken at ``now``.

        ``caught_up``: the block path has processed the block the poll was taken at,
        so a transaction still gone is known not to be mined; drops wait for it.
        ``in_blocks``: txids the block path already holds in canonical blocks; the
        mempool answer naming one is older than the block and is ignored.
        """
        events: list[UnconfirmedEvent] = []
        for tx in change.added:
            known = self._txs.get(tx.txid)
            if known is not None:
                # Back in the mempool (or reported twice): the same episode goes on.
                if known.gone_since is not None:
                    self._txs[tx.txid] = replace(known, gone_since=None)
                    self.mutations += 1
                continue
            if tx.txid in in_blocks:
                continue
            # The node holds one transaction per outpoint: whatever seen one spent the
            # same outpoint is out of its mempool for good.
            for txid in self._conflicts(tx.txid, tx.spends):
                events.extend(self._revert(txid, RevertReason.REPLACED))
            if tx.transfers:
                events.extend(self._see(tx, label_of))

        gone = set(change.gone)
        if change.present is not None:
            gone.update(t for t in self._txs if t not in change.present)
        for txid in gone:
            known = self._txs.get(txid)
            if known is not None and known.gone_since is None:
                self._txs[txid] = replace(known, gone_since=now)
                self.mutations += 1

        if caught_up:
            expired = [t.txid for t in self._txs.values()
                       if t.gone_since is not None and now - t.gone_since >= self.drop_after_s]
            for txid in expired:
                events.extend(self._revert(txid, RevertReason.DROPPED))
        return events

    def connect(self, spends: Sequence[Spend], paying: Iterable[TxId] = ()
                ) -> tuple[list[UnconfirmedEvent], int]:
        """Applies a block that joined the canonical chain: returns the double-spend
        reversals and how many seen deposits it mined (their transactions leave this
        state; the block path announces them).

        ``paying``: txids of the block's transfers to watched addresses. A tracked one
        is mined even if ``spends`` missed it, so it can never be dropped (reverted)
        while the block path announces it.
        """
        events: list[UnconfirmedEvent] = []
        mined = {t for t in paying if t in self._txs}
        conflicted: dict[TxId, None] = {}
        for s in spends:
            owner = self._spent_by.get(s.outpoint)
            if owner is None:
                continue
            if owner == s.txid:
                mined.add(owner)
            else:
                conflicted[owner] = None
        deposits_mined = 0
        for txid in mined:
            deposits_mined += len(self._remove(txid).deposits)
        for txid in conflicted:
            if txid not in mined:
                events.extend(self._revert(txid, RevertReason.DOUBLE_SPENT))
        return events, deposits_mined

    # ------------------------------------------------------------ transitions

    def _see(self, tx: UnconfirmedTx, label_of: LabelOf) -> list[UnconfirmedEvent]:
        deposits = tuple(
            SeenDeposit(deposit_id(self.chain, tx.txid, t.locator), t,
                        self._required_for(t.asset, t.amount), label_of(t))
            for t in tx.transfers)
        seen = SeenTx(tx.txid, self.next_episode, tx.rbf, tx.spends, deposits)
        self.next_episode += 1
        self._add(seen)
        return [UnconfirmedEvent(DepositEventType.SEEN, d, seen.episode, seen.rbf)
                for d in deposits]

    def _revert(self, txid: TxId, reason: RevertReason) -> list[UnconfirmedEvent]:
        tx = self._remove(txid)
        return [UnconfirmedEvent(DepositEventType.REVERTED, d, tx.episode, tx.rbf, reason)
                for d in tx.deposits]

    def _conflicts(self, txid: TxId, spends: Iterable[Outpoint]) -> list[TxId]:
        found: dict[TxId, None] = {}
        for op in spends:
            owner = self._spent_by.get(op)
            if owner is not None and owner != txid:
                found[owner] = None
        return list(found)

    def _add(self, tx: SeenTx) -> None:
        if tx.txid in self._txs:
            raise ValueError(f"mempool tx {tx.txid} is already tracked")
        for op in tx.spends:
            other = self._spent_by.get(op)
            if other is not None:
                raise ValueError(f"mempool tx {tx.txid} spends {op.txid}:{op.vout}, "
                                 f"already spent by tracked {other}")
        self._txs[tx.txid] = tx
        for op in tx.spends:
            self._spent_by[op] = tx.txid
        self.mutations += 1

    def _remove(self, txid: TxId) -> SeenTx:
        tx = self._txs.pop(txid)
        for op in tx.spends:
            if self._spent_by.get(op) == txid:
                del self._spent_by[op]
        self.mutations += 1
        return tx
