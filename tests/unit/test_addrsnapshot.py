"""The address-snapshot codec: a golden manifest, round trips, and every way a snapshot can be
wrong ending in SnapshotCorrupt (never a partial index)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from watcher.core.addrsnapshot import (
    CHUNK_BYTES,
    ChunkRef,
    Manifest,
    SnapshotCorrupt,
    assemble,
    chunk_key,
    chunk_payloads,
    digest,
    label_chunks,
    manifest_key,
)

K1, K2, K3 = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20


def test_digest_and_keys_are_pinned() -> None:
    # blake2b-128 of b"sid|k|0|" + K1, computed once with hashlib outside this module.
    assert digest("sid", "k", 0, K1) == "facb66a195d4c883777427b890c009d1"
    assert chunk_key("eth", 1, "k", 12) == b"eth:1:k12"
    assert manifest_key("btc") == b"btc:manifest"


def test_manifest_golden_bytes_round_trip() -> None:
    m = Manifest("eth", "sid", 1, 20, 2, 1, {0: 17, 2: 5}, None, 1_700_000_000_000,
                 (ChunkRef("k", 0, 40, 40, "d0"), ChunkRef("l", 0, 41, 26, "d1")))
    golden = (b'{"version":1,"chain":"eth","snapshot_id":"sid","slot":1,"key_size":20,"count":2,'
              b'"labelled":1,"offsets":{"0":17,"2":5},"base":null,"created_ms":1700000000000,'
              b'"chunks":[["k",0,40,40,"d0"],["l",0,41,26,"d1"]]}')
    assert m.to_bytes() == golden
    assert Manifest.from_bytes(golden) == m


def build(keys: list[bytes], labels: dict[bytes, str], sid: str = "s1", slot: int = 0,
          ) -> tuple[Manifest, dict[int, tuple[bytes | None, bytes | None]]]:
    records: dict[int, tuple[bytes | None, bytes | None]] = {}
    refs = []
    halves = [b"".join(keys[: len(keys) // 2]), b"".join(keys[len(keys) // 2:])]
    for offset, (kind, number, payload) in enumerate(chunk_payloads(halves, labels, 20),
                                                     start=100):
        records[offset] = (chunk_key("eth", slot, kind, number), payload)
        refs.append(ChunkRef(kind, number, offset, len(payload), digest(sid, kind, number, payload)))
    m = Manifest("eth", sid, slot, 20, len(keys), len(labels), {0: 9}, "f", 1, tuple(refs))
    return m, records


def test_assemble_returns_what_was_packed() -> None:
    m, records = build([K1, K2, K3], {K2: "two", K3: "é" * 300})
    restored = assemble(Manifest.from_bytes(m.to_bytes()), records)
    assert restored.keys == (K1, K2 + K3), "the chunks as read, not joined"
    assert restored.labels == {K2: "two", K3: "é" * 300}


def _drop(records: dict[int, Any]) -> None:
    del records[101]


def _swap(records: dict[int, Any]) -> None:
    records[100], records[101] = records[101], records[100]


def _flip(records: dict[int, Any]) -> None:
    key, value = records[100]
    records[100] = (key, bytes([value[0] ^ 1]) + value[1:])


def _other_slot(records: dict[int, Any]) -> None:
    records[100] = (chunk_key("eth", 1, "k", 0), records[100][1])


def _tombstone(records: dict[int, Any]) -> None:
    records[100] = (records[100][0], None)


@pytest.mark.parametrize(("spoil", "reason"), [
    (_drop, "missing"), (_swap, "another record"), (_flip, "digest"),
    (_other_slot, "another record"), (_tombstone, "another record"),
])
def test_a_spoilt_chunk_is_refused(spoil: Any, reason: str) -> None:
    m, records = build([K1, K2, K3], {K1: "one"})
    spoil(records)
    with pytest.raises(SnapshotCorrupt, match=reason):
        assemble(m, records)


def test_counts_must_add_up() -> None:
    m, records = build([K1, K2], {})
    lying = Manifest(m.chain, m.snapshot_id, m.slot, 20, 3, 0, m.offsets, m.base, 1, m.chunks)
    with pytest.raises(SnapshotCorrupt, match="manifest counts 3"):
        assemble(lying, records)
    reordered = Manifest(m.chain, m.snapshot_id, m.slot, 20, 2, 0, m.offsets, m.base, 1,
                         tuple(reversed(m.chunks)))
    with pytest.raises(SnapshotCorrupt, match="out of sequence"):
        assemble(reordered, records)


@pytest.mark.parametrize(("doc", "reason"), [
    (b"nope", "not JSON"),
    (b"[]", "not a JSON object"),
    (b'{"version":2}', "version 2"),
    (b'{"version":1,"chain":5}', "field chain"),
    (b'{"version":1,"chain":"eth","snapshot_id":"s","slot":2}', "slot must be 0 or 1"),
    (b'{"version":1,"chain":"eth","snapshot_id":"s","slot":0,"key_size":true}', "key_size"),
])
def test_bad_manifests_name_the_field(doc: bytes, reason: str) -> None:
    with pytest.raises(SnapshotCorrupt, match=reason):
        Manifest.from_bytes(doc)


def test_label_chunks_stay_under_the_chunk_limit() -> None:
    labels = {i.to_bytes(20, "big"): "x" * 200 for i in range(12_000)}  # ~2.7 MB of entries
    chunks = list(label_chunks(labels, 20))
    assert len(chunks) == 3 and all(len(c) <= CHUNK_BYTES for c in chunks)
    m, records = build([*labels], labels)
    assert assemble(m, records).labels == labels


def test_manifest_json_has_no_float() -> None:
    m, _ = build([K1], {})
    raw = orjson.loads(m.to_bytes())
    assert all(not isinstance(v, float) for v in raw.values())
