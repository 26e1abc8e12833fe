"""Address-index snapshots as bytes: the manifest and its chunks (pure, no I/O).

A snapshot of one chain's :class:`~watcher.core.addresses.AddressIndex` is a
set of chunk records and one manifest naming them, written last:

* key chunks: the keys packed ``key_size`` bytes each (no length assumed: 20
  for EVM, 33 for the UTXO family), at most :data:`CHUNK_BYTES` a chunk;
* label chunks: ``key | u16 big-endian length | UTF-8 label`` repeated;
* the manifest (JSON): version, chain, key size, key and label counts, the
  registration-topic offsets the snapshot covers (next offset per partition),
  the fingerprint of the static addresses file loaded under it, its creation
  time, and for every chunk its offset in the snapshot topic, its length and
  a BLAKE2b digest over the snapshot id, the chunk's kind and number and its
  bytes.

Guarantee: :func:`assemble` either returns exactly the keys and labels that
:func:`plan` was given, or raises :class:`SnapshotCorrupt` naming what is
wrong (a missing, foreign, stale, reordered or altered chunk, a count that
does not add up); a partial index is never produced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

MANIFEST_VERSION = 1
CHUNK_BYTES = 1_000_000
"""Payload bytes per chunk: under Kafka's default 1 MB record limit with headroom."""
MAX_LABEL_BYTES = 65_535


class SnapshotCorrupt(ValueError):
    """A snapshot that cannot be used; the reason names the field or chunk."""


@dataclass(frozen=True, slots=True)
class ChunkRef:
    kind: str
    """``k`` (keys) or ``l`` (labels)."""
    number: int
    offset: int
    """Offset of the chunk record in the snapshot topic's chunk partition."""
    length: int
    digest: str


@dataclass(frozen=True, slots=True)
class Manifest:
    chain: str
    snapshot_id: str
    slot: int
    """0 or 1: chunks alternate between two key spaces, so writing a new snapshot never
    overwrites the chunks of the one the current manifest names."""
    key_size: int
    count: int
    labelled: int
    offsets: Mapping[int, int]
    """Registration-topic partition -> next offset not covered."""
    base: str | None
    """Fingerprint of the static addresses file loaded before the registrations."""
    created_ms: int
    chunks: tuple[ChunkRef, ...]

    def to_bytes(self) -> bytes:
        return orjson.dumps({
            "version": MANIFEST_VERSION, "chain": self.chain, "snapshot_id": self.snapshot_id,
            "slot": self.slot, "key_size": self.key_size, "count": self.count,
            "labelled": self.labelled,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "base": self.base, "created_ms": self.created_ms,
            "chunks": [[c.kind, c.number, c.offset, c.length, c.digest] for c in self.chunks],
        })

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SnapshotCorrupt(f"manifest is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise SnapshotCorrupt("manifest is not a JSON object")
        if raw.get("version") != MANIFEST_VERSION:
            raise SnapshotCorrupt(f"manifest version {raw.get('version')!r} is not supported")
        chain = _field(raw, "chain", str)
        snapshot_id = _field(raw, "snapshot_id", str)
        slot = _field(raw, "slot", int)
        if slot not in (0, 1):
            raise SnapshotCorrupt(f"manifest slot must be 0 or 1, got {slot}")
        key_size = _field(raw, "key_size", int)
        count = _field(raw, "count", int)
        labelled = _field(raw, "labelled", int)
        created_ms = _field(raw, "created_ms", int)
        if key_size <= 0 or count < 0 or labelled < 0 or labelled > count:
            raise SnapshotCorrupt("manifest key_size/count/labelled are out of range")
        offsets_raw = _field(raw, "offsets", dict)
        base = raw.get("base")
        if base is not None and not isinstance(base, str):
            raise SnapshotCorrupt("manifest base must be a string or null")
        try:
            offsets = {int(p): int(o) for p, o in offsets_raw.items()}
            chunks = tuple(ChunkRef(str(k), int(n), int(off), int(ln), str(d))
                           for k, n, off, ln, d in _field(raw, "chunks", list))
        except (TypeError, ValueError) as exc:
            raise SnapshotCorrupt(f"manifest offsets/chunks are malformed: {exc}") from None
        if any(p < 0 or o < 0 for p, o in offsets.items()):
            raise SnapshotCorrupt("manifest offsets must be non-negative")
        return cls(chain, snapshot_id, slot, key_size, count, labelled, offsets, base,
                   created_ms, chunks)


def _field(raw: dict[str, Any], name: str, type_: type) -> Any:
    value = raw.get(name)
    if not isinstance(value, type_) or (type_ is int and isinstance(value, bool)):
        raise SnapshotCorrupt(f"manifest field {name} must be {type_.__name__}, got {value!r}")
    return value


def digest(snapshot_id: str, kind: str, number: int, payload: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{snapshot_id}|{kind}|{number}|".encode())
    h.update(payload)
    return h.hexdigest()


def chunk_key(chain: str, slot: int, kind: str, number: int) -> bytes:
    return f"{chain}:{slot}:{kind}{number}".encode()


def manifest_key(chain: str) -> bytes:
    return f"{chain}:manifest".encode()


def label_chunks(labels: Mapping[bytes, str], key_size: int) -> Iterator[bytes]:
    """Labels packed ``key | u16 length | UTF-8``, at most :data:`CHUNK_BYTES` a chunk."""
    out: list[bytes] = []
    size = 0
    for key, label in labels.items():
        if len(key) != key_size:
            raise ValueError(f"label key must be {key_size} bytes, got {len(key)}")
        text = label.encode("utf-8")
        if len(text) > MAX_LABEL_BYTES:
            raise ValueError(f"label of {len(text)} bytes is over {MAX_LABEL_BYTES}")
        entry = key + len(text).to_bytes(2, "big") + text
        if out and size + len(entry) > CHUNK_BYTES:
            yield b"".join(out)
            out, size = [], 0
        out.append(entry)
        size += len(entry)
    if out:
        yield b"".join(out)


def parse_labels(payload: bytes, key_size: int, into: dict[bytes, str]) -> None:
    pos, end = 0, len(payload)
    while pos < end:
        head = pos + key_size + 2
        if head > end:
            raise SnapshotCorrupt("label chunk ends inside an entry")
        length = int.from_bytes(payload[pos + key_size:head], "big")
        if head + length > end:
            raise SnapshotCorrupt("label chunk ends inside a label")
        try:
            into[payload[pos:pos + key_size]] = payload[head:head + length].decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotCorrupt("label chunk holds a label that is not UTF-8") from None
        pos = head + length


@dataclass(frozen=True, slots=True)
class Restored:
    keys: tuple[bytes, ...]
    """Every key, packed ``key_size`` bytes each, in chunks (as read: not joined, which
    would hold a second copy of millions of keys while the index is built)."""
    labels: dict[bytes, str]


def assemble(manifest: Manifest, chunks: Mapping[int, tuple[bytes | None, bytes | None]]) -> Restored:
    """The keys and labels of ``manifest`` from the chunk records read at its offsets.

    ``chunks`` maps an offset to the (key, value) found there. Raises
    :class:`SnapshotCorrupt` unless every chunk is present, carries the key its
    slot and number call for and matches its digest, and the counts add up.
    """
    keys: list[bytes] = []
    labels: dict[bytes, str] = {}
    expected = {"k": 0, "l": 0}
    for ref in manifest.chunks:
        if ref.kind not in expected:
            raise SnapshotCorrupt(f"chunk kind {ref.kind!r} is unknown")
        if ref.number != expected[ref.kind]:
            raise SnapshotCorrupt(f"chunk {ref.kind}{ref.number} is out of sequence")
        expected[ref.kind] += 1
        found = chunks.get(ref.offset)
        if found is None:
            raise SnapshotCorrupt(f"chunk {ref.kind}{ref.number} at offset {ref.offset} is missing")
        key, value = found
        if key != chunk_key(manifest.chain, manifest.slot, ref.kind, ref.number) or value is None:
            raise SnapshotCorrupt(f"offset {ref.offset} holds another record than chunk "
                                  f"{ref.kind}{ref.number}")
        if len(value) != ref.length or digest(manifest.snapshot_id, ref.kind, ref.number,
                                              value) != ref.digest:
            raise SnapshotCorrupt(f"chunk {ref.kind}{ref.number} does not match its digest")
        if ref.kind == "k":
            keys.append(value)
        else:
            parse_labels(value, manifest.key_size, labels)
    if any(len(k) % manifest.key_size for k in keys):
        raise SnapshotCorrupt(f"a key chunk is not a multiple of {manifest.key_size} bytes")
    total = sum(len(k) for k in keys)
    if total != manifest.count * manifest.key_size:
        raise SnapshotCorrupt(f"chunks hold {total // manifest.key_size} keys, the manifest "
                              f"counts {manifest.count}")
    if len(labels) != manifest.labelled:
        raise SnapshotCorrupt(f"chunks hold {len(labels)} labels, the manifest counts "
                              f"{manifest.labelled}")
    return Restored(tuple(keys), labels)


def chunk_payloads(key_chunks: Iterable[bytes], labels: Mapping[bytes, str],
                   key_size: int) -> Iterator[tuple[str, int, bytes]]:
    """(kind, number, payload) of every chunk of a snapshot, keys first."""
    for number, payload in enumerate(key_chunks):
        yield "k", number, payload
    for number, payload in enumerate(label_chunks(labels, key_size)):
        yield "l", number, payload


def min_offsets(manifests: Sequence[Manifest | None], partitions: Iterable[int]) -> dict[int, int]:
    """Where a replay of the registrations must start so that every chain is complete:
    per partition the lowest offset any snapshot covers, 0 where a chain has none."""
    out: dict[int, int] = {}
    for p in partitions:
        starts = [0 if m is None else m.offsets.get(p, 0) for m in manifests]
        out[p] = min(starts) if starts else 0
    return out
