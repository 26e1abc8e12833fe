"""Smoke tests of the real local services the integration suite relies on."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.support.services import (
    AnvilFactory,
    AnvilService,
    BtcdService,
    KafkaService,
    PrometheusService,
    devstack,
)

pytestmark = pytest.mark.integration


# ----------------------------------------------------------------------------- Kafka


async def _drain(consumer: Any, *, expect: int | None = None, quiet_ms: int = 1500,
                 deadline_s: float = 15.0) -> list[bytes]:
    """Read until `expect` records arrived, or (expect=None) until quiet for quiet_ms."""
    out: list[bytes] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        batch = await consumer.getmany(timeout_ms=quiet_ms if expect is None else 500)
        got = [m.value for msgs in batch.values() for m in msgs]
        out += got
        if expect is not None and len(out) >= expect:
            break
        if expect is None and not got:
            break
    return out


async def _consumer(kafka: KafkaService, tp: TopicPartition, isolation: str) -> Any:
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers,
                                isolation_level=isolation, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign([tp])
    await consumer.seek_to_beginning(tp)
    return consumer


@pytest.mark.asyncio
async def test_kafka_transactions_read_committed(kafka: KafkaService) -> None:
    topic = f"smoke-txn-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers,
                                transactional_id=f"smoke-{topic}")
    await producer.start()
    committed = await _consumer(kafka, tp, "read_committed")
    uncommitted = await _consumer(kafka, tp, "read_uncommitted")
    try:
        # 1. an open transaction is invisible to read_committed, visible to read_uncommitted
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"c1")
        await producer.send_and_wait(topic, b"c2")
        assert await _drain(uncommitted, expect=2) == [b"c1", b"c2"]
        assert await _drain(committed) == []
        await producer.commit_transaction()
        assert await _drain(committed, expect=2) == [b"c1", b"c2"]

        # 2. an aborted transaction is never seen by read_committed
        await producer.begin_transaction()
        await producer.send_and_wait(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(topic, b"c3")
        assert await _drain(committed, expect=1) == [b"c3"]
        assert await _drain(committed) == []
        assert await _drain(uncommitted, expect=2) == [b"aborted", b"c3"]

        # 3. a consumer group reads the committed records and commits its offset
        group = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap_servers,
                                 group_id=f"smoke-group-{topic}", enable_auto_commit=False,
                                 auto_offset_reset="earliest", isolation_level="read_committed")
        await group.start()
        try:
            assert await _drain(group, expect=3, deadline_s=30) == [b"c1", b"c2", b"c3"]
            await group.commit()
            assert (await group.committed(tp) or 0) >= 5  # 3 records + 2 txn markers before c3
        finally:
            await group.stop()
    finally:
        await producer.stop()
        await committed.stop()
        await uncommitted.stop()


# ----------------------------------------------------------------------------- anvil


def _block_hash(anvil: AnvilService, height: int) -> str:
    block = anvil.rpc("eth_getBlockByNumber", hex(height), False)
    assert block is not None, f"no block {height}"
    return str(block["hash"])


def test_anvil_reorg_changes_block_hash(anvil: AnvilService,
                                        anvil_factory: AnvilFactory) -> None:
    assert int(anvil.rpc("eth_chainId"), 16) == 31337
    fresh = anvil_factory()  # a private chain: this test rewrites history
    try:
        assert fresh.url != anvil.url
        fresh.rpc("anvil_mine", hex(6))
        assert int(fresh.rpc("eth_blockNumber"), 16) == 6
        before = {h: _block_hash(fresh, h) for h in range(7)}
        fresh.rpc("anvil_reorg", 3, [])
        assert int(fresh.rpc("eth_blockNumber"), 16) == 6
        after = {h: _block_hash(fresh, h) for h in range(7)}
        assert all(after[h] == before[h] for h in range(4))  # below the reorg: unchanged
        assert all(after[h] != before[h] for h in (4, 5, 6))  # reorged blocks: new hashes
    finally:
        anvil_factory.stop(fresh)


# ------------------------------------------------------------------------------ btcd


def test_btcd_invalidateblock_changes_tip(btcd: BtcdService) -> None:
    assert int(btcd.rpc("getblockcount")) >= 101  # mature coinbase exists
    coinbase_block = btcd.rpc("getblock", btcd.rpc("getblockhash", 1), 2)
    assert btcd.mining_address in str(coinbase_block["rawtx"][0]["vout"])

    hashes = btcd.rpc("generate", 2)
    assert len(hashes) == 2
    height = int(btcd.rpc("getblockcount"))
    tip = btcd.rpc("getbestblockhash")
    assert tip == hashes[-1]

    btcd.rpc("invalidateblock", tip)
    assert int(btcd.rpc("getblockcount")) == height - 1
    assert btcd.rpc("getbestblockhash") == hashes[0]

    replacement = btcd.rpc("generate", 1)[0]
    assert int(btcd.rpc("getblockcount")) == height
    assert btcd.rpc("getbestblockhash") == replacement != tip


# ------------------------------------------------------------------------ Prometheus


def test_prometheus_scrapes_exporter(prometheus: PrometheusService) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("watcher_smoke_value", "smoke test gauge", registry=registry)
    gauge.set(42.5)
    port = int(devstack().free_port())
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prometheus.set_targets("smoke", [f"127.0.0.1:{port}"])
        deadline = time.monotonic() + 30
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = prometheus.query('watcher_smoke_value{job="smoke"}')
            if result:
                break
            time.sleep(0.5)
        assert result, f"no sample scraped within 30 s (log {prometheus.log})"
        assert float(result[0]["value"][1]) == 42.5
        assert result[0]["metric"]["instance"] == f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_services_are_distinct_from_dev_stack(kafka: KafkaService, anvil: AnvilService,
                                              btcd: BtcdService) -> None:
    contract_ports = set(devstack().DEFAULT_PORTS.values())
    assert {kafka.port, anvil.port, btcd.port}.isdisjoint(contract_ports)
