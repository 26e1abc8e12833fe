"""Withdrawal throughput and request-to-broadcast latency on the local stack.

Run (from the repository root)::

    .venv/bin/python -m bench.withdrawals [--samples 100] [--burst 300] [--poll-ms 100]

Starts a real Kafka broker and anvil (automine), runs the watcher daemon as a subprocess
(``watcher run``) with withdrawals on for ETH, funds a fresh hot wallet, then

* latency: sends one signed request at a time and measures from the producer's
  acknowledgement to a ``read_committed`` consumer receiving its ``withdrawal.broadcast``;
* sustained: produces ``--burst`` requests at once and measures from the first send to
  the last ``withdrawal.broadcast`` (and to the last ``withdrawal.confirmed``).

Prints p50/p99/max latency and withdrawals per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from eth_keys.datatypes import PrivateKey
from nacl.signing import SigningKey

from bench.latency import _wait_ready, pct, rpc

SENDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
REQUESTER = SigningKey(bytes(range(32)))
HOT_KEY = hashlib.sha256(b"bench withdrawals hot wallet").hexdigest()
HOT_ADDRESS = PrivateKey(bytes.fromhex(HOT_KEY)).public_key.to_checksum_address()
TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def request(rid: str) -> bytes:
    body = {"request_id": rid, "chain": "eth", "asset": "ETH", "to_address": TO, "amount": "1000"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    sig = base64.b64encode(REQUESTER.sign(canonical).signature).decode()
    return json.dumps({**body, "signature": sig}).encode()


async def _wait_types(consumer: AIOKafkaConsumer, wanted: dict[str, set[str]],
                      seen_at: dict[tuple[str, str], float], timeout_s: float) -> None:
    """Consumes until every (type, request id) of ``wanted`` was seen, noting when."""
    deadline = time.monotonic() + timeout_s
    while any(wanted.values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; still missing {sum(map(len, wanted.values()))} events")
        batch = await consumer.getmany(timeout_ms=200)
        now = time.perf_counter()
        for records in batch.values():
            for r in records:
                ev = orjson.loads(r.value)
                pending = wanted.get(ev["type"])
                if pending is not None and ev["request_id"] in pending:
                    pending.discard(ev["request_id"])
                    seen_at[(ev["type"], ev["request_id"])] = now


async def measure(bootstrap: str, requests_topic: str, events_topic: str, samples: int,
                  burst: int) -> tuple[list[float], float, float]:
    consumer = AIOKafkaConsumer(events_topic, bootstrap_servers=bootstrap,
                                isolation_level="read_committed", auto_offset_reset="earliest",
                                enable_auto_commit=False, fetch_max_wait_ms=5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    seen: dict[tuple[str, str], float] = {}
    try:
        latencies: list[float] = []
        for i in range(samples):
            rid = f"lat-{os.getpid()}-{i}"
            await producer.send_and_wait(requests_topic, request(rid), key=rid.encode())
            sent = time.perf_counter()
            await _wait_types(consumer, {"withdrawal.broadcast": {rid}}, seen, 30)
            latencies.append(seen[("withdrawal.broadcast", rid)] - sent)
        ids = [f"burst-{os.getpid()}-{i}" for i in range(burst)]
        start = time.perf_counter()
        futures = [await producer.send(requests_topic, request(rid), key=rid.encode()) for rid in ids]
        await asyncio.gather(*futures)
        await _wait_types(consumer, {"withdrawal.broadcast": set(ids), "withdrawal.confirmed": set(ids)},
                          seen, 600)
        last_broadcast = max(seen[("withdrawal.broadcast", r)] for r in ids) - start
        last_confirmed = max(seen[("withdrawal.confirmed", r)] for r in ids) - start
        return latencies, last_broadcast, last_confirmed
    finally:
        await producer.stop()
        await consumer.stop()


async def fund(anvil_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        await rpc(session, anvil_url, "eth_sendTransaction",
                  {"from": SENDER, "to": HOT_ADDRESS, "value": hex(1000 * 10**18)})


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        await admin.close()


def config(prefix: str, bootstrap: str, anvil_url: str, port: int, poll_ms: int) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap, "transactional_id_prefix": prefix,
                  "topics": {"deposits": f"{prefix}.deposits", "checkpoints": f"{prefix}.checkpoints",
                             "address_registrations": f"{prefix}.registrations",
                             "withdrawals": f"{prefix}.withdrawals",
                             "withdrawal_requests": f"{prefix}.withdrawal-requests",
                             "dead_letter": f"{prefix}.dead-letter"}},
        "metrics": {"port": port},
        "logging": {"level": "warning"},
        "chains": {"eth": {
            "family": "evm", "chain_id": 31337,
            "endpoints": [{"name": "anvil", "url": anvil_url}],
            "poll_interval_ms": poll_ms, "start_block": "latest", "reorg_window": 32,
            "finality": {"mode": "depth", "depth": 16},
            "native_asset": {"symbol": "ETH", "decimals": 18},
            "confirmations": {"ETH": 1},
        }},
        "withdrawals": {
            "requesters": {"ledger": base64.b64encode(bytes(REQUESTER.verify_key)).decode()},
            "chains": {"eth": {"confirmations": 1, "max_fee_per_gas": "300000000000",
                               "max_priority_fee_per_gas": "3000000000",
                               "hot_key": {"env": "BENCH_HOT_KEY"},
                               "assets": {"ETH": {"per_request_limit": "1000000",
                                                  "daily_limit": str(10**18)}}}},
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--burst", type=int, default=300)
    ap.add_argument("--poll-ms", type=int, default=100)
    args = ap.parse_args(argv)
    from tests.support.services import ServiceManager

    with tempfile.TemporaryDirectory(prefix="bench-withdrawals-") as tmp:
        tmpd = Path(tmp)
        services = ServiceManager(tmpd / "svc")
        try:
            kafka = services.kafka()
            anvil = services.anvil()
            port = services.free_port()
            prefix = f"bench-withdrawals-{os.getpid()}"
            asyncio.run(fund(anvil.url))
            asyncio.run(create_topic(kafka.bootstrap_servers, f"{prefix}.withdrawal-requests"))
            (tmpd / "watcher.yaml").write_text(yaml.safe_dump(
                config(prefix, kafka.bootstrap_servers, anvil.url, port, args.poll_ms)))
            log = tmpd / "watcher.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "watcher.cli", "run", "-c",
                                         str(tmpd / "watcher.yaml")], stdout=out, stderr=out,
                                        env={**os.environ, "BENCH_HOT_KEY": HOT_KEY})
            try:
                _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
                lat, broadcast_s, confirmed_s = asyncio.run(measure(
                    kafka.bootstrap_servers, f"{prefix}.withdrawal-requests",
                    f"{prefix}.withdrawals", args.samples, args.burst))
            finally:
                proc.terminate()
                proc.wait(20)
        finally:
            services.close()
    ms = [x * 1000 for x in lat]
    print(f"request acknowledged -> withdrawal.broadcast committed and consumed, {len(ms)} samples "
          f"one at a time, poll interval {args.poll_ms} ms:")
    print(f"  p50 {pct(ms, 50):.0f} ms   p99 {pct(ms, 99):.0f} ms   max {max(ms):.0f} ms")
    print(f"burst of {args.burst}: all broadcast in {broadcast_s:.1f} s "
          f"({args.burst / broadcast_s:.1f} withdrawals/s), all confirmed in {confirmed_s:.1f} s "
          f"({args.burst / confirmed_s:.1f} withdrawals/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
