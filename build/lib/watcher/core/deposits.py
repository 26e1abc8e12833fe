"""Per-deposit lifecycle: pending, confirmed, reverted — decided, never performed.

Pure and synchronous. The tracker remembers every deposit whose block is still
inside the chain window and what was last announced for it, so that:

* each ``(deposit_id, block_hash)`` gets at most one ``pending``, one
  ``confirmed`` and one ``reverted``, in that order;
* a deposit first seen already deep enough gets ``confirmed`` alone (the
  contract's ``pending`` means "below the required confirmations");
* a reorg that removes its block reverts it, whatever was announced, and says
  which type it reverts (``previous_type``), since a reversal after credit is
  the alert-grade case.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from watcher.types import (
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainId,
    DepositEventType,
    DepositId,
    Transfer,
    deposit_id,
)

RequiredConfirmations = Callable[[AssetSymbol, int], int]
LabelOf = Callable[[Transfer], str | None]


@dataclass(frozen=True, slots=True)
class TrackedDeposit:
    deposit_id: DepositId
    block: BlockRef
    transfer: Transfer
    required: int
    label: str | None
    announced: DepositEventType | None = None


@dataclass(frozen=True, slots=True)
class DepositEvent:
    type: DepositEventType
    deposit: TrackedDeposit
    confirmations: int
    previous_type: DepositEventType | None = None


class DepositTracker:
    def __init__(self, chain: ChainId, required_for: RequiredConfirmations) -> None:
        self.chain = chain
        self._required_for = required_for
        # Insertion order is block order, then transfer order: events come out deterministic.
        self._by_block: dict[BlockHash, list[TrackedDeposit]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_block.values())

    def deposits(self) -> list[TrackedDeposit]:
        return [d for ds in self._by_block.values() for d in ds]

    def restore(self, deposits: Iterable[TrackedDeposit]) -> None:
        self._by_block.clear()
        for d in deposits:
            self._by_block.setdefault(d.block.hash, []).append(d)

    def add_block(self, contents: BlockContents, label_of: LabelOf) -> None:
        if contents.ref.hash in self._by_block:
            raise ValueError(f"block {contents.ref.hash} is already tracked")
        tracked = []
        seen: set[DepositId] = set()
        for t in contents.transfers:
            did = deposit_id(self.chain, t.txid, t.locator)
            if did in seen:
                raise ValueError(f"transfer {did} appears twice in block {contents.ref.hash}")
            seen.add(did)
            tracked.append(TrackedDeposit(did, contents.ref, t, self._required_for(t.asset, t.amount),
                                          label_of(t)))
        if tracked:
            self._by_block[contents.ref.hash] = tracked

    def evaluate(self, tip_number: int) -> list[DepositEvent]:
        """Announces what changed now that the canonical tip is at ``tip_number``."""
        events: list[DepositEvent] = []
        for block_hash, ds in self._by_block.items():
            for i, d in enumerate(ds):
                if d.announced is DepositEventType.CONFIRMED:
                    continue
                confirmations = tip_number - d.block.number + 1
                if confirmations >= d.required:
                    new = DepositEventType.CONFIRMED
                elif d.announced is None:
                    new = DepositEventType.PENDING
                else:
                    continue
                ds[i] = replace(d, announced=new)
                events.append(DepositEvent(new, ds[i], confirmations))
            self._by_block[block_hash] = ds
        return events

    def revert(self, removed: Sequence[BlockRef]) -> list[DepositEvent]:
        """Reverts every announced deposit of blocks that left the canonical chain."""
        events: list[DepositEvent] = []
        for ref in sorted(removed, key=lambda r: r.number):
            for d in self._by_block.pop(ref.hash, []):
                if d.announced is None:
                    continue
                events.append(DepositEvent(DepositEventType.REVERTED, d, 0, d.announced))
        return events

    def prune(self, pruned: Sequence[BlockRef]) -> None:
        """Forgets confirmed deposits of blocks that fell off the bottom of the window.

        An unconfirmed one is kept: it cannot happen with a window at least as deep
        as the deepest rule (checked at config load), and forgetting it would lose it.
        """
        for ref in pruned:
            ds = self._by_block.get(ref.hash)
            if ds is None:
                continue
            left = [d for d in ds if d.announced is not DepositEventType.CONFIRMED]
            if left:
                self._by_block[ref.hash] = left
            else:
                del self._by_block[ref.hash]
