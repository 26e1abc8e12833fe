"""Which node to follow: pure, chain-agnostic, without I/O.

Each round the adapter asks every endpoint for its head and hands the answers
here. The best head of the round sets the bar: an endpoint more than
``lag_tolerance_blocks`` below it is lagging, is not in sync, and is never
followed, so its older head can never look like a reorg to the caller. The
endpoint followed so far is kept while it is in sync (no flapping between
nodes that take turns being one block ahead); otherwise the first in-sync
endpoint in the configured order is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EndpointChoice:
    followed: str | None
    """The endpoint to follow; None when no endpoint answered this round."""
    in_sync: frozenset[str]
    """Endpoints that answered with a head within tolerance of the best."""
    best_head: int | None
    """The highest head reported this round."""


def choose_endpoint(
    heads: Mapping[str, int | None],
    previous: str | None,
    order: Sequence[str],
    lag_tolerance_blocks: int,
) -> EndpointChoice:
    """Decides the endpoint to follow from this round's heads.

    ``heads`` maps endpoint names to the head number each reported, or None when it
    failed; an endpoint of ``order`` missing from ``heads`` counts as failed, and names
    outside ``order`` are ignored.
    """
    if lag_tolerance_blocks < 0:
        raise ValueError("lag_tolerance_blocks must be >= 0")
    answered = {name: heads[name] for name in order if heads.get(name) is not None}
    if not answered:
        return EndpointChoice(followed=None, in_sync=frozenset(), best_head=None)
    best = max(h for h in answered.values() if h is not None)
    floor = best - lag_tolerance_blocks
    in_sync = frozenset(name for name, h in answered.items() if h is not None and h >= floor)
    if previous is not None and previous in in_sync:
        followed = previous
    else:
        followed = next(name for name in order if name in in_sync)
    return EndpointChoice(followed=followed, in_sync=in_sync, best_head=best)
