"""Who the leadership group's range assignor picks: the oldest member, so the incumbent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from watcher.kafka.leadership import member_client_id

TOPIC = "watcher.leadership"


@dataclass
class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        assert topic == TOPIC
        return {0}


def _member(client_id: str) -> str:
    # How the broker names a member: the client id, a dash, a random UUID.
    return f"{client_id}-{uuid.uuid4()}"


def test_client_ids_are_fixed_width_and_named() -> None:
    assert member_client_id("watcher", 1_764_590_000_123_456_789) == \
        "watcher-lead-01764590000123456789"
    assert member_client_id("watcher", 5) == "watcher-lead-00000000000000000005"


def test_the_oldest_member_gets_the_partition_whatever_the_uuids() -> None:
    for _ in range(50):
        oldest = _member(member_client_id("watcher", 1_764_590_000_000_000_000))
        newer = [_member(member_client_id("watcher", 1_764_590_000_000_000_000 + d))
                 for d in (1, 10**9, 10**12)]
        members = {m: ConsumerProtocolMemberMetadata(0, [TOPIC], b"") for m in [*newer, oldest]}
        out = RangePartitionAssignor.assign(_Cluster(), members)
        assert out[oldest].partitions() == [(TOPIC, 0)]
        assert all(out[m].partitions() == [] for m in newer)
