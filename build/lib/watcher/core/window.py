"""The canonical-chain window: recent blocks linked by parent hash.

Pure and synchronous. The runtime hands it a *branch* (headers a node says
follow one another) and gets back a decision: extend the tip, rewind to a fork
point inside the window, ask for one more parent, or stop because the fork lies
below the window or below finality. Heights are only labels here: every link is
checked by hash.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from watcher.types import BlockHash, BlockRef


class BrokenBranch(ValueError):
    """The headers given as a branch do not link up (a node answer to reject)."""


@dataclass(frozen=True, slots=True)
class Extend:
    """The branch continues the tip (or seeds an empty window)."""

    added: tuple[BlockRef, ...]


@dataclass(frozen=True, slots=True)
class Rewind:
    """The branch forks off below the tip: ``removed`` leave the canonical chain."""

    fork: BlockRef
    removed: tuple[BlockRef, ...]
    added: tuple[BlockRef, ...]

    @property
    def depth(self) -> int:
        return len(self.removed)


@dataclass(frozen=True, slots=True)
class NeedParent:
    """The branch's first parent is unknown but could still be inside the window."""

    parent_hash: BlockHash
    number: int


@dataclass(frozen=True, slots=True)
class BeyondWindow:
    """The fork point is below the window or below finality: an operator must look."""

    branch_start: BlockRef
    window_bottom: BlockRef
    finalized_number: int | None
    reason: str


Decision = Extend | Rewind | NeedParent | BeyondWindow


def check_links(branch: Sequence[BlockRef]) -> None:
    for prev, cur in itertools.pairwise(branch):
        if cur.parent_hash != prev.hash or cur.number != prev.number + 1:
            raise BrokenBranch(
                f"block {cur.number} {cur.hash} does not follow {prev.number} {prev.hash}"
            )


def linked_prefix(branch: Sequence[BlockRef]) -> list[BlockRef]:
    """The longest prefix whose blocks follow one another.

    A node that reorgs while answering a batch by height returns headers of two
    branches; only the linked prefix can be used.
    """
    out: list[BlockRef] = []
    for ref in branch:
        if out and (ref.parent_hash != out[-1].hash or ref.number != out[-1].number + 1):
            break
        out.append(ref)
    return out


class ChainWindow:
    """At most ``size`` canonical blocks, bottom to tip, each the parent of the next."""

    def __init__(self, size: int, blocks: Iterable[BlockRef] = (),
                 finalized_number: int | None = None) -> None:
        if size < 2:
            raise ValueError("window size must be at least 2")
        self.size = size
        self._blocks: deque[BlockRef] = deque()
        self._by_hash: dict[BlockHash, BlockRef] = {}
        self.finalized_number = finalized_number
        initial = list(blocks)
        check_links(initial)
        for ref in initial:
            self._push(ref)

    # ------------------------------------------------------------ queries

    @property
    def tip(self) -> BlockRef | None:
        return self._blocks[-1] if self._blocks else None

    @property
    def bottom(self) -> BlockRef | None:
        return self._blocks[0] if self._blocks else None

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._by_hash

    def get(self, block_hash: BlockHash) -> BlockRef | None:
        return self._by_hash.get(block_hash)

    def blocks(self) -> list[BlockRef]:
        return list(self._blocks)

    # ------------------------------------------------------------ decisions

    def decide(self, branch: Sequence[BlockRef]) -> Decision:
        """What to do with ``branch``, a non-empty run of linked headers from a node."""
        if not branch:
            raise BrokenBranch("empty branch")
        check_links(branch)
        first = branch[0]
        tip = self.tip
        if tip is None:
            return Extend(tuple(branch))
        if first.parent_hash == tip.hash:
            if first.number != tip.number + 1:
                raise BrokenBranch(f"block {first.number} claims parent {tip.hash} at {tip.number}")
            return Extend(tuple(branch))
        fork = self._by_hash.get(first.parent_hash)
        if fork is not None:
            if first.number != fork.number + 1:
                raise BrokenBranch(f"block {first.number} claims parent {fork.hash} at {fork.number}")
            if self.finalized_number is not None and fork.number < self.finalized_number:
                return BeyondWindow(first, self._blocks[0], self.finalized_number,
                                    f"fork at {fork.number} is below finalized {self.finalized_number}")
            removed = tuple(b for b in self._blocks if b.number > fork.number)
            if not removed:
                # The branch starts at the tip's child under another parent hash that is in
                # the window: only possible if the node lies about heights.
                raise BrokenBranch(f"block {first.number} forks at the tip without removing it")
            return Rewind(fork, removed, tuple(branch))
        bottom = self._blocks[0]
        parent_number = first.number - 1
        # Our block at parent_number is not the node's, so it leaves the chain too.
        if self.finalized_number is not None and parent_number <= self.finalized_number:
            return BeyondWindow(first, bottom, self.finalized_number,
                                f"fork at or below finalized height {self.finalized_number}")
        if parent_number <= bottom.number:
            return BeyondWindow(first, bottom, self.finalized_number,
                                f"fork below the window bottom {bottom.number}")
        return NeedParent(first.parent_hash, parent_number)

    # ------------------------------------------------------------ changes

    def apply(self, decision: Extend | Rewind) -> tuple[BlockRef, ...]:
        """Applies a decision made on this window; returns blocks pruned off the bottom."""
        if isinstance(decision, Rewind):
            if self._by_hash.get(decision.fork.hash) != decision.fork:
                raise BrokenBranch("rewind decision does not match this window")
            while self._blocks and self._blocks[-1].number > decision.fork.number:
                gone = self._blocks.pop()
                del self._by_hash[gone.hash]
        pruned: list[BlockRef] = []
        for ref in decision.added:
            tip = self.tip
            if tip is not None and (ref.parent_hash != tip.hash or ref.number != tip.number + 1):
                raise BrokenBranch(f"block {ref.number} does not extend tip {tip.number}")
            self._push(ref)
            while len(self._blocks) > self.size:
                gone = self._blocks.popleft()
                del self._by_hash[gone.hash]
                pruned.append(gone)
        return tuple(pruned)

    def set_finalized(self, number: int | None) -> None:
        """Finality only moves forward; a node reporting less is ignored."""
        if number is None:
            return
        if self.finalized_number is None or number > self.finalized_number:
            self.finalized_number = number

    def _push(self, ref: BlockRef) -> None:
        self._blocks.append(ref)
        self._by_hash[ref.hash] = ref
