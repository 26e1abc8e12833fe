"""Choice of the endpoint to follow from one round of reported heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.core.endpoints import choose_endpoint

ORDER = ("a", "b", "c")


@pytest.mark.parametrize(("heads", "previous", "tolerance", "followed", "in_sync"), [
    # nobody answered
    ({}, None, 0, None, ""),
    ({"a": None, "b": None, "c": None}, "a", 0, None, ""),
    # first in order among the in-sync ones when there is no previous choice
    ({"a": 10, "b": 10, "c": 10}, None, 0, "a", "abc"),
    ({"a": None, "b": 10, "c": 10}, None, 0, "b", "bc"),
    # a lagging node is not followed, even if it is first in order
    ({"a": 9, "b": 10, "c": 10}, None, 0, "b", "bc"),
    ({"a": 9, "b": 10, "c": 10}, "a", 0, "b", "bc"),
    # ... nor a previously followed one: its older head must not look like a reorg
    ({"a": 100, "b": 120, "c": None}, "a", 5, "b", "b"),
    # within tolerance it is in sync
    ({"a": 9, "b": 10, "c": 10}, None, 1, "a", "abc"),
    ({"a": 5, "b": 10, "c": 8}, None, 2, "b", "bc"),
    ({"a": 5, "b": 10, "c": 8}, None, 5, "a", "abc"),
    # no flapping: the previous stays while in sync, even when another is ahead
    ({"a": 10, "b": 11, "c": 11}, "c", 1, "c", "abc"),
    ({"a": 11, "b": 10, "c": 11}, "b", 1, "b", "abc"),
    ({"a": 10, "b": 10, "c": 10}, "c", 0, "c", "abc"),
    # the previous failed: the first in-sync one in order
    ({"a": None, "b": 10, "c": 10}, "a", 0, "b", "bc"),
    ({"a": 10, "b": 10, "c": None}, "c", 0, "a", "ab"),
    # a single answering node is followed whatever its height
    ({"a": None, "b": None, "c": 3}, "a", 0, "c", "c"),
    # missing names count as failed; unknown names are ignored
    ({"b": 7}, "a", 0, "b", "b"),
    ({"x": 99, "b": 7}, None, 0, "b", "b"),
    # previous unknown to the configured order
    ({"a": 7, "b": 7}, "gone", 0, "a", "ab"),
    # genesis heads
    ({"a": 0, "b": 0}, None, 0, "a", "ab"),
])
def test_choose_endpoint(heads: dict[str, int | None], previous: str | None, tolerance: int,
                         followed: str | None, in_sync: str) -> None:
    choice = choose_endpoint(heads, previous, ORDER, tolerance)
    assert choice.followed == followed
    assert choice.in_sync == frozenset(in_sync)
    answered = [h for h in heads.values() if h is not None]
    if followed is not None:
        assert choice.best_head == max(h for n, h in heads.items() if n in ORDER and h is not None)
    else:
        assert choice.best_head is None or not answered


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="lag_tolerance"):
        choose_endpoint({"a": 1}, None, ORDER, -1)


@given(
    heads=st.dictionaries(st.sampled_from(ORDER), st.none() | st.integers(0, 1000)),
    previous=st.none() | st.sampled_from(ORDER),
    tolerance=st.integers(0, 20),
)
def test_followed_is_never_lagging(heads: dict[str, int | None], previous: str | None,
                                   tolerance: int) -> None:
    choice = choose_endpoint(heads, previous, ORDER, tolerance)
    answered = {n: h for n, h in heads.items() if h is not None}
    if not answered:
        assert choice.followed is None and not choice.in_sync
        return
    assert choice.followed in choice.in_sync
    best = max(answered.values())
    followed_head = answered[choice.followed]
    assert followed_head >= best - tolerance
    if previous in choice.in_sync:
        assert choice.followed == previous
