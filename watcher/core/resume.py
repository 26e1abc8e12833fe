"""An operator's resume of a halted chain: the new state the follower restarts from.

Pure. A chain halts when a reorg reaches below its window or its finality;
the follower cannot decide alone what became of the blocks it no longer
holds. The operator picks the block to restart at (``from_block``); this
module builds the state the follower then loads, as if it had just processed
``from_block - 1`` on the node's canonical chain:

* the window is the node's canonical headers just below ``from_block``;
* a tracked deposit in a block that is still canonical below ``from_block``
  is kept (it goes on to be confirmed);
* one in a block at or above ``from_block`` that is still canonical is
  dropped: the follower re-derives that block, with the same event ids;
* one in a block that is no longer canonical is reverted (if anything was
  announced for it), since its block left the canonical chain — those
  events are published in the same transaction as the new checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from watcher.core.chainstate import ChainState
from watcher.core.deposits import DepositEvent, RequiredConfirmations, TrackedDeposit
from watcher.core.window import ChainWindow, check_links
from watcher.types import BlockHash, BlockRef, ChainId, DepositEventType


@dataclass(frozen=True, slots=True)
class ResumePlan:
    state: ChainState
    reverted: tuple[DepositEvent, ...]
    kept: tuple[TrackedDeposit, ...]
    rederived: tuple[TrackedDeposit, ...]
    """Canonical deposits at or above ``from_block``: the follower announces them again."""


def plan_resume(chain: ChainId, old: ChainState | None, seed: Sequence[BlockRef],
                canonical: Mapping[int, BlockHash], from_block: int, window_size: int,
                required_for: RequiredConfirmations) -> ResumePlan:
    """The state to restart at ``from_block``: ``old`` itself (it is taken over, so any state
    beside the window and the block deposits carries over unchanged), or a fresh state.

    ``seed``: the node's linked canonical headers ending at ``from_block - 1`` (at most
    ``window_size`` of them are kept). ``canonical``: the node's block hash by height for
    every height a tracked deposit of ``old`` sits at; a height it lacks counts as not
    canonical (the node's chain is shorter).
    """
    if from_block < 1:
        raise ValueError("from_block must be at least 1 (the window restarts on its parent)")
    if not seed or seed[-1].number != from_block - 1:
        raise ValueError(f"the seed must end at block {from_block - 1}")
    check_links(seed)
    state = old if old is not None else ChainState(chain, window_size, required_for)
    if state.chain != chain:
        raise ValueError(f"the state belongs to chain {state.chain}, not {chain}")
    kept: list[TrackedDeposit] = []
    rederived: list[TrackedDeposit] = []
    reverted: list[DepositEvent] = []
    for d in state.tracker.deposits():
        is_canonical = canonical.get(d.block.number) == d.block.hash
        if is_canonical and d.block.number < from_block:
            kept.append(d)
        elif is_canonical:
            rederived.append(d)
        elif d.announced is not None:
            reverted.append(DepositEvent(DepositEventType.REVERTED, d, 0, d.announced))
    state.window = ChainWindow(window_size, seed[-window_size:])
    state.tracker.restore(kept)
    return ResumePlan(state, tuple(reverted), tuple(kept), tuple(rederived))
