"""Steady-state latency from a mined block to its deposit event committed in Kafka.

Run (from the repository root)::

    .venv/bin/python -m bench.latency [--samples 200] [--poll-ms 100]

Starts a real Kafka broker and anvil (manual mining), runs the watcher daemon as a
subprocess (``watcher run``) with the given poll interval, then repeatedly sends a
deposit to a watched address, mines its block with ``evm_mine`` and measures the
time from ``evm_mine`` returning to a ``read_committed`` consumer receiving the
``deposit.pending`` event. Blocks come at random 0.2-0.6 s intervals so they fall
at every phase of the poll cycle. Prints p50/p90/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
import yaml
from aiokafka import AIOKafkaConsumer

from bench.proc import cpu_seconds

WATCHED = "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720"
SENDER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


async def rpc(session: aiohttp.ClientSession, url: str, method: str, *params: object) -> object:
    async with session.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method,
                                       "params": list(params)}) as resp:
        body = orjson.loads(await resp.read())
    if "error" in body:
        raise RuntimeError(f"{method}: {body['error']}")
    return body["result"]


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"watcher exited ({proc.returncode}); log {log}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"watcher not ready after {timeout}s; log {log}")


async def measure(anvil_url: str, bootstrap: str, topic: str, samples: int) -> list[float]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, isolation_level="read_committed",
                                auto_offset_reset="latest", enable_auto_commit=False,
                                fetch_max_wait_ms=5)
    await consumer.start()
    latencies: list[float] = []
    rng = random.Random(7)
    try:
        await consumer.getmany(timeout_ms=500)   # join and position at the end
        async with aiohttp.ClientSession() as session:
            for i in range(samples):
                txid = await rpc(session, anvil_url, "eth_sendTransaction",
                                 {"from": SENDER, "to": WATCHED, "value": hex(10**15 + i)})
                await rpc(session, anvil_url, "evm_mine")
                mined = time.perf_counter()
                got = None
                while got is None:
                    batch = await consumer.getmany(timeout_ms=5000)
                    if not batch:
                        raise RuntimeError(f"no event within 5 s for sample {i} ({txid})")
                    for records in batch.values():
                        for r in records:
                            ev = orjson.loads(r.value)
                            if ev["txid"] == txid and ev["type"] == "deposit.pending":
                                got = time.perf_counter()
                latencies.append(got - mined)
                await asyncio.sleep(rng.uniform(0.2, 0.6))
    finally:
        await consumer.stop()
    return latencies


def pct(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--poll-ms", type=int, default=100)
    args = ap.parse_args(argv)
    from tests.support.services import ServiceManager

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        tmpd = Path(tmp)
        services = ServiceManager(tmpd / "svc")
        try:
            kafka = services.kafka()
            anvil = services.anvil(extra_args=("--no-mining",))
            port = services.free_port()
            prefix = f"bench-latency-{os.getpid()}"
            (tmpd / "addresses.yaml").write_text(yaml.safe_dump({"eth": [WATCHED]}))
            cfg = {
                "kafka": {"bootstrap_servers": kafka.bootstrap_servers, "transactional_id_prefix": prefix,
                          "topics": {"deposits": f"{prefix}.deposits", "checkpoints": f"{prefix}.checkpoints",
                                     "address_registrations": f"{prefix}.registrations"}},
                "metrics": {"port": port},
                "logging": {"level": "warning"},
                "addresses_file": "addresses.yaml",
                "chains": {"eth": {
                    "family": "evm", "chain_id": 31337,
                    "endpoints": [{"name": "anvil", "url": anvil.url}],
                    "poll_interval_ms": args.poll_ms, "start_block": "latest", "reorg_window": 32,
                    "finality": {"mode": "depth", "depth": 16},
                    "native_asset": {"symbol": "ETH", "decimals": 18},
                    "confirmations": {"ETH": 3},
                }},
            }
            (tmpd / "watcher.yaml").write_text(yaml.safe_dump(cfg))
            log = tmpd / "watcher.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([sys.executable, "-m", "watcher.cli", "run", "-c",
                                         str(tmpd / "watcher.yaml")], stdout=out, stderr=out)
            try:
                _wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
                cpu0, t0 = cpu_seconds(proc.pid, children=True), time.perf_counter()
                lat = asyncio.run(measure(anvil.url, kafka.bootstrap_servers, f"{prefix}.deposits",
                                          args.samples))
                cpu, wall = cpu_seconds(proc.pid, children=True) - cpu0, time.perf_counter() - t0
            finally:
                proc.terminate()
                proc.wait(20)
        finally:
            services.close()
    ms = [x * 1000 for x in lat]
    print(f"block mined -> deposit.pending committed and consumed, {len(ms)} samples, "
          f"poll interval {args.poll_ms} ms:")
    print(f"  p50 {pct(ms, 50):.0f} ms   p90 {pct(ms, 90):.0f} ms   p99 {pct(ms, 99):.0f} ms   "
          f"max {max(ms):.0f} ms")
    print(f"  watcher CPU while following (its process and any child): {cpu:.2f} s over "
          f"{wall:.1f} s = {cpu / wall:.1%} of one core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
