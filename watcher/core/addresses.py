"""The watched-address index: millions of fixed-width keys, O(1) membership.

A plain ``set`` of 10 million 20-byte ``bytes`` costs roughly a gigabyte
(one 53-byte object per key plus a sparse 16-byte-per-slot table), so keys
are instead packed side by side in one ``bytearray`` and found by open
addressing with linear probing:

* ``_keys``: ``capacity * key_size`` bytes, slot ``i`` at ``i * key_size``;
* ``_states``: one byte per slot: ``EMPTY`` (0), ``DELETED`` (1), or for a
  used slot a 7-bit tag of the key's hash with the top bit set (128-255), so
  a probe skips a foreign slot after one byte compare (a miss almost never
  touches ``_keys``; a hit reads the key bytes once);
* ``capacity`` is a power of two, the table is rebuilt when used plus
  deleted slots pass 70 % (doubling if the live keys need it, otherwise at the
  same size, which drops the tombstones); a removal leaves a tombstone that
  a later insertion reuses.

The home slot comes from ``hash(key)``: CPython hashes ``bytes`` with SipHash
keyed by a per-process random secret, so keys chosen to collide (for example
addresses ground to share a prefix) cannot be aimed at one probe run. Keys
only fall back to a predictable layout if ``PYTHONHASHSEED`` is pinned, which a
deployment must not do. The slot is compared in place with
``bytearray.startswith(key, offset)``, so a lookup allocates nothing.

Labels are kept in a ``dict`` only for keys that have one: most deployments
label nothing and pay nothing for it.

Bulk paths for snapshots (:meth:`AddressIndex.packed_chunks`,
:meth:`AddressIndex.load_packed`): the keys leave and enter the table as one
packed blobs, ``key_size`` bytes per key, cut and hashed with ``re``/``map``/
``compress`` over C-level callables instead of a bytecode loop per key. A load
rehashes every key (the slots of a snapshot are not portable: the hash secret
is per process) into a table allocated once at its final size, with no
tombstone and no duplicate check, so each key costs a hash and a store into
the first empty slot from its home. (A sort-by-home placement with a
cumulative ``max`` was tried: no faster in CPython, for much more code.)

:meth:`AddressIndex.matches` (a block's keys at once) runs its probe loop in C when the
project's build compiled ``watcher/core/_probe.c`` (``pyproject.toml`` ext-modules; the same
slots, tags and answers as the Python loop it keeps as the reference, ~5x faster: a mainnet
Bitcoin block's 10,000 keys against 1 M watched in ~1.5 ms instead of ~6), and in Python
otherwise.

Not thread-safe: it belongs to the single event-loop thread, like the rest of
the core.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import compress

_c_matches: Callable[[list[bytes], bytearray, bytearray, int, int], list[int] | None] | None
try:  # the probe loop of matches() in C (watcher/core/_probe.c), when the build compiled it
    from watcher.core._probe import matches as _c_matches
except ImportError:  # pragma: no cover - exercised by the tests with the module hidden
    _c_matches = None

EMPTY = 0
DELETED = 1
_TAG_SHIFT = 40  # tag bits sit above any index bits (tables up to 2**40 slots)
_TAG_BITS = 0x7F
_USED_BIT = 0x80
# states -> 1 for a used slot, 0 otherwise, so bytearray.find(1) walks used slots in C
_USED_MAP = bytes(1 if s & _USED_BIT else 0 for s in range(256))

SMALL_SET_LIMIT = 65_536
"""Below this many keys a ``set`` mirror (~100 bytes a key, ~6.5 MB at the limit) makes a
block's lookups one C-level pass; a 1,000-address catch-up profiled 0.36 s of 4.5 s in the
pure-Python probe loop."""

_MIN_CAPACITY = 8
_REBUILD_BLOCK = 4096  # slots copied out at a time while rehashing
_MAX_LOAD_NUM = 7  # rebuild when (used + deleted) * 10 > capacity * 7
_MAX_LOAD_DEN = 10


_LOAD_STEP = 65_536  # keys handled per step of a bulk load (bounds its temporary lists)
_EXPORT_STEP = 65_536  # slots scanned per chunk of an export


def _splitter(size: int) -> Callable[..., list[bytes]]:
    """``findall(blob, pos, endpos)``: the ``size``-byte pieces of a blob, cut in C."""
    return re.compile(b".{%d}" % size, re.DOTALL).findall


def _pow2_at_least(n: int) -> int:
    return max(_MIN_CAPACITY, 1 << max(0, n - 1).bit_length())


class AddressIndex:
    """A set of fixed-width byte keys with optional string labels."""

    __slots__ = ("_deleted", "_generation", "_key_size", "_keys", "_labels", "_limit", "_mask",
                 "_small", "_small_limit", "_states", "_used")

    def __init__(self, key_size: int, capacity: int = 1024,
                 small_set_limit: int = SMALL_SET_LIMIT) -> None:
        """``capacity`` is the initial number of slots (rounded up to a power of two).

        Up to ``small_set_limit`` keys, a plain ``set`` mirrors the table so that
        :meth:`matches` runs at C speed; past it the set is dropped for good and the
        compact table alone answers (see the module docstring for why).
        """
        if type(key_size) is not int or key_size <= 0:
            raise ValueError(f"key_size must be a positive int, got {key_size!r}")
        if type(capacity) is not int or capacity < 0:
            raise ValueError(f"capacity must be a non-negative int, got {capacity!r}")
        self._key_size = key_size
        self._labels: dict[bytes, str] = {}
        self._used = 0
        self._small_limit = small_set_limit
        self._small: set[bytes] | None = set() if small_set_limit > 0 else None
        self._deleted = 0
        self._generation = 0
        self._alloc(_pow2_at_least(capacity))

    def _alloc(self, capacity: int) -> None:
        self._keys = bytearray(capacity * self._key_size)
        self._states = bytearray(capacity)
        self._mask = capacity - 1
        self._limit = capacity * _MAX_LOAD_NUM // _MAX_LOAD_DEN

    # -- key checks -----------------------------------------------------------

    def _check(self, key: bytes) -> bytes:
        if type(key) is not bytes:
            if not isinstance(key, bytes):
                raise TypeError(f"address key must be bytes, got {type(key).__name__}")
            key = bytes(key)  # a subclass could override __hash__ / __eq__
        if len(key) != self._key_size:
            raise ValueError(f"address key must be {self._key_size} bytes, got {len(key)}")
        return key

    # -- lookups ----------------------------------------------------------------

    def _find(self, key: bytes) -> int:
        """Slot holding ``key``, or -1."""
        states = self._states
        keys = self._keys
        mask = self._mask
        size = self._key_size
        h = hash(key)
        tag = ((h >> _TAG_SHIFT) & _TAG_BITS) | _USED_BIT
        i = h & mask
        while True:
            s = states[i]
            if s == tag:
                if keys.startswith(key, i * size):
                    return i
            elif s == EMPTY:
                return -1
            i = (i + 1) & mask

    def __contains__(self, key: object) -> bool:
        # The hot path of block scanning: inlined probe, locals only.
        if type(key) is not bytes:
            if not isinstance(key, bytes):
                return False
            key = bytes(key)
        h = hash(key)
        states = self._states
        i = h & self._mask
        s = states[i]
        if s == EMPTY:
            return False
        size = self._key_size
        if len(key) != size:
            return False  # checked late: keeps the common miss short
        tag = ((h >> _TAG_SHIFT) & _TAG_BITS) | _USED_BIT
        keys = self._keys
        mask = self._mask
        while True:
            if s == tag and keys.startswith(key, i * size):
                return True
            i = (i + 1) & mask
            s = states[i]
            if s == EMPTY:
                return False

    def matches(self, keys: list[bytes]) -> list[int]:
        """Positions in ``keys`` of watched keys: one call per block instead of one per
        transaction, which is most of the cost of a lookup in CPython (block scanning)."""
        small = self._small
        if small is not None:
            if {type(k) for k in keys} <= {bytes}:
                return [pos for pos, key in enumerate(keys) if key in small]
            # A bytes subclass could lie in __hash__/__eq__: such keys take the careful path.
            return [pos for pos, key in enumerate(keys) if key in self]
        if _c_matches is not None:
            found = _c_matches(keys, self._states, self._keys, self._mask, self._key_size)
            if found is not None:
                return found
        return self._matches_py(keys)

    def _matches_py(self, keys: list[bytes]) -> list[int]:
        """The probe loop of :meth:`matches` in Python: the reference of ``_probe.c``."""
        states = self._states
        table = self._keys
        mask = self._mask
        size = self._key_size
        out: list[int] = []
        for pos, key in enumerate(keys):
            if type(key) is not bytes or len(key) != size:
                if key in self:  # the careful path for odd keys
                    out.append(pos)
                continue
            h = hash(key)
            i = h & mask
            s = states[i]
            if s == EMPTY:
                continue
            tag = ((h >> _TAG_SHIFT) & _TAG_BITS) | _USED_BIT
            while s != EMPTY:
                if s == tag and table.startswith(key, i * size):
                    out.append(pos)
                    break
                i = (i + 1) & mask
                s = states[i]
        return out

    def label(self, key: bytes) -> str | None:
        """The key's label; None if it has none or is not watched."""
        key = self._check(key)
        if not self._labels:
            return None
        return self._labels.get(key)

    def __len__(self) -> int:
        return self._used

    @property
    def generation(self) -> int:
        """Changes whenever the set of keys does (not on a label change): a copy of the keys
        taken at generation ``g`` is still exact while ``generation == g``."""
        return self._generation

    def __iter__(self) -> Iterator[bytes]:
        keys = self._keys
        size = self._key_size
        used = self._states.translate(_USED_MAP)
        i = used.find(1)
        while i >= 0:
            yield bytes(keys[i * size:(i + 1) * size])
            i = used.find(1, i + 1)

    @property
    def key_size(self) -> int:
        return self._key_size

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def memory_bytes(self) -> int:
        """Bytes held by the key table, slot states and labels (not the interpreter)."""
        total = self._keys.__sizeof__() + self._states.__sizeof__()
        if self._small is not None:
            total += self._small.__sizeof__() + sum(k.__sizeof__() for k in self._small)
        if self._labels:
            total += self._labels.__sizeof__()
            for k, v in self._labels.items():
                total += k.__sizeof__() + v.__sizeof__()
        return total

    # -- updates ------------------------------------------------------------------

    def add(self, key: bytes, label: str | None = None) -> bool:
        """Watch ``key``; True if it was new. An existing key gets ``label`` (None clears it)."""
        size = self._key_size
        if type(key) is not bytes or len(key) != size:
            key = self._check(key)
        if label is not None and type(label) is not str:
            raise TypeError(f"label must be str or None, got {type(label).__name__}")
        states = self._states
        keys = self._keys
        mask = self._mask
        h = hash(key)
        tag = ((h >> _TAG_SHIFT) & _TAG_BITS) | _USED_BIT
        i = h & mask
        tomb = -1
        while True:
            s = states[i]
            if s == tag:
                if keys.startswith(key, i * size):
                    self._set_label(key, label)
                    return False
            elif s == EMPTY:
                break
            elif s == DELETED and tomb < 0:
                tomb = i
            i = (i + 1) & mask
        if tomb >= 0:
            i = tomb
            self._deleted -= 1
        keys[i * size:(i + 1) * size] = key
        states[i] = tag
        self._used += 1
        self._generation += 1
        small = self._small
        if small is not None:
            if self._used > self._small_limit:
                self._small = None
            else:
                small.add(key)
        if label is not None:
            self._labels[key] = label
        if self._used + self._deleted > self._limit:
            self._rebuild()
        return True

    def remove(self, key: bytes) -> bool:
        """Stop watching ``key``; True if it was watched."""
        key = self._check(key)
        i = self._find(key)
        if i < 0:
            return False
        states = self._states
        mask = self._mask
        # A tombstone, unless the next slot is empty: then no probe run goes on
        # past this slot, so it (and the tombstones just before it) can go back
        # to EMPTY.
        if states[(i + 1) & mask] == EMPTY:
            states[i] = EMPTY
            i = (i - 1) & mask
            while states[i] == DELETED:
                states[i] = EMPTY
                self._deleted -= 1
                i = (i - 1) & mask
        else:
            states[i] = DELETED
            self._deleted += 1
        self._used -= 1
        self._generation += 1
        if self._small is not None:
            self._small.discard(key)
        if self._labels:
            self._labels.pop(key, None)
        return True

    def _set_label(self, key: bytes, label: str | None) -> None:
        if label is None:
            if self._labels:
                self._labels.pop(key, None)
        else:
            self._labels[key] = label

    def _rebuild(self) -> None:
        """Rehash into a table at most half full, dropping tombstones."""
        capacity = self._mask + 1
        while self._used * 2 > capacity:
            capacity *= 2
        old_keys = memoryview(self._keys)
        old_states = self._states
        old_capacity = len(old_states)
        size = self._key_size
        self._alloc(capacity)
        self._deleted = 0
        keys = self._keys
        states = self._states
        mask = self._mask
        find_used = old_states.translate(_USED_MAP).find
        find_empty = states.find
        # Old keys are copied out a block at a time, so each key is one bytes slice.
        block = _REBUILD_BLOCK
        for base in range(0, old_capacity, block):
            end = base + block
            j = find_used(1, base, end)
            if j < 0:
                continue
            chunk = old_keys[base * size:end * size].tobytes()
            while j >= 0:
                off = (j - base) * size
                key = chunk[off:off + size]
                # The new table has no tombstones and no duplicate: first empty slot.
                i = hash(key) & mask
                if states[i]:
                    i = find_empty(EMPTY, i)
                    if i < 0:
                        i = find_empty(EMPTY)
                keys[i * size:(i + 1) * size] = key
                states[i] = old_states[j]  # same hash, same tag
                j = find_used(1, j + 1, end)
        old_keys.release()


    # -- bulk paths (snapshots) -------------------------------------------------------

    def labels(self) -> dict[bytes, str]:
        """A copy of the labels of labelled keys."""
        return dict(self._labels)

    def packed_chunks(self, slots_per_chunk: int = _EXPORT_STEP) -> Iterator[bytes]:
        """The keys, packed ``key_size`` bytes each, about ``slots_per_chunk`` slots a chunk.

        The concatenation of the chunks holds every key exactly once, in slot order
        (meaningless in another process). The index must not change while the
        iterator is consumed: the caller pauses its writers (the registrations
        follower snapshots between two of its batches).
        """
        size = self._key_size
        table = self._keys
        used = self._states.translate(_USED_MAP)
        capacity = len(used)
        step = max(1, slots_per_chunk)
        for base in range(0, capacity, step):
            end = min(capacity, base + step)
            slots = list(compress(range(base, end), used[base:end]))
            if not slots:
                continue
            starts = [i * size for i in slots]
            yield b"".join(map(table.__getitem__,
                               map(slice, starts, map(size.__add__, starts))))

    def load_packed(self, blob: bytes | Sequence[bytes],
                    labels: Mapping[bytes, str] | None = None) -> None:
        """Replaces the whole content with the keys packed in ``blob`` (and their labels).

        ``blob`` (one bytes, or a sequence of them, such as the chunks of
        :meth:`packed_chunks`: no join, no copy) holds distinct keys, ``key_size``
        bytes each, in any order. Raises ValueError (TypeError for a label that is
        not a string) when a piece's length is not a multiple of the key size or a
        label names a key not in it; the index is then left as it was.
        """
        size = self._key_size
        pieces = [blob] if isinstance(blob, bytes | bytearray) else list(blob)
        for piece in pieces:
            if len(piece) % size:
                raise ValueError(f"packed keys: {len(piece)} bytes is not a multiple of {size}")
        n = sum(len(piece) for piece in pieces) // size
        saved = (self._keys, self._states, self._mask, self._limit, self._labels, self._used,
                 self._deleted, self._small)
        # The size incremental adds reach: the smallest table under the rebuild limit.
        capacity = _pow2_at_least(n + 1)
        while n * _MAX_LOAD_DEN >= capacity * _MAX_LOAD_NUM:
            capacity *= 2
        self._alloc(capacity)
        self._labels = {}
        self._deleted = 0
        self._used = n
        for piece in pieces:
            self._place_all(piece, len(piece) // size)
        self._small = None
        if self._small_limit > 0 and n <= self._small_limit:
            split = _splitter(size)
            self._small = {key for piece in pieces for key in split(piece)}
        try:
            for key, label in (labels or {}).items():
                if type(label) is not str:
                    raise TypeError(f"label must be str, got {type(label).__name__}")
                if key not in self:
                    raise ValueError("a label names a key that is not in the packed keys")
                self._labels[bytes(key)] = label
        except (TypeError, ValueError):
            (self._keys, self._states, self._mask, self._limit, self._labels, self._used,
             self._deleted, self._small) = saved
            raise
        # Other keys now: a scan worker's copy taken before this load must not be used.
        self._generation += 1

    def _place_all(self, blob: bytes, n: int) -> None:
        size = self._key_size
        mask = self._mask
        table = self._keys
        states = self._states
        find_empty = states.find
        split = _splitter(size)
        for a in range(0, n, _LOAD_STEP):
            keys = split(blob, a * size, min(n, a + _LOAD_STEP) * size)
            hashes = list(map(hash, keys))
            # A fresh table without tombstones: each key goes to the first empty slot
            # from its home, as an add() would put it.
            for home, key, h in zip(map(mask.__and__, hashes), keys, hashes, strict=True):
                i = home
                if states[i]:
                    i = find_empty(EMPTY, i)
                    if i < 0:
                        i = find_empty(EMPTY)
                table[i * size:(i + 1) * size] = key
                states[i] = ((h >> _TAG_SHIFT) & _TAG_BITS) | _USED_BIT


class WatchedAddresses(Mapping[str, AddressIndex]):
    """One AddressIndex per configured chain id, created on first use."""

    __slots__ = ("_indexes", "_key_sizes")

    def __init__(self, key_sizes: dict[str, int]) -> None:
        """``key_sizes`` maps each chain id to its adapter's key width."""
        self._key_sizes = dict(key_sizes)
        self._indexes: dict[str, AddressIndex] = {}

    def for_chain(self, chain: str) -> AddressIndex:
        index = self._indexes.get(chain)
        if index is None:
            try:
                size = self._key_sizes[chain]
            except KeyError:
                raise KeyError(f"unknown chain {chain!r}") from None
            index = self._indexes[chain] = AddressIndex(size)
        return index

    def __getitem__(self, chain: str) -> AddressIndex:
        return self.for_chain(chain)

    def __iter__(self) -> Iterator[str]:
        return iter(self._key_sizes)

    def __len__(self) -> int:
        return len(self._key_sizes)
