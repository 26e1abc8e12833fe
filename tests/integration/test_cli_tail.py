"""``watcher tail`` against a real Kafka: committed records only, filters, live arrival.

Records are produced here, in Kafka transactions (one of them aborted), shaped like
the contract's events; the CLI runs as a subprocess exactly as an operator runs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.support.services import KafkaService
from watcher.config import load
from watcher.kafka.client import ensure_topics

pytestmark = pytest.mark.integration

ALICE = "0xAbCdEF0000000000000000000000000000000001"
BOB = "0x00000000000000000000000000000000000000B0"


def deposit(type_: str, n: int, address: str, amount: str = "2000000000000000000") -> dict[str, Any]:
    return {"schema_version": 1, "event_id": f"ev{n}", "type": type_, "chain": "eth",
            "emitted_at": f"2026-12-01T08:00:0{n}.000Z", "deposit_id": f"eth:0x{n:02x}:tx",
            "asset": "ETH", "token_contract": None, "address": address, "amount": amount,
            "decimals": 18, "txid": f"0x{n:02x}", "block_number": 100 + n,
            "block_hash": f"0x{n:064x}", "confirmations": 1, "required_confirmations": 3}


WITHDRAWAL = {"schema_version": 1, "event_id": "w1", "type": "withdrawal.accepted", "chain": "eth",
              "emitted_at": "2026-12-01T08:00:05.000Z", "request_id": "w-1", "asset": "ETH",
              "to_address": BOB, "amount": "1000000000000000", "decimals": 18}


async def produce_txn(bootstrap: str, txn_id: str, records: Sequence[tuple[str, dict[str, Any]]],
                      commit: bool = True) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id,
                                enable_idempotence=True, compression_type="lz4")
    await producer.start()
    try:
        await producer.begin_transaction()
        for topic, doc in records:
            key = str(doc.get("deposit_id") or doc.get("request_id")).encode()
            await producer.send_and_wait(topic, orjson.dumps(doc), key=key)
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
    finally:
        await producer.stop()


@pytest.fixture
def tail_config(tmp_path: Path, kafka: KafkaService) -> Path:
    uid = uuid.uuid4().hex[:8]
    path = tmp_path / "tail.yaml"
    path.write_text(json.dumps({
        "kafka": {"bootstrap_servers": kafka.bootstrap_servers,
                  "topics": {"deposits": f"tail.{uid}.deposits", "withdrawals": f"tail.{uid}.withdrawals",
                             "address_registrations": f"tail.{uid}.reg", "dead_letter": f"tail.{uid}.dl",
                             "checkpoints": f"tail.{uid}.cp"}},
        "chains": {"eth": {"family": "evm", "chain_id": 31337,
                           "endpoints": [{"name": "a", "url": "http://127.0.0.1:1"}],
                           "native_asset": {"symbol": "ETH", "decimals": 18}}},
    }))
    asyncio.run(ensure_topics(load(path, environ={}).kafka))
    return path


def topics(path: Path) -> tuple[str, str]:
    cfg = load(path, environ={})
    return cfg.kafka.topics.deposits, cfg.kafka.topics.withdrawals


def run_tail(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "watcher.cli", "tail", "-c", str(path), *args],
                          capture_output=True, text=True, timeout=90, check=False,
                          env={k: v for k, v in os.environ.items() if not k.startswith("WATCHER__")})


def test_tail_shows_committed_events_only_with_filters(tail_config: Path, kafka: KafkaService) -> None:
    dep_topic, wd_topic = topics(tail_config)
    uid = uuid.uuid4().hex[:6]
    asyncio.run(produce_txn(kafka.bootstrap_servers, f"t-{uid}-1",
                            [(dep_topic, deposit("deposit.pending", 1, ALICE)), (wd_topic, WITHDRAWAL)]))
    asyncio.run(produce_txn(kafka.bootstrap_servers, f"t-{uid}-2",
                            [(dep_topic, deposit("deposit.confirmed", 2, ALICE, "999"))], commit=False))
    asyncio.run(produce_txn(kafka.bootstrap_servers, f"t-{uid}-3",
                            [(dep_topic, deposit("deposit.confirmed", 1, ALICE)),
                             (dep_topic, deposit("deposit.pending", 3, BOB))]))

    proc = run_tail(tail_config, "--from-beginning", "--limit", "4")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sorted(lines) == sorted([
        "2026-12-01T08:00:01.000Z eth deposit.pending       2 ETH to " + ALICE
        + " block 101 (0x00000000…) conf 1/3 id eth:0x01:tx",
        "2026-12-01T08:00:01.000Z eth deposit.confirmed     2 ETH to " + ALICE
        + " block 101 (0x00000000…) conf 1/3 id eth:0x01:tx",
        "2026-12-01T08:00:03.000Z eth deposit.pending       2 ETH to " + BOB
        + " block 103 (0x00000000…) conf 1/3 id eth:0x03:tx",
        "2026-12-01T08:00:05.000Z eth withdrawal.accepted   w-1 0.001 ETH to " + BOB,
    ])
    assert "999" not in proc.stdout  # the aborted transaction's record is never shown

    proc = run_tail(tail_config, "--from-beginning", "--limit", "1", "--json",
                    "--type", "deposit.confirmed", "--address", ALICE.lower())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == deposit("deposit.confirmed", 1, ALICE)

    proc = run_tail(tail_config, "--from-beginning", "--limit", "1", "--type", "withdrawal",
                    "--chain", "eth")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2026-12-01T08:00:05.000Z eth withdrawal.accepted")


def test_tail_follows_new_events_only_by_default(tail_config: Path, kafka: KafkaService) -> None:
    dep_topic, _ = topics(tail_config)
    uid = uuid.uuid4().hex[:6]
    asyncio.run(produce_txn(kafka.bootstrap_servers, f"t-{uid}-old",
                            [(dep_topic, deposit("deposit.pending", 4, ALICE))]))
    proc = subprocess.Popen([sys.executable, "-m", "watcher.cli", "tail", "-c", str(tail_config),
                             "--limit", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        ready = proc.stderr.readline()
        assert "from now on" in ready, ready
        asyncio.run(produce_txn(kafka.bootstrap_servers, f"t-{uid}-new",
                                [(dep_topic, deposit("deposit.confirmed", 5, BOB))]))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["2026-12-01T08:00:05.000Z eth deposit.confirmed     2 ETH to " + BOB
                                + " block 105 (0x00000000…) conf 1/3 id eth:0x05:tx"]
