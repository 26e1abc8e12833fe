"""Table-driven tests of the decision order of withdrawal requests (RequestOrder)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from watcher.kafka.client import Consumed
from watcher.withdrawals.order import RequestOrder


def rec(partition: int, offset: int, ts: int) -> Consumed:
    return Consumed("req", partition, offset, None, b"{}", ts, ())


@dataclass(frozen=True)
class Case:
    name: str
    held: list[tuple[int, int, int]]
    """(partition, offset, timestamp) in fetch order, all arrived at ``arrived``."""
    now: int
    behind: frozenset[int] = frozenset()
    released: list[tuple[int, int]] = field(default_factory=list)
    """(partition, offset) in the order to decide them."""
    arrived: int = 10_000
    partitions: tuple[int, ...] = (0, 1, 2)


CASES = [
    Case("every partition has a head: smallest timestamp first, each partition in offset order",
         [(0, 0, 5), (0, 1, 1), (1, 0, 3), (2, 0, 4)], now=10_000,
         # p0's offset 1 has the smallest timestamp but comes after offset 0 (ts 5).
         released=[(1, 0), (2, 0), (0, 0), (0, 1)]),
    Case("equal timestamps: the lower partition first", [(1, 0, 7), (0, 0, 7), (2, 0, 7)],
         now=10_000, released=[(0, 0), (1, 0), (2, 0)]),
    Case("a live head waits for caught-up empty partitions", [(0, 0, 9_900)], now=10_000),
    Case("...until the wait has passed", [(0, 0, 9_900)], now=10_150, released=[(0, 0)]),
    Case("an old head goes at once when the others are caught up", [(0, 0, 1)], now=10_000,
         released=[(0, 0)]),
    Case("an old head waits for a partition that is behind", [(0, 0, 1)], now=10_000,
         behind=frozenset({1})),
    Case("...but never longer than the maximum hold", [(0, 0, 1)], now=15_000,
         behind=frozenset({1}), released=[(0, 0)]),
    Case("a partition behind holds nothing while it has a head, the rest once it has none",
         [(0, 0, 1), (1, 0, 2), (2, 0, 3)], now=10_000, behind=frozenset({1}),
         released=[(0, 0), (1, 0)]),
    Case("a timestamp in the future waits from its arrival, not its timestamp",
         [(0, 0, 10**12)], now=10_250, released=[(0, 0)]),
    Case("once a partition runs empty, the rest waits again", [(0, 0, 9_000), (1, 0, 9_990),
                                                               (2, 0, 9_995)],
         now=10_000, released=[(0, 0)]),
    Case("one partition only: never a wait", [(0, 0, 9_999), (0, 1, 9_999)], now=10_000,
         partitions=(0,), released=[(0, 0), (0, 1)]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_release_order(case: Case) -> None:
    order = RequestOrder(wait_ms=250, max_hold_ms=5_000)
    order.add([rec(p, o, ts) for p, o, ts in case.held], case.arrived)
    out = order.release(list(case.partitions), case.behind, case.now)
    assert [(r.partition, r.offset) for r in out] == case.released
    assert order.held() == len(case.held) - len(case.released)


def test_the_same_records_in_any_fetch_order_are_decided_in_one_order() -> None:
    records = [rec(0, 0, 30), rec(0, 1, 10), rec(1, 0, 20), rec(1, 1, 40), rec(2, 0, 25)]
    seen = set()
    for first in range(3):
        order = RequestOrder()
        batches = [[r for r in records if r.partition == (first + i) % 3] for i in range(3)]
        out = []
        for b in batches:  # one partition per fetch: the others are behind until fetched
            order.add(b, 10_000)
            fetched = {r.partition for bb in batches[:batches.index(b) + 1] for r in bb}
            out += order.release([0, 1, 2], frozenset({0, 1, 2} - fetched), 10_000)
        seen.add(tuple((r.partition, r.offset) for r in out))
    assert seen == {((1, 0), (2, 0), (0, 0), (0, 1), (1, 1))}


def test_clear_forgets_what_is_held() -> None:
    order = RequestOrder()
    order.add([rec(0, 0, 1)], 0)
    order.clear()
    assert order.held() == 0 and order.release([0], frozenset(), 10**9) == []
