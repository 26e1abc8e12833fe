"""The order in which withdrawal requests are decided: by their own timestamps. Pure.

Why: the rolling 24-hour limit charges requests one after the other, so which of two
requests is refused when both do not fit depends on the order they are decided in. The
order records happen to be fetched in across partitions depends on timing (fetch
sizes, a restart, a backlog), so a restart or a takeover re-deciding uncommitted
records could decide differently, and the ledger could not predict the outcome.

The rule (a k-way merge of the partitions, each in offset order): the next request
decided is the partition head with the smallest ``(timestamp, partition)``. The head
of a partition is decided once no other partition could still yield an earlier one:

* every other partition has a held record (its head is later), or
* every partition without a held record has been read up to its end (``behind``
  is false for it) and the head has waited ``wait_ms`` past its timestamp: a
  record written later with an earlier timestamp would have to arrive more than
  ``wait_ms`` late.

So two readers of the same records (the leader, its successor after a crash, a restart
re-reading what was not committed) decide in the same order whenever requests reach
Kafka within ``wait_ms`` of their timestamps; a backlog (catch-up after an outage) is
always decided in the same order, since a partition behind is waited for.

No input blocks its partition: a head is decided after at most ``max_hold_ms`` of wall
time whatever the other partitions do (a partition that cannot be read; a timestamp
far in the future), and a future timestamp waits from its arrival, not its timestamp.
Offsets: the runner commits, per partition, the offset after the last *decided*
record; held records are read again after a restart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from watcher.kafka.client import Consumed

DEFAULT_WAIT_MS = 250
DEFAULT_MAX_HOLD_MS = 5_000


@dataclass(slots=True)
class _Held:
    rec: Consumed
    arrived_ms: int


@dataclass(slots=True)
class RequestOrder:
    wait_ms: int = DEFAULT_WAIT_MS
    max_hold_ms: int = DEFAULT_MAX_HOLD_MS
    _queues: dict[int, deque[_Held]] = field(default_factory=dict)

    def add(self, records: Iterable[Consumed], now_ms: int) -> None:
        """Fetched records (each partition's in offset order)."""
        for r in records:
            self._queues.setdefault(r.partition, deque()).append(_Held(r, now_ms))

    def clear(self) -> None:
        self._queues.clear()

    def held(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def release(self, partitions: Sequence[int], behind: frozenset[int],
                now_ms: int) -> list[Consumed]:
        """The records that may be decided now, in the order to decide them."""
        out: list[Consumed] = []
        while True:
            heads = [(q[0].rec.timestamp_ms, p, q[0]) for p, q in self._queues.items() if q]
            if not heads:
                return out
            ts, p, head = min(heads, key=lambda x: (x[0], x[1]))
            empty = [x for x in partitions if x != p and not self._queues.get(x)]
            waited = now_ms - min(ts, head.arrived_ms)
            ready = (not empty
                     or (not any(x in behind for x in empty) and waited >= self.wait_ms)
                     or now_ms - head.arrived_ms >= self.max_hold_ms)
            if not ready:
                return out
            self._queues[p].popleft()
            out.append(head.rec)


__all__ = ["DEFAULT_MAX_HOLD_MS", "DEFAULT_WAIT_MS", "RequestOrder"]
