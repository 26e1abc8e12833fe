"""The Kafka transactional sink against a real broker: atomicity, fencing, crashes, doubt."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.support.kafka import read_all
from tests.support.services import KafkaService
from watcher.config import KafkaConfig, Topics
from watcher.errors import ConfigError, ErrorKind, SinkError
from watcher.kafka.client import (
    CHECKPOINT_PARTITION,
    Consumed,
    ManualConsumer,
    checkpoint_topic,
    connection_kwargs,
    describe,
    ensure_topics,
)
from watcher.kafka.partitioner import partition_for
from watcher.kafka.sink import COMMIT_ID_HEADER, KafkaTransactionalSink, classify
from watcher.metrics import REGISTRY
from watcher.ports import OutRecord


def make_cfg(bootstrap: str, **overrides: Any) -> KafkaConfig:
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(**{f: f"test.{f}.{suffix}" for f in Topics.__dataclass_fields__})
    fields: dict[str, Any] = {
        "bootstrap_servers": bootstrap, "topics": topics, "transactional_id_prefix": "test",
        "client_id": "test", "security_protocol": "PLAINTEXT", "sasl_mechanism": None,
        "sasl_username": None, "sasl_password": None, "ssl_cafile": None,
        "transaction_timeout_ms": 60_000}
    fields.update(overrides)
    return KafkaConfig(**fields)


@pytest.fixture
async def cfg(kafka: KafkaService) -> AsyncIterator[KafkaConfig]:
    c = make_cfg(kafka.bootstrap_servers)
    # deposits, withdrawals, withdrawal requests, dead letters, registrations, address
    # snapshots, leadership, and one checkpoint topic per chain
    assert len(await ensure_topics(c, chains=CHAINS)) == 7 + len(CHAINS)
    yield c


CHAINS = [f"t{i}" for i in range(1, 10)]


def cp(cfg: KafkaConfig, chain: str) -> str:
    return checkpoint_topic(cfg.topics, chain)


@pytest.fixture
def txn_id() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def end_offset(cfg: KafkaConfig, topic: str, *, committed: bool) -> int:
    consumer = ManualConsumer(cfg, topic, read_committed=committed, timeout_s=10)
    await consumer.start([CHECKPOINT_PARTITION])
    try:
        return (await consumer.end_offsets())[CHECKPOINT_PARTITION]
    finally:
        await consumer.stop()


def deposits(cfg: KafkaConfig, *ids: str) -> list[OutRecord]:
    return [OutRecord(cfg.topics.deposits, i.encode(), f'{{"deposit_id":"{i}"}}'.encode())
            for i in ids]


def keys(records: list[Consumed]) -> list[bytes]:
    return [r.key or b"" for r in records]


def commits(chain: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("watcher_kafka_commits_total",
                                     {"chain": chain, "outcome": outcome}) or 0.0


@pytest.mark.integration
async def test_commit_makes_records_and_checkpoint_visible_together(
        cfg: KafkaConfig, txn_id: str) -> None:
    sink = KafkaTransactionalSink(cfg, txn_id, "t1", timeout_s=15)
    await sink.start()
    try:
        assert await sink.load_checkpoint("eth") is None
        withdrawal = OutRecord(cfg.topics.withdrawals, b"w1", b'{"request_id":"w1"}')
        await sink.commit([*deposits(cfg, "d1", "d2"), withdrawal], "eth", b"cp-1")
        await sink.commit(deposits(cfg, "d3"), "eth", b"cp-2")
        await sink.commit([], "btc", b"other-chain")
        assert await sink.load_checkpoint("eth") == b"cp-2"
        assert await sink.load_checkpoint("btc") == b"other-chain"
    finally:
        await sink.stop()
    assert sorted(keys(await read_all(cfg, cfg.topics.deposits))) == [b"d1", b"d2", b"d3"]
    assert keys(await read_all(cfg, cfg.topics.withdrawals)) == [b"w1"]
    cps = await read_all(cfg, cp(cfg, "t1"))
    assert [(r.key, r.value, r.partition) for r in cps] == [
        (b"eth", b"cp-1", CHECKPOINT_PARTITION), (b"eth", b"cp-2", CHECKPOINT_PARTITION),
        (b"btc", b"other-chain", CHECKPOINT_PARTITION)]
    assert all(r.header(COMMIT_ID_HEADER) for r in cps)
    assert commits("t1", "committed") == 3

    again = KafkaTransactionalSink(cfg, txn_id, "t1", timeout_s=15)
    await again.start()
    try:
        assert await again.load_checkpoint("eth") == b"cp-2", "a restarted sink reads it back"
    finally:
        await again.stop()


@pytest.mark.integration
async def test_the_first_read_after_start_sees_what_was_committed_after_the_start(
        cfg: KafkaConfig, txn_id: str) -> None:
    # start() connects the first checkpoint read's consumers while it fences; where that read
    # ends is still decided when it is made: a commit landing in between is seen.
    reader = KafkaTransactionalSink(cfg, txn_id, "t2", timeout_s=15)
    writer = KafkaTransactionalSink(cfg, f"{txn_id}-other", "t2", timeout_s=15)
    await reader.start()
    try:
        await writer.start()
        await writer.commit(deposits(cfg, "late"), "eth", b"cp-after-the-start")
        assert await reader.load_checkpoint("eth") == b"cp-after-the-start"
        assert await reader.load_checkpoint("eth") == b"cp-after-the-start", "read anew"
    finally:
        await writer.stop()
        await reader.stop()


@pytest.mark.integration
async def test_a_sink_stopped_before_any_read_closes_its_readers(
        cfg: KafkaConfig, txn_id: str) -> None:
    sink = KafkaTransactionalSink(cfg, txn_id, "t3", timeout_s=15)
    await sink.start()
    await sink.stop()
    assert sink._readers is None
    again = KafkaTransactionalSink(cfg, txn_id, "t3", timeout_s=15)
    await again.start()  # a stopped sink's readers hold nothing the next one needs
    try:
        assert await again.load_checkpoint("eth") is None
    finally:
        await again.stop()


@pytest.mark.integration
async def test_second_instance_fences_the_first(cfg: KafkaConfig, txn_id: str) -> None:
    first = KafkaTransactionalSink(cfg, txn_id, "t2", timeout_s=15)
    second = KafkaTransactionalSink(cfg, txn_id, "t2", timeout_s=15)
    await first.start()
    try:
        await first.load_checkpoint("eth")
        await first.commit(deposits(cfg, "before"), "eth", b"cp-first")
        await second.start()
        assert await second.load_checkpoint("eth") == b"cp-first"
        with pytest.raises(SinkError) as err:
            await first.commit(deposits(cfg, "zombie-1", "zombie-2"), "eth", b"cp-zombie")
        assert err.value.kind is ErrorKind.FENCED
        assert first.fenced
        with pytest.raises(SinkError) as again:
            await first.commit(deposits(cfg, "zombie-3"), "eth", b"cp-zombie")
        assert again.value.kind is ErrorKind.FENCED, "a fenced sink never writes again"
        await second.commit(deposits(cfg, "after"), "eth", b"cp-second")
        assert await second.load_checkpoint("eth") == b"cp-second"
    finally:
        await first.stop()
        await second.stop()
    assert sorted(keys(await read_all(cfg, cfg.topics.deposits))) == [b"after", b"before"]
    assert [r.value for r in await read_all(cfg, cp(cfg, "t2"))] == [
        b"cp-first", b"cp-second"]
    assert commits("t2", "fenced") == 2


@pytest.mark.integration
async def test_abandoned_transaction_is_aborted_by_the_next_start(
        cfg: KafkaConfig, txn_id: str) -> None:
    sink = KafkaTransactionalSink(cfg, txn_id, "t3", timeout_s=15)
    await sink.start()
    try:
        await sink.commit(deposits(cfg, "committed"), "eth", b"cp-committed")
    finally:
        await sink.stop()

    # A process that crashed mid-transaction: records and a checkpoint sent, never committed.
    crashed = AIOKafkaProducer(**connection_kwargs(cfg), transactional_id=txn_id,
                               transaction_timeout_ms=cfg.transaction_timeout_ms)
    await crashed.start()
    await crashed.begin_transaction()
    await crashed.send_and_wait(cfg.topics.deposits, key=b"abandoned", value=b"{}")
    await crashed.send_and_wait(cp(cfg, "t3"), key=b"eth", value=b"cp-abandoned",
                                partition=CHECKPOINT_PARTITION)
    await crashed.stop()  # no commit, no abort: the broker holds the transaction open
    assert await end_offset(cfg, cp(cfg, "t3"), committed=True) \
        < await end_offset(cfg, cp(cfg, "t3"), committed=False), "transaction is open"

    restarted = KafkaTransactionalSink(cfg, txn_id, "t3", timeout_s=15)
    t0 = time.monotonic()
    await restarted.start()
    try:
        assert await restarted.load_checkpoint("eth") == b"cp-committed"
        elapsed = time.monotonic() - t0
        assert elapsed < 10, f"took {elapsed:.1f}s: waited for the transaction timeout?"
        await restarted.commit(deposits(cfg, "next"), "eth", b"cp-next")
    finally:
        await restarted.stop()
    assert sorted(keys(await read_all(cfg, cfg.topics.deposits))) == [b"committed", b"next"]
    assert [r.value for r in await read_all(cfg, cp(cfg, "t3"))] == [
        b"cp-committed", b"cp-next"]


@pytest.mark.integration
async def test_open_transaction_of_another_writer_never_yields_an_old_checkpoint(
        cfg: KafkaConfig, txn_id: str) -> None:
    """Another writer's open transaction on the chain's checkpoint topic (a stray producer; other
    chains have topics of their own) holds the last stable offset below our newest checkpoint,
    and the read must wait, not answer older."""
    sink = KafkaTransactionalSink(cfg, txn_id, "t7", timeout_s=15)
    await sink.start()
    other = AIOKafkaProducer(**connection_kwargs(cfg), transactional_id=f"{txn_id}-other")
    await other.start()
    try:
        await sink.commit([], "eth", b"cp-1")
        await other.begin_transaction()
        await other.send_and_wait(cp(cfg, "t7"), key=b"btc", value=b"btc-1",
                                  partition=CHECKPOINT_PARTITION)
        await sink.commit([], "eth", b"cp-2")

        impatient = KafkaTransactionalSink(cfg, txn_id, "t7", timeout_s=1.5)
        await impatient.start()  # fences ``sink``, which is done anyway
        try:
            with pytest.raises(SinkError) as err:
                await impatient.load_checkpoint("eth")
            assert err.value.kind is ErrorKind.RETRIABLE
        finally:
            await impatient.stop()

        async def commit_later() -> None:
            await asyncio.sleep(1)
            await other.commit_transaction()

        later = asyncio.create_task(commit_later())
        restarted = KafkaTransactionalSink(cfg, txn_id, "t7", timeout_s=15)
        await restarted.start()
        try:
            assert await restarted.load_checkpoint("eth") == b"cp-2"
        finally:
            await restarted.stop()
        await later
    finally:
        await sink.stop()
        await other.stop()


@pytest.mark.integration
async def test_open_transaction_of_one_chain_does_not_delay_another_chains_load(
        cfg: KafkaConfig, txn_id: str) -> None:
    """Each chain has its own checkpoint topic: chain t8's transaction left open (its writer
    hangs mid-commit) does not hold back chain t9's read, which a shared partition did."""
    b = KafkaTransactionalSink(cfg, f"{txn_id}-b", "t9", timeout_s=15)
    await b.start()
    await b.commit([], "chain:t9", b"t9-cp")
    await b.stop()
    hanging = AIOKafkaProducer(**connection_kwargs(cfg), transactional_id=f"{txn_id}-a",
                               transaction_timeout_ms=cfg.transaction_timeout_ms)
    await hanging.start()
    try:
        await hanging.begin_transaction()
        await hanging.send_and_wait(cp(cfg, "t8"), key=b"chain:t8", value=b"t8-open",
                                    partition=CHECKPOINT_PARTITION)
        await hanging.send_and_wait(cfg.topics.deposits, key=b"d", value=b"{}")
        assert await end_offset(cfg, cp(cfg, "t8"), committed=True) \
            < await end_offset(cfg, cp(cfg, "t8"), committed=False), "t8's transaction is open"
        # Impatient on purpose: 2 s, while the open transaction lasts 60 s.
        reader = KafkaTransactionalSink(cfg, f"{txn_id}-b", "t9", timeout_s=2)
        await reader.start()
        try:
            t0 = time.monotonic()
            assert await reader.load_checkpoint("chain:t9") == b"t9-cp"
            assert time.monotonic() - t0 < 2
        finally:
            await reader.stop()
    finally:
        await hanging.abort_transaction()
        await hanging.stop()


@pytest.mark.integration
async def test_checkpoint_of_the_one_topic_layout_is_migrated(
        cfg: KafkaConfig, txn_id: str) -> None:
    """An earlier version kept every chain's checkpoint on partition 0 of
    ``kafka.topics.checkpoints``: a chain without a checkpoint in its own topic starts from
    that one, and its next commit goes to its own topic, which wins from then on."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(cfg.topics.checkpoints, 1, 1,
                                            topic_configs={"cleanup.policy": "compact"})])
    finally:
        await admin.close()
    old = AIOKafkaProducer(**connection_kwargs(cfg), transactional_id=f"{txn_id}-old")
    await old.start()
    try:
        await old.begin_transaction()
        await old.send_and_wait(cfg.topics.checkpoints, key=b"chain:t5", value=b"legacy-cp",
                                partition=CHECKPOINT_PARTITION)
        await old.commit_transaction()
    finally:
        await old.stop()
    sink = KafkaTransactionalSink(cfg, txn_id, "t5", timeout_s=15)
    await sink.start()
    try:
        assert await sink.load_checkpoint("chain:t5") == b"legacy-cp"
        await sink.commit(deposits(cfg, "m1"), "chain:t5", b"own-cp")
        assert await sink.load_checkpoint("chain:t5") == b"own-cp"
    finally:
        await sink.stop()
    again = KafkaTransactionalSink(cfg, txn_id, "t5", timeout_s=15)
    await again.start()
    try:
        assert await again.load_checkpoint("chain:t5") == b"own-cp"
    finally:
        await again.stop()
    assert [r.value for r in await read_all(cfg, cp(cfg, "t5"))] == [b"own-cp"]
    assert [r.value for r in await read_all(cfg, cfg.topics.checkpoints)] == [b"legacy-cp"]


@pytest.mark.integration
async def test_commit_in_doubt_is_resolved(cfg: KafkaConfig, txn_id: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit request's answer is lost: committed or not, the caller learns the truth."""
    sink = KafkaTransactionalSink(cfg, txn_id, "t4", timeout_s=15)
    await sink.start()
    try:
        assert await sink.load_checkpoint("eth") is None

        # 1. Committed on the broker, but the answer never arrived: commit() succeeds.
        producer: Any = sink._producer
        real_commit = producer.commit_transaction

        async def commit_then_lose_answer() -> None:
            await real_commit()
            raise TimeoutError("answer lost")

        monkeypatch.setattr(producer, "commit_transaction", commit_then_lose_answer)
        await sink.commit(deposits(cfg, "d1"), "eth", b"cp-1")
        assert sink._producer is not producer, "the producer was re-initialised"

        # 2. The request never left: RETRIABLE, nothing visible, and the retry goes through.
        producer = sink._producer

        async def lose_request() -> None:
            raise ConnectionResetError("request lost")

        monkeypatch.setattr(producer, "commit_transaction", lose_request)
        with pytest.raises(SinkError) as err:
            await sink.commit(deposits(cfg, "d2"), "eth", b"cp-2")
        assert err.value.kind is ErrorKind.RETRIABLE
        await sink.commit(deposits(cfg, "d2"), "eth", b"cp-2")
        assert await sink.load_checkpoint("eth") == b"cp-2"
    finally:
        await sink.stop()
    assert keys(await read_all(cfg, cfg.topics.deposits)) == [b"d1", b"d2"], "each exactly once"


@pytest.mark.integration
async def test_send_failure_aborts_and_retries_cleanly(cfg: KafkaConfig, txn_id: str) -> None:
    sink = KafkaTransactionalSink(cfg, txn_id, "t5", timeout_s=15)
    await sink.start()
    try:
        await sink.load_checkpoint("eth")
        too_big = OutRecord(cfg.topics.deposits, b"big", b"x" * (20 * 1024 * 1024))
        with pytest.raises(SinkError) as err:
            await sink.commit([*deposits(cfg, "with-big"), too_big], "eth", b"cp-1")
        assert err.value.kind is ErrorKind.FINAL
        with pytest.raises(SinkError) as cp_err:
            await sink.commit([], "eth", b"x" * (16 * 1024 * 1024 + 1))
        assert cp_err.value.kind is ErrorKind.FINAL
        await sink.commit(deposits(cfg, "ok"), "eth", b"cp-1")
    finally:
        await sink.stop()
    assert keys(await read_all(cfg, cfg.topics.deposits)) == [b"ok"]


@pytest.mark.integration
async def test_batches_keep_each_keys_partition_and_order(cfg: KafkaConfig, txn_id: str) -> None:
    """The sink queues whole record batches itself: a key still lands on the partition the
    Java client gives it, and a partition's records keep their order across the several
    batches one transaction needs."""
    probe = ManualConsumer(cfg, cfg.topics.deposits, timeout_s=30)
    partitions = len(await probe.start(assign=False))
    await probe.stop()
    # ~1.5 MB: over the 256 KiB batch size on every partition.
    records = [OutRecord(cfg.topics.deposits, b"21", b"golden")] + [
        OutRecord(cfg.topics.deposits, f"key-{i}".encode(), b"%05d" % i + b"v" * 1000)
        for i in range(1500)]
    sink = KafkaTransactionalSink(cfg, txn_id, "t7", timeout_s=30)
    await sink.start()
    try:
        await sink.commit(records, "eth", b"cp-1")
    finally:
        await sink.stop()
    got = await read_all(cfg, cfg.topics.deposits)
    assert sorted(r.key or b"" for r in got) == sorted(r.key for r in records), "each once"
    # Java's toPositive(murmur2(b"21")) is 1173551340 (tests/unit/test_kafka_partitioner.py).
    assert [r.partition for r in got if r.key == b"21"] == [1173551340 % partitions]
    for r in got:
        assert r.partition == partition_for(r.key or b"", partitions), r.key
    for p in range(partitions):
        order = [int((r.value or b"")[:5]) for r in sorted(got, key=lambda r: r.offset)
                 if r.partition == p and r.key != b"21"]
        assert order == sorted(order) and len(order) > 300, (p, len(order))


@pytest.mark.integration
async def test_batched_records_land_on_their_keys_partitions_in_order(
        cfg: KafkaConfig, txn_id: str, kafka: KafkaService) -> None:
    """1,500 records of 1 kB (several 256 KiB batches per partition) on a three-partition
    topic: each on the Java client's partition for its key, in order within it, once."""
    topic = f"test.batched.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()
    records = [OutRecord(topic, f"eth:0x{i:064x}:log:{i % 7}".encode(),
                         f'{{"n":{i},"pad":"{"x" * 1000}"}}'.encode()) for i in range(1500)]
    sink = KafkaTransactionalSink(cfg, txn_id, "t7", timeout_s=30)
    await sink.start()
    try:
        await sink.load_checkpoint("eth")
        await sink.commit(records[:1000], "eth", b"cp-1")
        await sink.commit(records[1000:], "eth", b"cp-2")
        assert await sink.load_checkpoint("eth") == b"cp-2"
    finally:
        await sink.stop()
    got = await read_all(cfg, topic)
    assert sorted(r.key or b"" for r in got) == sorted(r.key for r in records)
    for p in range(3):
        want = [r.key for r in records if partition_for(r.key, 3) == p]
        assert want, "every partition has records"
        assert [r.key for r in sorted((g for g in got if g.partition == p),
                                      key=lambda g: g.offset)] == want


@pytest.mark.integration
async def test_large_checkpoint_round_trips(cfg: KafkaConfig, txn_id: str) -> None:
    snapshot = bytes(range(256)) * (8 * 1024 * 1024 // 256)  # 8 MiB, compressible
    sink = KafkaTransactionalSink(cfg, txn_id, "t6", timeout_s=30)
    await sink.start()
    try:
        await sink.commit([], "eth", snapshot)
        assert await sink.load_checkpoint("eth") == snapshot
    finally:
        await sink.stop()


@pytest.mark.integration
async def test_ensure_topics_is_idempotent_and_checks_compaction(kafka: KafkaService) -> None:
    cfg = make_cfg(kafka.bootstrap_servers)
    assert len(await ensure_topics(cfg)) == 7  # with the withdrawal requests topic
    assert await ensure_topics(cfg) == []
    assert await ensure_topics(cfg, chains=["eth"]) == [f"{cfg.topics.checkpoints}.eth"]
    assert await ensure_topics(cfg, chains=["eth"]) == []

    wrong = make_cfg(kafka.bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(checkpoint_topic(wrong.topics, "eth"), 1, 1,
                                            topic_configs={"cleanup.policy": "delete"})])
    finally:
        await admin.close()
    with pytest.raises(ConfigError) as err:
        await ensure_topics(wrong, chains=["eth"])
    assert err.value.key == "kafka.topics.checkpoints"
    assert f"{wrong.topics.checkpoints}.eth" in err.value.reason
    assert "compact" in err.value.reason


def test_connection_settings_and_redaction() -> None:
    cfg = make_cfg("b:9093", security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512",
                   sasl_username="watcher", sasl_password="s3cret")
    kwargs = connection_kwargs(cfg)
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(describe(cfg))
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password"):
        connection_kwargs(make_cfg("b:9093", security_protocol="SASL_SSL", sasl_mechanism="PLAIN",
                                   sasl_username="u"))
    with pytest.raises(ConfigError, match=r"kafka\.sasl_mechanism"):
        connection_kwargs(make_cfg("b:9093", security_protocol="SASL_PLAINTEXT",
                                   sasl_mechanism="GSSAPI", sasl_username="u", sasl_password="p"))
    ssl_kwargs = connection_kwargs(make_cfg("b:9093", security_protocol="SSL"))
    assert ssl_kwargs["ssl_context"].verify_mode.name == "CERT_REQUIRED"


def test_classify() -> None:
    from aiokafka.errors import (
        InvalidProducerEpoch,
        KafkaConnectionError,
        MessageSizeTooLargeError,
        ProducerFenced,
        TransactionalIdAuthorizationFailed,
    )
    assert classify(ProducerFenced()) is ErrorKind.FENCED
    assert classify(InvalidProducerEpoch()) is ErrorKind.FENCED
    assert classify(TransactionalIdAuthorizationFailed("x")) is ErrorKind.FENCED
    try:
        try:
            raise ProducerFenced()
        except ProducerFenced as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert classify(outer) is ErrorKind.FENCED
    assert classify(MessageSizeTooLargeError()) is ErrorKind.FINAL
    assert classify(KafkaConnectionError()) is ErrorKind.RETRIABLE
    assert classify(TimeoutError()) is ErrorKind.RETRIABLE
