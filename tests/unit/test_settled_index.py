"""The compact memory of settled request ids (SettledIndex): lookups, merging, chunks."""

from __future__ import annotations

import hashlib

import pytest

import watcher.core.settled as settled_mod
from watcher.core.settled import SettledIndex


def digest(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def test_seen_tells_unknown_same_and_other_content_wherever_the_entry_lives(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settled_mod, "MERGE_AT", 10)
    idx = SettledIndex()
    for i in range(25):  # two merges into the columns, five left in the recent dict
        idx.add(f"w-{i}", digest(i))
    for i in range(20, 30):
        idx.stage(f"s-{i}", digest(i))  # a bulk load, sorted in by the next lookup
    assert len(idx) == 35
    for rid, n in [("w-0", 0), ("w-13", 13), ("w-24", 24), ("s-20", 20), ("s-29", 29)]:
        assert idx.seen(rid, digest(n)) is True, rid
        assert idx.seen(rid, digest(n + 1)) is False, rid
        assert rid in idx
    assert idx.seen("w-25", digest(25)) is None and "w-25" not in idx
    assert idx.nbytes() == 35 * 24  # all merged by the lookups: 24 bytes an entry


def test_an_id_keeps_its_first_digest() -> None:
    idx = SettledIndex()
    idx.add("w-1", digest(1))
    idx.add("w-1", digest(2))
    idx.merge()
    assert idx.seen("w-1", digest(1)) is True and idx.seen("w-1", digest(2)) is False
    assert len(idx) == 1


def test_a_digest_that_is_not_hex_still_compares() -> None:
    idx = SettledIndex()
    idx.add("a", "d-a")          # test fixtures use short digests
    idx.add("b", "zz" * 20)
    idx.merge()
    assert idx.seen("a", "d-a") is True and idx.seen("a", "d-b") is False
    assert idx.seen("b", "zz" * 20) is True and idx.seen("b", "zy" * 20) is False


def test_chunks_round_trip_in_order() -> None:
    idx = SettledIndex()
    for i in range(1000):
        idx.stage(f"w-{i}", digest(i))
    chunks = idx.to_chunks(entries=300)
    assert [len(c) for c in chunks] == [300 * 24] * 3 + [100 * 24]
    back = SettledIndex.from_chunks(chunks)
    assert len(back) == 1000
    assert all(back.seen(f"w-{i}", digest(i)) is True for i in range(1000))
    assert back.seen("w-1000", digest(1000)) is None
    # A golden entry: the BLAKE2b-128 of "w-0" split in two columns, then the digest's
    # first 64 bits, each little-endian.
    one = SettledIndex()
    one.add("w-0", digest(0))
    (chunk,) = one.to_chunks()
    h = hashlib.blake2b(b"w-0", digest_size=16).digest()
    assert chunk == h[:8][::-1] + h[8:][::-1] + bytes.fromhex(digest(0)[:16])[::-1]


@pytest.mark.parametrize(("chunks", "match"), [
    ([b"x" * 25], "not a multiple of 24"),
])
def test_bad_chunks_are_refused(chunks: list[bytes], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SettledIndex.from_chunks(chunks)


def test_chunks_out_of_order_are_refused() -> None:
    idx = SettledIndex()
    for i in range(10):
        idx.stage(f"w-{i}", digest(i))
    chunks = idx.to_chunks(entries=5)
    with pytest.raises(ValueError, match="not in the order"):
        SettledIndex.from_chunks(chunks[::-1])
