"""Settled withdrawal records and their index snapshots on a real broker.

Written through the real transactional sink (as the runner writes them), read back with
:class:`KafkaSettledRecords` as a starting runner reads them.
"""

from __future__ import annotations

import hashlib
import uuid

import orjson
import pytest

from tests.integration.test_kafka_sink import make_cfg
from tests.support.services import KafkaService
from watcher.core.withdrawals import SettledOutcome, SnapshotError, settled_record
from watcher.errors import ConfigError
from watcher.kafka.client import ensure_topics
from watcher.kafka.settled import KafkaSettledRecords, index_topic, settled_topic
from watcher.kafka.sink import KafkaTransactionalSink
from watcher.ports import OutRecord

pytestmark = pytest.mark.integration


def digest(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def settled(store: KafkaSettledRecords, ids: range) -> list[OutRecord]:
    return [OutRecord(store.topic, f"w-{i}".encode(),
                      settled_record(digest(i), "eth", SettledOutcome.CONFIRMED)) for i in ids]


async def test_records_and_index_snapshots_load_back(kafka: KafkaService) -> None:
    cfg = make_cfg(kafka.bootstrap_servers)
    store = KafkaSettledRecords(cfg, "eth", timeout_s=20)
    assert (await store.load()).read == 0  # no topic yet: nothing settled
    await ensure_topics(cfg, chains=["eth"])
    await store.ensure()
    sink = KafkaTransactionalSink(cfg, f"test-wdstate-{uuid.uuid4().hex[:8]}", "eth")
    await sink.start()
    try:
        await sink.commit(settled(store, range(0, 500)), "withdrawals", b"{}")
        first = await store.load()
        assert (len(first.index), first.seq, first.covered, first.read) == (500, 0, 0, 500)
        covered = await store.end_offset()
        await sink.commit(store.index_records(first.index, covered), "withdrawals", b"{}")
        await sink.commit(settled(store, range(500, 520)), "withdrawals", b"{}")
        second = KafkaSettledRecords(cfg, "eth", timeout_s=20)
        loaded = await second.load()
        assert (len(loaded.index), loaded.seq, loaded.covered, loaded.read) == (520, 1, covered, 20)
        assert all(loaded.index.seen(f"w-{i}", digest(i)) is True for i in range(520))
        assert loaded.index.seen("w-3", digest(4)) is False
        assert loaded.index.seen("w-520", digest(520)) is None
        # The next snapshot goes to the other slot; a broken newest snapshot is passed over.
        covered2 = await second.end_offset()
        records = second.index_records(loaded.index, covered2)
        assert [r.key for r in records][-1] == b"manifest:a"  # the first one went to "b"
        broken = [OutRecord(r.topic, r.key, b"x" * 48) if r.key == b"a:0" else r for r in records]
        await sink.commit(broken, "withdrawals", b"{}")
        fallback = await KafkaSettledRecords(cfg, "eth", timeout_s=20).load()
        assert (len(fallback.index), fallback.seq, fallback.read) == (520, 1, 20)
        # An unreadable settled record stops the load, naming its key.
        await sink.commit([OutRecord(store.topic, b"w-bad", b"not json")], "withdrawals", b"{}")
        with pytest.raises(SnapshotError, match="w-bad"):
            await KafkaSettledRecords(cfg, "eth", timeout_s=20).load()
    finally:
        await sink.stop()
    manifest = orjson.loads(records[-1].value or b"")
    assert (manifest["slot"], manifest["seq"], manifest["count"]) == ("a", 2, 520)


async def test_a_deleting_settled_topic_is_refused(kafka: KafkaService) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    cfg = make_cfg(kafka.bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settled_topic(cfg.topics.checkpoints, "eth"), 1, 1)])
    finally:
        await admin.close()
    await ensure_topics(cfg)
    with pytest.raises(ConfigError, match=r"cleanup\.policy"):
        await KafkaSettledRecords(cfg, "eth", timeout_s=20).ensure()
    assert index_topic(cfg.topics.checkpoints, "eth").endswith(".eth.withdrawals-index")
