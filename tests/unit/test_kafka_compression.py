"""The producers' lz4 level: batches still decode to the same records, faster to build."""

from __future__ import annotations

import os

import pytest
from aiokafka.codec import lz4_decode, lz4_encode
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from watcher.kafka import compression

LZ4 = 0x03  # the record batch attribute of lz4 (Kafka protocol)


def _records(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"eth:0x{os.urandom(32).hex()}:log:{i}".encode(),
             (b'{"type": "deposit.confirmed", "amount": "%d", "address": "0x%s"}'
              % (i * 10**15, os.urandom(20).hex().encode())) * 3) for i in range(n)]


def _batch(records: list[tuple[bytes, bytes]]) -> bytes:
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=LZ4, is_transactional=True,
                                        producer_id=7, producer_epoch=0, base_sequence=0,
                                        batch_size=10**7)
    for offset, (key, value) in enumerate(records):
        assert builder.append(offset, timestamp=None, key=key, value=value, headers=[])
    return bytes(builder.build())


def test_fast_level_batches_decode_to_the_same_records() -> None:
    assert compression.use_fast_lz4() >= 1
    records = _records(300)
    batch = MemoryRecords(_batch(records)).next_batch()
    assert batch is not None and batch.compression_type == LZ4
    assert [(r.key, r.value) for r in batch] == records


def test_level_1_is_the_same_frame_format() -> None:
    data = b"".join(v for _, v in _records(2000))
    fast, slow = lz4_encode(data, level=1), lz4_encode(data, level=9)
    assert lz4_decode(fast) == data == lz4_decode(slow)
    # What the builders now call is level 1, not aiokafka's default 9 (other bytes).
    assert compression._fast_lz4(data) == fast != slow


def test_idempotent() -> None:
    first = compression.use_fast_lz4()
    assert compression.use_fast_lz4() == first


@pytest.mark.parametrize("name", compression._BUILDERS)
def test_every_present_builder_uses_the_fast_level(name: str) -> None:
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} not built here")
    compression.use_fast_lz4()
    assert module.lz4_encode is compression._fast_lz4
