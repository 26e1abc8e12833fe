"""Reading a topic as a downstream consumer would: read_committed, from the start to its end."""

from __future__ import annotations

import asyncio

from watcher.config import KafkaConfig
from watcher.kafka.client import Consumed, ManualConsumer


async def read_all(cfg: KafkaConfig, topic: str, timeout_s: float = 10.0) -> list[Consumed]:
    """Everything a read_committed consumer sees in ``topic`` now."""
    consumer = ManualConsumer(cfg, topic, timeout_s=timeout_s)
    await consumer.start()
    try:
        ends = await consumer.end_offsets()
        out: list[Consumed] = []
        async with asyncio.timeout(timeout_s):
            while [p for p, e in ends.items() if await consumer.position(p) < e]:
                out.extend(await consumer.fetch(timeout_ms=200))
        return out
    finally:
        await consumer.stop()
