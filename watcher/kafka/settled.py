"""The settled-withdrawal records of one chain and their index snapshots, on Kafka.

Two compacted topics, one partition each, written only by the chain's withdrawal runner
and only inside the Kafka transactions of its sink (they are plain
:class:`~watcher.ports.OutRecord` s of those transactions):

* ``<checkpoints>.<chain>.withdrawals`` (:func:`settled_topic`): one record per request
  id that left the live state; key the request id (UTF-8), value
  :func:`watcher.core.withdrawals.settled_record`. Written once per id, never a tombstone,
  in the transaction that also commits the events, input offsets and live snapshot.
* ``<checkpoints>.<chain>.withdrawals-index`` (:func:`index_topic`): snapshots of the
  compact in-memory index (:class:`~watcher.core.settled.SettledIndex`, 24 bytes an id) in
  two alternating slots: chunks ``<slot>:<n>`` (about 1 MiB each) and one manifest
  ``manifest:<slot>`` naming the records-topic offset the snapshot covers, a sequence
  number and the BLAKE2b digest of each chunk. Chunks and manifest go in one
  transaction, so a manifest never names chunks that are not there.

A start reads the index topic (a few MB), takes the newest manifest whose chunks are
all present and match, and reads the records topic only from the offset it covers: the
load costs the index size plus the records since the last snapshot, not one Kafka record
per request ever settled (10^6 records take tens of seconds to read; see
``bench/withdrawal_state.py``). Without a usable snapshot it reads every record, which
is always correct.

Why topics of their own and not the chain's checkpoint topic: a takeover reads them
from the beginning, and the checkpoint topic is rewritten with snapshots at every step
until the cleaner compacts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from watcher.config import KafkaConfig
from watcher.core.settled import SettledIndex
from watcher.core.withdrawals import load_settled
from watcher.errors import ErrorKind, SinkError
from watcher.kafka.client import (
    CHECKPOINT_TOPIC_CONFIGS,
    ManualConsumer,
    TopicSpec,
    ensure_topics,
    topic_exists,
)
from watcher.kafka.sink import classify
from watcher.ports import OutRecord

log = logging.getLogger(__name__)

SETTLED_FETCH_BYTES = 8 * 1024 * 1024
INDEX_VERSION = 1
SLOTS = ("a", "b")


def settled_topic(checkpoints: str, chain: str) -> str:
    """``<checkpoints>.<chain>.withdrawals``: a chain id has no ``.``, so no chain's
    checkpoint topic (``<checkpoints>.<chain>``) can be named like this."""
    return f"{checkpoints}.{chain}.withdrawals"


def index_topic(checkpoints: str, chain: str) -> str:
    return f"{checkpoints}.{chain}.withdrawals-index"


def settled_specs(checkpoints: str, chain: str) -> list[TopicSpec]:
    return [TopicSpec(t, 1, CHECKPOINT_TOPIC_CONFIGS, "compact", "kafka.topics.checkpoints")
            for t in (settled_topic(checkpoints, chain), index_topic(checkpoints, chain))]


@dataclass(frozen=True, slots=True)
class SettledLoad:
    index: SettledIndex
    seq: int
    """Sequence number of the index snapshot used (0: none)."""
    covered: int
    """Records-topic offset the snapshot covered (0: none)."""
    read: int
    """Settled records read after it."""


class KafkaSettledRecords:
    """Implements :class:`watcher.ports.SettledRecords` on Kafka."""

    def __init__(self, cfg: KafkaConfig, chain: str, *, timeout_s: float = 30.0) -> None:
        self._cfg = cfg
        self._chain = chain
        self.topic = settled_topic(cfg.topics.checkpoints, chain)
        self.index_topic = index_topic(cfg.topics.checkpoints, chain)
        self._timeout_s = timeout_s
        self._ensured = False
        self._seq = 0

    async def ensure(self) -> None:
        """Creates the topics (compacted) when missing; refuses ones with another cleanup
        policy (:class:`~watcher.errors.ConfigError`): a deleting policy would one day forget
        that an old request was paid."""
        if not self._ensured:
            await ensure_topics(self._cfg, self._timeout_s,
                                extra=settled_specs(self._cfg.topics.checkpoints, self._chain))
            self._ensured = True

    async def load(self) -> SettledLoad:
        """The index of every committed settled record: the newest usable index snapshot,
        then the records written after it. Raises :class:`SnapshotError` for an unreadable
        settled record, :class:`SinkError` when Kafka cannot be read."""
        latest: dict[bytes, bytes | None] = {}
        async for batch in self._read(self.index_topic, 0):
            for key, value in batch:
                if key is not None:
                    latest[key] = value
        index, covered, seq = SettledIndex(), 0, 0
        for manifest in sorted(_manifests(latest), key=lambda m: -int(m["seq"])):
            try:
                index = _from_manifest(manifest, latest)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("withdrawal index snapshot %s of %s unusable (%s); trying an older one",
                            manifest.get("seq"), self._chain, exc)
                continue
            covered, seq = int(manifest["offset"]), int(manifest["seq"])
            break
        self._seq = max([seq, *(int(m["seq"]) for m in _manifests(latest))])
        read = 0
        async for batch in self._read(self.topic, covered):
            load_settled(batch, into=index)
            read += len(batch)
        index.merge()
        return SettledLoad(index, seq, covered, read)

    async def end_offset(self) -> int:
        """The records topic's last stable offset: after a commit of ours, every settled
        record we committed is below it (no one else writes the topic)."""
        consumer = ManualConsumer(self._cfg, self.topic, timeout_s=self._timeout_s)
        try:
            await consumer.start([0])
            return (await consumer.end_offsets())[0]
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(classify(exc), f"reading the end of {self.topic}: {exc!r}") from exc
        finally:
            await consumer.stop()

    def index_records(self, index: SettledIndex, covered: int) -> list[OutRecord]:
        """An index snapshot of ``index`` covering the records below ``covered``, for one
        transaction: its chunks, then its manifest, in the slot the last one did not use."""
        self._seq += 1
        slot = SLOTS[self._seq % 2]
        chunks = index.to_chunks()
        out = [OutRecord(self.index_topic, f"{slot}:{n}".encode(), c) for n, c in enumerate(chunks)]
        manifest = {"version": INDEX_VERSION, "seq": self._seq, "slot": slot, "offset": covered,
                    "count": len(index), "chunks": [_digest(c) for c in chunks]}
        out.append(OutRecord(self.index_topic, f"manifest:{slot}".encode(), orjson.dumps(manifest)))
        return out

    async def _read(self, topic: str, start: int) -> AsyncIterator[list[tuple[bytes | None, bytes | None]]]:
        """Every committed record of partition 0 from ``start``, ``(key, value)`` in offset
        order, in batches. Like :func:`watcher.kafka.sink.read_last`, waits until no open
        transaction hides a record written before the call."""
        try:
            if not await topic_exists(self._cfg, topic, self._timeout_s):
                return
            probe = ManualConsumer(self._cfg, topic, read_committed=False, timeout_s=self._timeout_s)
            await probe.start([0])
            try:
                high = (await probe.end_offsets())[0]
            finally:
                await probe.stop()
            consumer = ManualConsumer(self._cfg, topic, max_fetch_bytes=SETTLED_FETCH_BYTES,
                                      timeout_s=self._timeout_s)
            await consumer.start([0])
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(classify(exc), f"reading {topic}: {exc!r}") from exc
        deadline = time.monotonic() + self._timeout_s
        try:
            end = (await consumer.end_offsets())[0]
            while end < high:
                if time.monotonic() > deadline:
                    raise SinkError(ErrorKind.RETRIABLE, f"{topic} holds an open transaction; "
                                                         "its committed records are not known yet")
                await asyncio.sleep(0.05)
                end = (await consumer.end_offsets())[0]
            begin = (await consumer.beginning_offsets())[0]
            consumer.seek(0, max(start, begin))
            while await consumer.position(0) < end:
                if time.monotonic() > deadline:
                    raise SinkError(ErrorKind.RETRIABLE, f"reading {topic} timed out")
                recs = await consumer.fetch(timeout_ms=200, max_records=50_000)
                if recs:
                    deadline = time.monotonic() + self._timeout_s  # progress: a new allowance
                    yield [(r.key, r.value) for r in recs if r.offset < end]
        finally:
            await consumer.stop()


def _digest(chunk: bytes) -> str:
    return hashlib.blake2b(chunk, digest_size=16).hexdigest()


def _manifests(latest: dict[bytes, bytes | None]) -> list[dict[str, Any]]:
    out = []
    for slot in SLOTS:
        raw = latest.get(f"manifest:{slot}".encode())
        if raw is None:
            continue
        try:
            m = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(m, dict) and m.get("version") == INDEX_VERSION and m.get("slot") == slot \
                and isinstance(m.get("seq"), int) and isinstance(m.get("offset"), int):
            out.append(m)
    return out


def _from_manifest(m: dict[str, Any], latest: dict[bytes, bytes | None]) -> SettledIndex:
    digests = m["chunks"]
    if not isinstance(digests, list):
        raise TypeError("field chunks is not a list")
    chunks = []
    for n, want in enumerate(digests):
        chunk = latest.get(f"{m['slot']}:{n}".encode())
        if chunk is None or _digest(chunk) != want:
            raise ValueError(f"chunk {n} is missing or does not match its digest")
        chunks.append(chunk)
    index = SettledIndex.from_chunks(chunks)
    if len(index) != m["count"]:
        raise ValueError(f"the chunks hold {len(index)} entries, the manifest says {m['count']}")
    return index


__all__ = ["KafkaSettledRecords", "SettledLoad", "index_topic", "settled_specs", "settled_topic"]
