"""AddressIndex.matches' C probe loop (watcher/core/_probe.c) against the Python loop it
replaces (AddressIndex._matches_py) and against ``in``: the same positions on tables with
collisions, tombstones, wrap-around and keys of the wrong size or type.

Skipped when the extension is not built (``make test`` builds it and runs with
``WATCHER_BTC_WALK=compiled``, which turns the skip into a failure).
"""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.core import addresses
from watcher.core.addresses import AddressIndex

try:
    from watcher.core._probe import matches as c_matches
except ImportError as exc:
    if os.environ.get("WATCHER_BTC_WALK") == "compiled":
        raise
    pytest.skip(f"the C extension is not built: {exc}", allow_module_level=True)


def _c(index: AddressIndex, keys: list[bytes]) -> list[int] | None:
    return c_matches(keys, index._states, index._keys, index._mask, index.key_size)


def _agree(index: AddressIndex, keys: list[bytes]) -> list[int]:
    want = [i for i, k in enumerate(keys) if k in index]
    assert index._matches_py(keys) == want
    assert _c(index, keys) == want
    assert index.matches(keys) == want
    return want


def test_the_c_loop_is_the_one_matches_uses() -> None:
    assert addresses._c_matches is c_matches


def test_positions_of_watched_keys_among_others() -> None:
    index = AddressIndex(34, 64, small_set_limit=0)
    watched = [bytes([i]) * 34 for i in range(1, 30)]
    for k in watched:
        index.add(k)
    index.remove(watched[3])  # a tombstone in some run
    keys = [watched[0], b"", bytes(34), watched[3], watched[5], b"\x01" * 33, watched[28], watched[0]]
    assert _agree(index, keys) == [0, 4, 6, 7]


def test_a_full_run_wraps_around_the_table_end() -> None:
    index = AddressIndex(20, 8, small_set_limit=0)
    rng = random.Random(3)
    keys = [rng.randbytes(20) for _ in range(5)]  # 5 of 8 slots: long runs, wrap-around
    for k in keys:
        index.add(k)
    misses = [rng.randbytes(20) for _ in range(200)]
    assert _agree(index, misses + keys) == list(range(200, 205))


@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=3, max_size=3)), max_size=120),
       st.lists(st.binary(min_size=0, max_size=4), max_size=60))
@settings(max_examples=300, deadline=None)
def test_random_tables_and_probes(ops: list[tuple[bool, bytes]], probes: list[bytes]) -> None:
    index = AddressIndex(3, 8, small_set_limit=0)  # 3-byte keys: many collisions
    for add, k in ops:
        if add:
            index.add(k)
        else:
            index.remove(k)
    _agree(index, probes + [k for _, k in ops])


def test_a_bytes_subclass_takes_the_careful_path() -> None:
    class Sneaky(bytes):
        def __hash__(self) -> int:
            return 0

    index = AddressIndex(20, 8, small_set_limit=0)
    index.add(bytes(range(20)))
    keys = [Sneaky(bytes(range(20))), bytes(range(20))]
    assert _c(index, keys) is None
    assert index.matches(keys) == [0, 1]


def test_inconsistent_arguments_are_refused() -> None:
    index = AddressIndex(20, 8, small_set_limit=0)
    with pytest.raises(ValueError, match="mask"):
        c_matches([], index._states, index._keys, 6, 20)
    with pytest.raises(ValueError, match="slots"):
        c_matches([bytes(20)], index._states, bytearray(20), index._mask, 20)
    with pytest.raises(TypeError):
        c_matches([], bytes(8), index._keys, 7, 20)  # type: ignore[arg-type]
