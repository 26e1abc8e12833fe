"""The key partitioner gives every key the Java client's partition."""

from __future__ import annotations

import random

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from watcher.kafka.partitioner import JavaCompatiblePartitioner, murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints).
JAVA_CASES = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("data", "java"), JAVA_CASES)
def test_murmur2_is_javas(data: bytes, java: int) -> None:
    assert murmur2(data) == java & 0xFFFFFFFF


@pytest.mark.parametrize(("key", "partitions", "expected"), [
    # toPositive(murmur2) % n, from the values above: -973932308 & 0x7fffffff = 1173551340.
    (b"21", 3, 1173551340 % 3),
    (b"21", 12, 1173551340 % 12),
    (b"abc", 7, 479470107 % 7),
])
def test_partition_is_javas(key: bytes, partitions: int, expected: int) -> None:
    assert partition_for(key, partitions) == expected


def test_same_partition_as_aiokafka_for_every_length() -> None:
    rng = random.Random(7)
    ours, theirs = JavaCompatiblePartitioner(), DefaultPartitioner()
    keys = [rng.randbytes(n) for n in range(0, 90) for _ in range(20)]
    keys += [f"eth:0x{rng.randbytes(32).hex()}:log:{rng.randrange(500)}".encode() for _ in range(500)]
    for key in keys:
        assert murmur2(key) == aiokafka_murmur2(key), key
        for n in (1, 3, 6, 50):
            parts = list(range(n))
            assert ours(key, parts, parts) == theirs(key, parts, parts), (key, n)


def test_keyless_record_goes_to_an_available_partition() -> None:
    ours = JavaCompatiblePartitioner()
    assert {ours(None, [0, 1, 2], [2]) for _ in range(20)} == {2}
    assert ours(None, [0, 1, 2], []) in {0, 1, 2}
