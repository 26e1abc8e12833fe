"""The watched-address index: table-driven cases, forced collisions, and a
stateful comparison against a plain ``dict`` model."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from watcher.core.addresses import _USED_BIT, DELETED, EMPTY, AddressIndex, WatchedAddresses

A = bytes(range(20))
B = bytes(range(1, 21))
C = bytes(20)
D = b"\xff" * 20


def check_invariants(index: AddressIndex) -> None:
    """Counters agree with the slot states; every key is found from its home slot."""
    states = index._states
    used = sum(1 for s in states if s & _USED_BIT)
    deleted = sum(1 for s in states if s == DELETED)
    assert len(index) == used == index._used
    assert index._deleted == deleted
    assert used + deleted <= index._limit
    assert all(s in (EMPTY, DELETED) or s & _USED_BIT for s in states)
    assert states.count(EMPTY) > 0
    for key in index:
        assert index._find(key) >= 0
        assert key in index


def same_home_slot(count: int, key_size: int = 20, capacity: int = 64) -> list[bytes]:
    """``count`` random keys that all hash to the same slot of a ``capacity`` table."""
    mask = capacity - 1
    target = hash(os.urandom(key_size)) & mask
    out: list[bytes] = []
    while len(out) < count:
        k = os.urandom(key_size)
        if hash(k) & mask == target:
            out.append(k)
    return out


# -- table-driven ----------------------------------------------------------------

Op = Callable[[AddressIndex], object]

CASES: list[tuple[str, list[Op], list[object]]] = [
    ("add new", [lambda x: x.add(A)], [True]),
    ("add twice", [lambda x: x.add(A), lambda x: x.add(A)], [True, False]),
    ("remove absent", [lambda x: x.remove(A)], [False]),
    ("add remove", [lambda x: x.add(A), lambda x: x.remove(A), lambda x: A in x], [True, True, False]),
    ("remove twice", [lambda x: x.add(A), lambda x: x.remove(A), lambda x: x.remove(A)], [True, True, False]),
    ("re-add after remove", [lambda x: x.add(A), lambda x: x.remove(A), lambda x: x.add(A), lambda x: A in x],
     [True, True, True, True]),
    ("contains other", [lambda x: x.add(A), lambda x: B in x], [True, False]),
    ("zero key", [lambda x: x.add(C), lambda x: C in x, lambda x: D in x], [True, True, False]),
    ("label set", [lambda x: x.add(A, "hot"), lambda x: x.label(A)], [True, "hot"]),
    ("label absent key", [lambda x: x.label(A)], [None]),
    ("label unlabelled key", [lambda x: x.add(A), lambda x: x.add(B, "b"), lambda x: x.label(A)],
     [True, True, None]),
    ("label updated", [lambda x: x.add(A, "one"), lambda x: x.add(A, "two"), lambda x: x.label(A)],
     [True, False, "two"]),
    ("label cleared by add None", [lambda x: x.add(A, "one"), lambda x: x.add(A), lambda x: x.label(A)],
     [True, False, None]),
    ("label gone on remove", [lambda x: x.add(A, "one"), lambda x: x.remove(A), lambda x: x.label(A)],
     [True, True, None]),
    ("label not resurrected", [lambda x: x.add(A, "one"), lambda x: x.remove(A), lambda x: x.add(A),
                               lambda x: x.label(A)], [True, True, True, None]),
    ("empty label kept", [lambda x: x.add(A, ""), lambda x: x.label(A)], [True, ""]),
    ("len", [lambda x: x.add(A), lambda x: x.add(B), lambda x: x.add(A), len],
     [True, True, False, 2]),
    ("contains str", [lambda x: x.add(A), lambda x: A.hex() in x], [True, False]),
    ("contains int", [lambda x: 5 in x], [False]),
    ("contains None", [lambda x: None in x], [False]),
    ("contains bytearray", [lambda x: x.add(A), lambda x: bytearray(A) in x], [True, False]),
    ("contains short", [lambda x: x.add(A), lambda x: A[:19] in x], [True, False]),
    ("contains long", [lambda x: x.add(A), lambda x: A + b"\x00" in x], [True, False]),
    ("contains empty", [lambda x: b"" in x], [False]),
]


@pytest.mark.parametrize(("ops", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_table(ops: list[Op], expected: list[object]) -> None:
    index = AddressIndex(20)
    assert [op(index) for op in ops] == expected
    check_invariants(index)


@pytest.mark.parametrize("bad", [b"", b"\x01" * 19, b"\x01" * 21, b"\x01" * 32])
@pytest.mark.parametrize("method", ["add", "remove", "label"])
def test_wrong_size_raises(bad: bytes, method: str) -> None:
    index = AddressIndex(20)
    index.add(A, "x")
    with pytest.raises(ValueError, match="must be 20 bytes, got"):
        getattr(index, method)(bad)
    assert len(index) == 1


@pytest.mark.parametrize("bad", ["ab" * 10, 12, None, bytearray(20), memoryview(bytes(20))])
@pytest.mark.parametrize("method", ["add", "remove", "label"])
def test_wrong_type_raises(bad: object, method: str) -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        getattr(AddressIndex(20), method)(bad)


def test_label_must_be_str() -> None:
    index = AddressIndex(20)
    with pytest.raises(TypeError, match="label"):
        index.add(A, 5)  # type: ignore[arg-type]
    assert len(index) == 0


@pytest.mark.parametrize(("key_size", "capacity"), [(0, 8), (-1, 8), (20, -1)])
def test_bad_construction(key_size: int, capacity: int) -> None:
    with pytest.raises(ValueError):
        AddressIndex(key_size, capacity)


@pytest.mark.parametrize(("asked", "slots"), [(0, 8), (1, 8), (8, 8), (9, 16), (1000, 1024), (1024, 1024)])
def test_capacity_rounds_to_power_of_two(asked: int, slots: int) -> None:
    assert AddressIndex(20, asked).capacity == slots


def test_bytes_subclass_is_treated_as_bytes() -> None:
    class Key(bytes):
        def __hash__(self) -> int:
            return 0

        def __eq__(self, other: object) -> bool:
            return True

    index = AddressIndex(20)
    assert index.add(Key(A), "k")
    assert A in index
    assert Key(A) in index
    assert Key(B) not in index
    assert index.label(Key(A)) == "k"
    assert index.remove(Key(A))
    assert Key(A) not in index


@pytest.mark.parametrize("key_size", [1, 4, 20, 25, 32])
def test_other_key_sizes(key_size: int) -> None:
    index = AddressIndex(key_size, 8)
    keys = {os.urandom(key_size) for _ in range(200)}
    for k in keys:
        assert index.add(k)
    assert len(index) == len(keys)
    assert set(index) == keys
    for k in keys:
        assert k in index
    check_invariants(index)


# -- growth, collisions, tombstones ----------------------------------------------------


def test_growth_keeps_everything() -> None:
    index = AddressIndex(20, 8)
    keys = [os.urandom(20) for _ in range(10000)]  # last rehash spans two blocks
    for n, k in enumerate(keys):
        index.add(k, f"l{n}" if n % 7 == 0 else None)
    assert len(index) == 10000
    assert index.capacity == 16384
    assert index.memory_bytes() >= 16384 * 21
    for n, k in enumerate(keys):
        assert k in index
        assert index.label(k) == (f"l{n}" if n % 7 == 0 else None)
    check_invariants(index)


def test_keys_sharing_prefixes() -> None:
    # Ground addresses with a long common prefix: must not share probe runs
    # (the slot comes from a salted hash of the whole key) and must not be confused.
    index = AddressIndex(20, 8)
    prefix = b"\x00" * 18
    keys = [prefix + i.to_bytes(2, "big") for i in range(3000)]
    for k in keys:
        assert index.add(k)
    for k in keys:
        assert k in index
    assert prefix + (5000).to_bytes(2, "big") not in index
    assert (b"\x01" + prefix[1:] + b"\x00\x01") not in index
    # Same suffix, different prefix.
    assert bytes(19) + b"\x01" in index
    assert b"\x80" + bytes(18) + b"\x01" not in index
    check_invariants(index)


def test_forced_collisions_and_tombstone_reuse() -> None:
    index = AddressIndex(20, 64)
    a, b, c, d = same_home_slot(4)
    for k in (a, b, c):
        assert index.add(k)
    home = index._find(a)
    assert [index._find(k) for k in (a, b, c)] == [home, (home + 1) % 64, (home + 2) % 64]
    # Removing the head of the run leaves a tombstone: b and c stay reachable.
    assert index.remove(a)
    assert index._states[home] == DELETED
    assert index._deleted == 1
    assert a not in index
    assert b in index
    assert c in index
    # A colliding insert takes the tombstone back, after checking the run.
    assert not index.add(c)
    assert index._deleted == 1
    assert index.add(d)
    assert index._find(d) == home
    assert index._deleted == 0
    assert index.capacity == 64
    check_invariants(index)


def test_removing_run_tail_clears_tombstones() -> None:
    index = AddressIndex(20, 64)
    keys = same_home_slot(4)
    for k in keys:
        index.add(k)
    home = index._find(keys[0])
    for k in keys[:3]:
        index.remove(k)
    assert index._deleted == 3
    # The last of the run is followed by an empty slot: the whole run empties.
    index.remove(keys[3])
    assert index._deleted == 0
    assert all(index._states[(home + j) % 64] == EMPTY for j in range(4))
    check_invariants(index)


def test_run_wraps_around_table_end() -> None:
    index = AddressIndex(20, 16)
    mask = 15
    keys: list[bytes] = []
    while len(keys) < 5:
        k = os.urandom(20)
        if hash(k) & mask == mask:
            keys.append(k)
    for k in keys:
        index.add(k)
    assert sorted(index._find(k) for k in keys) == [0, 1, 2, 3, 15]
    index.remove(keys[0])
    for k in keys[1:]:
        assert k in index
    assert keys[0] not in index
    check_invariants(index)


def test_churn_compacts_without_growing() -> None:
    index = AddressIndex(20, 64)
    live = [os.urandom(20) for _ in range(10)]
    for k in live:
        index.add(k)
    for _ in range(5000):
        k = os.urandom(20)
        index.add(k)
        index.remove(k)
    assert index.capacity == 64
    assert len(index) == 10
    for k in live:
        assert k in index
    check_invariants(index)


def test_tombstones_compacted_on_grow() -> None:
    index = AddressIndex(20, 64)
    ks = [os.urandom(20) for _ in range(40)]
    for k in ks:
        index.add(k)
    for k in ks[:30]:
        index.remove(k)
    for _ in range(40):
        index.add(os.urandom(20))
    check_invariants(index)
    assert len(index) == 50


def test_memory_bytes_counts_labels() -> None:
    index = AddressIndex(20, 1024, small_set_limit=0)
    base = index.memory_bytes()
    assert base >= 1024 * 21
    index.add(A)
    assert index.memory_bytes() == base
    index.add(B, "customer-42")
    assert index.memory_bytes() > base


# -- property / stateful ---------------------------------------------------------------

KEY_SIZE = 4
# A small pool with shared prefixes so removals, re-adds and collisions are common.
keys_st = st.one_of(
    st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE),
    st.integers(0, 63).map(lambda i: b"\xab\xcd\x00" + bytes([i])),
)
labels_st = st.one_of(st.none(), st.text(max_size=3))


class IndexMachine(RuleBasedStateMachine):
    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.index = AddressIndex(KEY_SIZE, 8, small_set_limit=12)  # crosses into table-only mode
        self.model: dict[bytes, str | None] = {}

    @initialize(target=keys, k=keys_st)
    def seed(self, k: bytes) -> bytes:
        return k

    @rule(target=keys, k=keys_st)
    def new_key(self, k: bytes) -> bytes:
        return k

    @rule(k=keys, label=labels_st)
    def add(self, k: bytes, label: str | None) -> None:
        assert self.index.add(k, label) == (k not in self.model)
        self.model[k] = label

    @rule(k=keys)
    def remove(self, k: bytes) -> None:
        assert self.index.remove(k) == (k in self.model)
        self.model.pop(k, None)

    @rule(k=keys)
    def lookup(self, k: bytes) -> None:
        assert (k in self.index) == (k in self.model)
        assert self.index.label(k) == self.model.get(k)

    @rule(data=st.data())
    def churn(self, data: st.DataObject) -> None:
        # Many adds then removes of fresh keys: exercises growth and tombstones.
        batch = data.draw(st.lists(keys_st, max_size=40, unique=True))
        fresh = [k for k in batch if k not in self.model]
        for k in fresh:
            assert self.index.add(k)
        for k in fresh[::2]:
            assert self.index.remove(k)
        for k in fresh[1::2]:
            self.model[k] = None

    @invariant()
    def agrees(self) -> None:
        assert len(self.index) == len(self.model)
        assert set(self.index) == set(self.model)
        for k, label in self.model.items():
            assert k in self.index
            assert self.index.label(k) == label
        check_invariants(self.index)


IndexMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestIndexMachine = IndexMachine.TestCase


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), keys_st), max_size=300))
def test_add_remove_sequence_matches_set(ops: list[tuple[bool, bytes]]) -> None:
    index = AddressIndex(KEY_SIZE, 8)
    model: set[bytes] = set()
    for is_add, k in ops:
        if is_add:
            assert index.add(k) == (k not in model)
            model.add(k)
        else:
            assert index.remove(k) == (k in model)
            model.discard(k)
    assert set(index) == model
    check_invariants(index)


# -- registry --------------------------------------------------------------------------


def test_watched_addresses_per_chain() -> None:
    watched = WatchedAddresses({"eth": 20, "btc": 32})
    eth = watched.for_chain("eth")
    assert eth is watched.for_chain("eth")
    assert eth is watched["eth"]
    assert eth.key_size == 20
    assert watched.for_chain("btc").key_size == 32
    eth.add(A)
    assert A in watched.for_chain("eth")
    assert bytes(32) not in watched.for_chain("btc")
    assert sorted(watched) == ["btc", "eth"]
    assert len(watched) == 2
    assert "eth" in watched
    assert "sol" not in watched
    with pytest.raises(KeyError, match="unknown chain"):
        watched.for_chain("sol")


@given(st.lists(st.tuples(st.booleans(), st.binary(min_size=20, max_size=20)), max_size=200),
       st.lists(st.binary(min_size=0, max_size=21), max_size=50))
def test_matches_agrees_with_contains(ops: list[tuple[bool, bytes]], probes: list[bytes]) -> None:
    index = AddressIndex(20, 8, small_set_limit=50)  # crosses from mirror to table
    for add, k in ops:
        if add:
            index.add(k)
        else:
            index.remove(k)
    keys = [k for _, k in ops] + probes
    assert index.matches(keys) == [i for i, k in enumerate(keys) if k in index]


@pytest.mark.parametrize("limit", [0, 3, 100])
def test_small_set_mirror_is_dropped_past_its_limit_and_answers_stay_equal(limit: int) -> None:
    index = AddressIndex(20, 8, small_set_limit=limit)
    keys = [os.urandom(20) for _ in range(10)]
    for k in keys[:6]:
        index.add(k)
    index.remove(keys[0])
    probes = [*keys, b"short", bytes(20)]
    assert index.matches(probes) == [1, 2, 3, 4, 5]
    assert index.matches(probes) == [i for i, k in enumerate(probes) if k in index]
    with_mirror = AddressIndex(20, 8, small_set_limit=100)
    without = AddressIndex(20, 8, small_set_limit=0)
    for k in keys:
        with_mirror.add(k)
        without.add(k)
    assert with_mirror.memory_bytes() > without.memory_bytes()


# -- bulk paths (snapshots) --------------------------------------------------------------


@pytest.mark.parametrize("key_size", [20, 33, 1])
@pytest.mark.parametrize("count", [0, 1, 7, 5_000])
def test_packed_round_trip_equals_incremental_adds(key_size: int, count: int) -> None:
    keys = list({os.urandom(key_size) for _ in range(count)}) if key_size > 1 \
        else [bytes([i]) for i in range(min(count, 256))]
    built = AddressIndex(key_size)
    for i, key in enumerate(keys):
        built.add(key, f"l{i}" if i % 4 == 0 else None)
    chunks = list(built.packed_chunks(slots_per_chunk=97))
    blob = b"".join(chunks)
    assert len(blob) == len(keys) * key_size
    from_chunks = AddressIndex(key_size)
    from_chunks.load_packed(chunks, built.labels())
    check_invariants(from_chunks)
    assert sorted(from_chunks) == sorted(keys)
    loaded = AddressIndex(key_size, small_set_limit=10)
    loaded.add(os.urandom(key_size) if key_size > 1 else b"\x00", "stale")  # replaced
    loaded.load_packed(blob, built.labels())
    check_invariants(loaded)
    assert sorted(loaded) == sorted(keys)
    assert {k: loaded.label(k) for k in loaded} == {k: built.label(k) for k in built}
    assert loaded.capacity <= built.capacity, "no bigger than the table adds grow"
    assert loaded.matches(keys) == list(range(len(keys)))
    if key_size > 1:
        assert os.urandom(key_size) not in loaded
    # Still a normal index afterwards.
    extra = bytes(key_size)
    was_there = extra in loaded
    assert loaded.add(extra) is not was_there and loaded.remove(extra)
    check_invariants(loaded)


def test_load_packed_handles_collisions_and_wrap_around() -> None:
    # 12 keys whose home is the last slot of the 32-slot table they load into: the run
    # wraps past the end to slots 0..10.
    keys: list[bytes] = []
    while len(keys) < 12:
        k = os.urandom(20)
        if hash(k) & 31 == 31:
            keys.append(k)
    index = AddressIndex(20)
    index.load_packed(b"".join(keys))
    assert index.capacity == 32
    check_invariants(index)
    assert all(k in index for k in keys)
    assert index._states[:11].count(EMPTY) == 0 and index._states[11] == EMPTY


def test_load_packed_rejects_bad_input_and_keeps_the_index() -> None:
    index = AddressIndex(20)
    index.add(A, "a")
    with pytest.raises(ValueError, match="multiple of 20"):
        index.load_packed(b"x" * 30)
    with pytest.raises(ValueError, match="multiple of 20"):
        index.load_packed([B, b"x" * 10, b"y" * 10])  # 40 bytes, cut inside a key
    with pytest.raises(ValueError, match="not in the packed keys"):
        index.load_packed(B + C, {D: "ghost"})
    with pytest.raises(TypeError, match="label must be str"):
        index.load_packed(B, {B: 5})  # type: ignore[dict-item]
    assert list(index) == [A] and index.label(A) == "a"
    check_invariants(index)


def test_small_set_mirror_follows_a_bulk_load() -> None:
    index = AddressIndex(20, small_set_limit=2)
    index.load_packed(A + B)
    assert index._small == {A, B}
    index.load_packed(A + B + C)
    assert index._small is None and index.matches([C, D]) == [0]


def test_generation_changes_with_the_keys_only() -> None:
    ix = AddressIndex(4)
    g0 = ix.generation
    assert ix.add(b"aaaa") and ix.generation != g0
    g1 = ix.generation
    assert not ix.add(b"aaaa", "a label") and ix.generation == g1  # a label only
    assert not ix.remove(b"bbbb") and ix.generation == g1
    assert ix.remove(b"aaaa") and ix.generation not in (g0, g1)
    g2 = ix.generation
    ix.load_packed(b"cccc")  # a snapshot restore replaces every key
    assert ix.generation not in (g0, g1, g2)
