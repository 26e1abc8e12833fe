"""Address-index snapshots kept in Kafka: the compacted ``watcher.address-snapshots`` topic.

Layout (two partitions, both compacted):

* partition :data:`MANIFEST_PARTITION` holds one manifest per chain, key
  ``<chain>:manifest``: small records, so finding the newest one reads a few;
* partition :data:`CHUNK_PARTITION` holds the chunks, key
  ``<chain>:<slot>:k<n>`` (keys) or ``<chain>:<slot>:l<n>`` (labels).

A snapshot is written chunks first, every chunk acknowledged (acks=all,
idempotent producer), then the manifest naming each chunk's offset and digest;
so a snapshot whose writer died half-way is never named by a manifest and
never used. Consecutive snapshots of a chain alternate between slots 0 and 1,
so writing one never overwrites the chunks the current manifest names; once
the new manifest is in, the chunks of the previous slot are tombstoned and the
compactor drops them. Chunks left by a writer that died before its manifest
are overwritten by the next snapshot of that slot.

What the store raises is :class:`SnapshotUnavailable` (Kafka cannot be read or
written, the topic has the wrong shape) or
:class:`~watcher.core.addrsnapshot.SnapshotCorrupt` (the bytes are wrong); the
registrations follower turns either into a full re-read, never into a partial
index.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer

from watcher.config import KafkaConfig
from watcher.core.addrsnapshot import (
    ChunkRef,
    Manifest,
    Restored,
    SnapshotCorrupt,
    assemble,
    chunk_key,
    chunk_payloads,
    digest,
    manifest_key,
)
from watcher.errors import SinkError
from watcher.kafka.client import SHORT_READ_FETCH_WAIT_MS, ManualConsumer
from watcher.kafka.sink import _close_producer, producer_kwargs, read_last

log = logging.getLogger(__name__)

MANIFEST_PARTITION = 0
CHUNK_PARTITION = 1
SNAPSHOT_PARTITIONS = 2
SNAPSHOT_TOPIC_CONFIGS: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(2 * 1024 * 1024),
    "segment.bytes": str(128 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.2",
}


class SnapshotUnavailable(Exception):
    """The snapshot topic cannot be used right now (or ever, when it has the wrong shape)."""


class AddressSnapshotStore:
    """Reads and writes the snapshots of the address indexes of the chains of one instance."""

    def __init__(self, cfg: KafkaConfig, *, timeout_s: float = 60.0) -> None:
        self._cfg = cfg
        self._topic = cfg.topics.address_snapshots
        self._timeout_s = timeout_s

    @property
    def topic(self) -> str:
        return self._topic

    async def read_manifest(self, chain: str) -> Manifest | None:
        """The newest manifest of ``chain``, or None when it has none."""
        try:
            record = await read_last(self._cfg, self._topic, MANIFEST_PARTITION,
                                     manifest_key(chain), timeout_s=self._timeout_s)
        except SinkError as exc:
            raise SnapshotUnavailable(f"reading the manifest of {chain}: {exc}") from exc
        if record is None or record.value is None:
            return None
        manifest = Manifest.from_bytes(record.value)
        if manifest.chain != chain:
            raise SnapshotCorrupt(f"manifest under {chain}'s key names chain {manifest.chain!r}")
        return manifest

    async def read_chunks(self, manifest: Manifest) -> Restored:
        """Every chunk ``manifest`` names, checked (see :func:`assemble`)."""
        wanted = {c.offset for c in manifest.chunks}
        found: dict[int, tuple[bytes | None, bytes | None]] = {}
        if wanted:
            consumer = ManualConsumer(self._cfg, self._topic, timeout_s=self._timeout_s,
                                      fetch_max_wait_ms=SHORT_READ_FETCH_WAIT_MS)
            try:
                await self._start(consumer)
                end = (await consumer.end_offsets())[CHUNK_PARTITION]
                consumer.assign()  # after the offsets: they would wait behind its fetch
                lo, hi = min(wanted), max(wanted) + 1
                if hi > end:
                    raise SnapshotCorrupt(f"manifest names offset {hi - 1} beyond the end {end} of "
                                          f"{self._topic}[{CHUNK_PARTITION}]")
                consumer.seek(CHUNK_PARTITION, lo)
                deadline = time.monotonic() + self._timeout_s
                while await consumer.position(CHUNK_PARTITION) < hi:
                    if time.monotonic() > deadline:
                        raise SnapshotUnavailable(f"reading {len(wanted)} chunks timed out")
                    for rec in await consumer.fetch(timeout_ms=500):
                        if rec.offset in wanted:
                            found[rec.offset] = (rec.key, rec.value)
            except SinkError as exc:
                raise SnapshotUnavailable(f"reading chunks of {manifest.chain}: {exc}") from exc
            finally:
                await consumer.stop()
        return assemble(manifest, found)

    async def _start(self, consumer: ManualConsumer) -> None:
        probe = ManualConsumer(self._cfg, self._topic, timeout_s=self._timeout_s)
        try:
            partitions = await probe.start(assign=False)
        finally:
            await probe.stop()
        if CHUNK_PARTITION not in partitions or MANIFEST_PARTITION not in partitions:
            raise SnapshotUnavailable(
                f"topic {self._topic} has partitions {partitions}; snapshots need "
                f"{SNAPSHOT_PARTITIONS} (recreate it, or configure kafka.topics.address_snapshots)")
        await consumer.start([CHUNK_PARTITION], assign=False)

    async def write(self, chain: str, key_size: int, count: int, key_chunks: Iterable[bytes],
                    labels: Mapping[bytes, str], offsets: Mapping[int, int], base: str | None,
                    previous: Manifest | None) -> Manifest:
        """Writes a snapshot (chunks, then the manifest, then tombstones for ``previous``'s
        chunks) and returns its manifest. Raises :class:`SnapshotUnavailable`."""
        snapshot_id = uuid.uuid4().hex
        slot = 0 if previous is None else 1 - previous.slot
        producer: Any = AIOKafkaProducer(**producer_kwargs(self._cfg, self._timeout_s))
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                await producer.start()
                futures: list[tuple[str, int, int, str, Any]] = []
                for kind, number, payload in chunk_payloads(key_chunks, labels, key_size):
                    fut = await producer.send(
                        self._topic, value=payload, key=chunk_key(chain, slot, kind, number),
                        partition=CHUNK_PARTITION)
                    futures.append((kind, number, len(payload),
                                    digest(snapshot_id, kind, number, payload), fut))
                    await asyncio.sleep(0)  # hashing 1 MB chunks must not starve the followers
                refs = []
                for kind, number, length, dig, fut in futures:
                    meta = await fut
                    refs.append(ChunkRef(kind, number, int(meta.offset), length, dig))
                manifest = Manifest(chain, snapshot_id, slot, key_size, count, len(labels),
                                    dict(offsets), base, int(time.time() * 1000), tuple(refs))
                await producer.send_and_wait(self._topic, value=manifest.to_bytes(),
                                             key=manifest_key(chain), partition=MANIFEST_PARTITION)
                if previous is not None:
                    for c in previous.chunks:
                        await producer.send(self._topic, value=None, partition=CHUNK_PARTITION,
                                            key=chunk_key(chain, previous.slot, c.kind, c.number))
                    await producer.flush()
                return manifest
        except SnapshotUnavailable:
            raise
        except Exception as exc:
            raise SnapshotUnavailable(f"writing the snapshot of {chain}: {exc!r}") from exc
        finally:
            await _close_producer(producer, self._timeout_s)
