"""The settled-withdrawal records of one chain: a compacted topic, read whole at start.

Topic ``<kafka.topics.checkpoints>.<chain>.withdrawals`` (:func:`settled_topic`), one
partition, ``cleanup.policy=compact``. Key: the request id (UTF-8); value: the record of
:func:`watcher.core.withdrawals.settled_record`, written once per request id, never a
tombstone. Only the chain's withdrawal runner writes it, always inside the Kafka
transaction that also commits its events, input offsets and live snapshot (they are
plain :class:`~watcher.ports.OutRecord` s of that transaction), so a read after the
runner's producer initialised (which settles any open transaction of an older writer)
sees exactly the records of the committed snapshot's history.

Why a topic of its own and not the chain's checkpoint topic: a takeover reads it from
the beginning, and the checkpoint topic is rewritten with large snapshots at every step
until the cleaner compacts it; this one only grows by one small record per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from watcher.config import KafkaConfig
from watcher.errors import ErrorKind, SinkError
from watcher.kafka.client import (
    CHECKPOINT_TOPIC_CONFIGS,
    ManualConsumer,
    TopicSpec,
    ensure_topics,
    topic_exists,
)
from watcher.kafka.sink import classify

SETTLED_FETCH_BYTES = 8 * 1024 * 1024


def settled_topic(checkpoints: str, chain: str) -> str:
    """``<checkpoints>.<chain>.withdrawals``: a chain id has no ``.``, so no chain's
    checkpoint topic (``<checkpoints>.<chain>``) can be named like this."""
    return f"{checkpoints}.{chain}.withdrawals"


def settled_spec(checkpoints: str, chain: str) -> TopicSpec:
    return TopicSpec(settled_topic(checkpoints, chain), 1, CHECKPOINT_TOPIC_CONFIGS, "compact",
                     "kafka.topics.checkpoints")


class KafkaSettledRecords:
    """Implements :class:`watcher.ports.SettledRecords` on Kafka."""

    def __init__(self, cfg: KafkaConfig, chain: str, *, timeout_s: float = 30.0) -> None:
        self._cfg = cfg
        self._chain = chain
        self.topic = settled_topic(cfg.topics.checkpoints, chain)
        self._timeout_s = timeout_s
        self._ensured = False

    async def ensure(self) -> None:
        """Creates the topic (compacted) when missing; refuses one with another cleanup
        policy (:class:`~watcher.errors.ConfigError`): a deleting policy would one day forget
        that an old request was paid."""
        if not self._ensured:
            await ensure_topics(self._cfg, self._timeout_s,
                                extra=[settled_spec(self._cfg.topics.checkpoints, self._chain)])
            self._ensured = True

    async def batches(self) -> AsyncIterator[list[tuple[bytes | None, bytes | None]]]:
        """Every committed record, ``(key, value)`` in offset order, in batches.

        Like :func:`watcher.kafka.sink.read_last`, waits until no open transaction hides a
        record written before the call (RETRIABLE SinkError when that does not happen in
        time)."""
        try:
            if not await topic_exists(self._cfg, self.topic, self._timeout_s):
                return
            probe = ManualConsumer(self._cfg, self.topic, read_committed=False,
                                   timeout_s=self._timeout_s)
            parts = await probe.start()
            try:
                high = await probe.end_offsets()
            finally:
                await probe.stop()
            consumer = ManualConsumer(self._cfg, self.topic, max_fetch_bytes=SETTLED_FETCH_BYTES,
                                      timeout_s=self._timeout_s)
            await consumer.start(parts)
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(classify(exc), f"reading {self.topic}: {exc!r}") from exc
        deadline = time.monotonic() + self._timeout_s
        try:
            end = await consumer.end_offsets()
            while any(end[p] < high[p] for p in parts):
                if time.monotonic() > deadline:
                    raise SinkError(ErrorKind.RETRIABLE, f"{self.topic} holds an open transaction; "
                                                         "its committed records are not known yet")
                await asyncio.sleep(0.05)
                end = await consumer.end_offsets()
            await consumer.seek_to_beginning()
            todo = {p for p in parts if await consumer.position(p) < end[p]}
            while todo:
                if time.monotonic() > deadline:
                    raise SinkError(ErrorKind.RETRIABLE, f"reading {self.topic} timed out")
                recs = await consumer.fetch(timeout_ms=200, max_records=50_000)
                if recs:
                    deadline = time.monotonic() + self._timeout_s  # progress: a new allowance
                    yield [(r.key, r.value) for r in recs if r.offset < end[r.partition]]
                todo = {p for p in todo if await consumer.position(p) < end[p]}
        finally:
            await consumer.stop()


__all__ = ["KafkaSettledRecords", "settled_spec", "settled_topic"]
