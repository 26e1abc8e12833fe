"""One active replica per chain: leadership from a Kafka consumer group.

Every replica of a chain joins the consumer group ``<transactional_id_prefix>-leader-<chain>``
on the one-partition topic ``watcher.leadership``. Kafka's group coordinator assigns that
single partition to exactly one live member: that member leads, the others stand by. A
replica that dies stops heartbeating and loses the partition after ``session_timeout_ms``;
one that stops cleanly leaves the group and hands over at once.

Guarantees, and what they rest on:

* At most one replica *believes* it leads only while the group is healthy; a paused or
  partitioned zombie may still believe it for up to a session timeout. That is why the
  leader's writes go through the chain's transactional id: the new leader's
  ``init_transactions`` fences the zombie's producer, so a zombie can never commit.
* The topic must have exactly one partition (checked at start): with two, two members
  would each be assigned one and both lead.
* A broker outage makes the replica step down (it cannot know whether it still leads);
  it rejoins by itself.
* **The leader keeps the lead when others join.** A replica that (re)starts triggers a
  rebalance; Kafka's eager protocol revokes every partition first, and the range assignor
  hands the partition to the smallest member id, which with random ids moved the lead (and
  restarted the chain's follower) on about half of all rejoins. Here member ids sort by
  the consumer's start time (:func:`member_client_id`), so the incumbent, the oldest
  member, is given the partition back; and a revocation is only acted on if no assignment
  follows within half the session timeout, so a rejoin costs the leader nothing. Safety
  does not rest on this: until the new assignment arrives nobody else is assigned, and
  fencing covers the rest. (A custom assignor whose join metadata said "I lead" was
  tried and measured to keep the group rebalancing: the coordinator starts a new
  rebalance whenever a member's metadata changes while one completes.)

Implements :class:`watcher.ports.Leadership`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from watcher.config import KafkaConfig
from watcher.errors import ConfigError
from watcher.kafka.client import connection_kwargs
from watcher.metrics import LEADER, LEADERSHIP_CHANGES

log = logging.getLogger(__name__)

def member_client_id(base: str, started_ns: int) -> str:
    """The client id of one leadership consumer: the configured id and the consumer's start
    time, fixed width. The broker makes member ids ``<client id>-<uuid>``, and the range
    assignor gives the one partition to the smallest member id: so the partition goes to
    the longest-standing member, which is the incumbent leader (a newcomer or a restarted
    replica is always younger). Clock skew between pods can only cost a move of the lead,
    never a second leader."""
    return f"{base}-lead-{started_ns:020d}"


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaLeadership) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._owner._revoked()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._owner._assigned(bool(assigned))


class KafkaLeadership:
    def __init__(self, cfg: KafkaConfig, chain: str, *, session_timeout_ms: int = 10_000,
                 retry_backoff_s: float = 1.0) -> None:
        self._cfg = cfg
        self._chain = chain
        self._topic = cfg.topics.leadership
        self._group = f"{cfg.transactional_id_prefix}-leader-{chain}"
        self._session_timeout_ms = session_timeout_ms
        self._backoff_s = retry_backoff_s
        self._leading = asyncio.Event()
        self._standing_by = asyncio.Event()
        self._standing_by.set()
        self._task: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._step_down: asyncio.TimerHandle | None = None
        LEADER.labels(chain).set(0)

    # ------------------------------------------------------------ the port

    def is_leader(self) -> bool:
        return self._leading.is_set()

    async def wait_leading(self) -> None:
        await self._wait(self._leading)

    async def wait_lost(self) -> None:
        await self._wait(self._standing_by)

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"leadership-{self._chain}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_leading(False)

    # ------------------------------------------------------------ internals

    async def _wait(self, event: asyncio.Event) -> None:
        task = self._task
        waiter = asyncio.ensure_future(event.wait())
        try:
            if task is None:
                await waiter
            else:
                await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if self._fatal is not None:
            raise self._fatal
        if not event.is_set():
            raise RuntimeError(f"leadership of {self._chain} stopped")

    def _revoked(self) -> None:
        """Every rebalance revokes first: a leader keeps leading until the assignment
        says otherwise, or until half the rebalance timeout passed without one."""
        if self._leading.is_set() and self._step_down is None:
            self._step_down = asyncio.get_running_loop().call_later(
                self._session_timeout_ms / 2000, self._set_leading, False)

    def _assigned(self, leading: bool) -> None:
        self._set_leading(leading)

    def _set_leading(self, leading: bool) -> None:
        if self._step_down is not None:
            self._step_down.cancel()
            self._step_down = None
        if leading == self._leading.is_set():
            return
        if leading:
            self._standing_by.clear()
            self._leading.set()
            log.info("leading chain %s (group %s)", self._chain, self._group)
        else:
            self._leading.clear()
            self._standing_by.set()
            log.info("standing by for chain %s (group %s)", self._chain, self._group)
        LEADER.labels(self._chain).set(1 if leading else 0)
        LEADERSHIP_CHANGES.labels(self._chain, "acquired" if leading else "lost").inc()

    async def _run(self) -> None:
        while True:
            consumer = AIOKafkaConsumer(
                **{**connection_kwargs(self._cfg),
                   "client_id": member_client_id(self._cfg.client_id, time.time_ns())},
                group_id=self._group,
                enable_auto_commit=False,
                session_timeout_ms=self._session_timeout_ms,
                heartbeat_interval_ms=max(100, self._session_timeout_ms // 4),
                rebalance_timeout_ms=self._session_timeout_ms,
                max_poll_interval_ms=max(self._session_timeout_ms * 3, 30_000),
                # Explicit: the oldest-member-leads rule rests on the range assignor.
                partition_assignment_strategy=(RangePartitionAssignor,),
            )
            try:
                await consumer.start()
                partitions = await self._partitions(consumer)
                if partitions != {0}:
                    raise ConfigError(
                        "kafka.topics.leadership",
                        f"topic {self._topic} must have exactly one partition, has "
                        f"{len(partitions)}: with more, two replicas could lead at once")
                consumer.subscribe([self._topic], listener=_Listener(self))
                while True:
                    # Nothing is ever written to the topic: polling only keeps this member
                    # within max_poll_interval_ms and drives the rebalance callbacks.
                    await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except ConfigError as exc:
                log.error("leadership of chain %s impossible: %s", self._chain, exc)  # noqa: TRY400
                self._fatal = exc
                self._set_leading(False)
                return
            except Exception as exc:
                # We cannot know whether we still lead: step down, then rejoin.
                self._set_leading(False)
                log.warning("leadership of chain %s: %r; rejoining in %.1fs", self._chain, exc,
                            self._backoff_s)
                await asyncio.sleep(self._backoff_s)
            finally:
                self._set_leading(False)
                with contextlib.suppress(Exception):
                    await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> set[int]:
        # A fresh metadata answer (as ManualConsumer.start): the cached one may predate the topic.
        cluster = await consumer._client.fetch_all_metadata()
        found = cluster.partitions_for_topic(self._topic)
        if not found:
            raise RuntimeError(f"topic {self._topic} does not exist (ensure_topics creates it)")
        return {int(p) for p in found}
