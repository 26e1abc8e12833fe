"""The duplicate rule's memory of settled requests: request id -> digest, 24 bytes each. Pure.

Every request id ever settled on a chain (paid at finality, refused after authentication,
claimed by another chain) must stay known for as long as the watcher runs, so that an
exact repeat of an old request adds no event and other content under its id is refused.
A ``dict[str, str]`` costs some 230 bytes an entry in CPython (230 MB at 10^6); this keeps
three sorted ``array('Q')`` columns instead:

* the 128-bit BLAKE2b hash of the request id (two columns), looked up by bisection;
* the first 64 bits of the request's SHA-256 digest.

Recent additions wait in a small dict and are merged in batches (:data:`MERGE_AT`).

What the truncation can do, and why it is safe: two different ids share a 128-bit hash
with probability about n^2 / 2^129 (10^-26 at 10^6): the newer would be refused as a
duplicate, never paid twice. Two contents of one id share a 64-bit digest prefix with
probability 2^-64 (no one can search for one: the requests are signed by the ledger):
the second would be taken for an exact repeat and get no event, never be paid. Neither
can ever make the watcher pay a request again.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from bisect import bisect_left
from collections.abc import Sequence

MERGE_AT = 65_536
"""Recent additions merged into the sorted columns once this many wait (a dict of 65,536
entries is some 15 MB; a merge is linear in the total)."""


CHUNK_ENTRIES = 43_690
"""Entries per chunk of :meth:`SettledIndex.to_chunks`: just under 1 MiB."""


def _key(request_id: str) -> tuple[int, int]:
    h = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(h[:8], "big"), int.from_bytes(h[8:], "big")


def _content(digest: str) -> int:
    """The first 64 bits of the hex SHA-256 digest (any text: hashed when it is not hex)."""
    try:
        return int(digest[:16], 16) if len(digest) >= 16 else _fallback(digest)
    except ValueError:
        return _fallback(digest)


def _fallback(digest: str) -> int:
    return int.from_bytes(hashlib.blake2b(digest.encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "big")


class SettledIndex:
    """Set-like memory of ``(request id, digest)``; see the module doc for what it guarantees."""

    __slots__ = ("_dg", "_hi", "_lo", "_pending", "_recent")

    def __init__(self) -> None:
        self._hi = array("Q")
        self._lo = array("Q")
        self._dg = array("Q")
        self._pending = (array("Q"), array("Q"), array("Q"))
        """Staged by a bulk load, unsorted; sorted in by the next lookup."""
        self._recent: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._hi) + len(self._pending[0]) + len(self._recent)

    def stage(self, request_id: str, digest: str) -> None:
        """Bulk load (a restart reading every settled record): appended unsorted, 24 bytes,
        sorted in once by the first lookup. An id must be staged once (records are written
        once per id)."""
        hi, lo = _key(request_id)
        p_hi, p_lo, p_dg = self._pending
        p_hi.append(hi)
        p_lo.append(lo)
        p_dg.append(_content(digest))

    def add(self, request_id: str, digest: str) -> None:
        """Remembers the id; an id already known keeps its first digest (written once)."""
        if self.seen(request_id, digest) is not None:
            return
        self._recent[request_id] = digest
        if len(self._recent) >= MERGE_AT:
            self.merge()

    def seen(self, request_id: str, digest: str) -> bool | None:
        """None: the id is unknown; True: known with this digest; False: with another."""
        known = self._recent.get(request_id)
        if known is not None:
            return known == digest
        i = self._find(request_id)
        if i is None:
            return None
        return self._dg[i] == _content(digest)

    def __contains__(self, request_id: object) -> bool:
        return isinstance(request_id, str) and (request_id in self._recent
                                                or self._find(request_id) is not None)

    def _find(self, request_id: str) -> int | None:
        if self._pending[0]:
            self.merge()
        hi, lo = _key(request_id)
        col = self._hi
        i = bisect_left(col, hi)
        while i < len(col) and col[i] == hi:
            if self._lo[i] == lo:
                return i
            i += 1
        return None

    def merge(self) -> None:
        """Sorts the staged and recent entries into the columns (one sort; done by
        :meth:`add` and the first lookup after :meth:`stage` themselves)."""
        p_hi, p_lo, p_dg = self._pending
        for rid, d in self._recent.items():
            a, b = _key(rid)
            p_hi.append(a)
            p_lo.append(b)
            p_dg.append(_content(d))
        if not p_hi:
            return
        hi, lo, dg = self._hi + p_hi, self._lo + p_lo, self._dg + p_dg
        self._pending = (array("Q"), array("Q"), array("Q"))
        self._recent = {}
        # Sorted by the first column only: lookups scan the (practically never) equal run.
        order = sorted(range(len(hi)), key=hi.__getitem__)
        self._hi = array("Q", map(hi.__getitem__, order))
        self._lo = array("Q", map(lo.__getitem__, order))
        self._dg = array("Q", map(dg.__getitem__, order))

    def nbytes(self) -> int:
        """Bytes of the sorted columns (the recent dict not counted)."""
        return 3 * 8 * len(self._hi)

    # ------------------------------------------------------------ chunks

    def to_chunks(self, entries: int = CHUNK_ENTRIES) -> list[bytes]:
        """The whole index as chunks of at most ``entries`` entries each (little-endian
        ``hi``, ``lo``, ``digest`` columns of the slice, one after the other), in order:
        :meth:`from_chunks` of them is this index."""
        self.merge()
        out: list[bytes] = []
        for a in range(0, len(self._hi), entries):
            parts = []
            for col in (self._hi, self._lo, self._dg):
                part = col[a:a + entries]
                if sys.byteorder != "little":
                    part.byteswap()
                parts.append(part.tobytes())
            out.append(b"".join(parts))
        return out

    @classmethod
    def from_chunks(cls, chunks: Sequence[bytes]) -> SettledIndex:
        """Raises ValueError when a chunk is cut or the columns are not in order."""
        index = cls()
        for n, chunk in enumerate(chunks):
            if len(chunk) % 24:
                raise ValueError(f"chunk {n} is {len(chunk)} bytes, not a multiple of 24")
            k = len(chunk) // 24
            for i, col in enumerate((index._hi, index._lo, index._dg)):
                part = array("Q")
                part.frombytes(chunk[i * 8 * k:(i + 1) * 8 * k])
                if sys.byteorder != "little":
                    part.byteswap()
                col.extend(part)
        hi = index._hi
        if any(hi[i] > hi[i + 1] for i in range(len(hi) - 1)):
            raise ValueError("the chunks are not in the order of the index")
        return index


__all__ = ["CHUNK_ENTRIES", "MERGE_AT", "SettledIndex"]
