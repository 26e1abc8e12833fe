"""When gathered UTXO withdrawals are paid (watcher.core.batching), table-driven."""

from __future__ import annotations

import pytest

from watcher.core.batching import batches_due
from watcher.core.withdrawals import RequestId


def ids(*xs: str) -> tuple[RequestId, ...]:
    return tuple(RequestId(x) for x in xs)


@pytest.mark.parametrize(("waiting", "height", "max_outputs", "wait", "groups"), [
    ({}, 10, 3, 2, []),
    ({"a": 10}, 10, 3, 2, []),                      # alone, just arrived: waits for company
    ({"a": 10}, 12, 3, 2, [ids("a")]),              # waited 2 blocks: paid alone
    ({"a": 10, "b": 11}, 11, 3, 2, []),
    ({"a": 10, "b": 11}, 12, 3, 2, [ids("a", "b")]),  # the oldest's wait decides
    ({"c": 9, "a": 10, "b": 10}, 10, 3, 5, [ids("c", "a", "b")]),  # full: at once
    ({"a": 1, "b": 1, "c": 1, "d": 9}, 10, 3, 5, [ids("a", "b", "c")]),  # d waits
    ({"a": 1, "b": 1, "c": 1, "d": 2}, 10, 3, 5, [ids("a", "b", "c"), ids("d")]),
    ({"a": 10}, 10, 3, 0, [ids("a")]),              # no wait configured
])
def test_batches_due(waiting: dict[str, int], height: int, max_outputs: int, wait: int,
                     groups: list[tuple[RequestId, ...]]) -> None:
    got = batches_due({RequestId(k): v for k, v in waiting.items()}, height, max_outputs, wait)
    assert got == groups


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_outputs"):
        batches_due({}, 1, 0, 1)
