"""Catch-up throughput of the watcher, against a replay server, anvil, and ethereum-etl.

Run (from the repository root; generates the chain once, ~minutes, then reuses it)::

    .venv/bin/python -m bench.catchup                 # replay server + anvil + ethereum-etl
    .venv/bin/python -m bench.catchup --skip-anvil --skip-etl

The watcher runs its real catch-up path: ``ChainFollower`` with the EVM adapter
(batched JSON-RPC, contents fetched by hash) and the Kafka transactional sink
(events and checkpoint in one transaction per batch) against a real Kafka broker
started for the run. The watcher is pinned to core 0; the replay server to core 1,
so the node is not the bottleneck. ethereum-etl's ``export_blocks_and_transactions``
runs against the same replay server, pinned to core 0 too, at its best settings.

Every run also checks its output: the deposits the watcher found must be exactly
the ones the generator recorded (``expected.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.chaingen import ensure_chain, load_meta, load_watched, start_anvil_from_data
from bench.replay_server import ReplayServer
from chains.evm.adapter import EvmAddressCodec, build_source
from watcher.config import parse
from watcher.core.addresses import AddressIndex
from watcher.kafka.client import ensure_topics
from watcher.kafka.sink import KafkaTransactionalSink
from watcher.runtime.follower import ChainFollower
from watcher.runtime.gc_tuning import tune_for_throughput


@dataclass(frozen=True)
class CatchUp:
    source: str
    blocks: int
    seconds: float
    deposits: int
    events: int
    max_rss_mb: float
    cpu_seconds: float

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.seconds

    @property
    def transfers_per_s(self) -> float:
        return self.deposits / self.seconds


def _config(url: str, bootstrap: str, meta: dict[str, Any], start: int, prefix: str,
            batch_size: int, concurrency: int, per_request: int) -> Any:
    return parse({
        "kafka": {"bootstrap_servers": bootstrap, "transactional_id_prefix": prefix,
                  "topics": {"deposits": f"{prefix}.deposits", "checkpoints": f"{prefix}.checkpoints",
                             "address_registrations": f"{prefix}.registrations",
                             "dead_letter": f"{prefix}.dead-letter", "withdrawals": f"{prefix}.withdrawals",
                             "withdrawal_requests": f"{prefix}.withdrawal-requests"}},
        "chains": {"eth": {
            "family": "evm", "chain_id": int(meta["chain_id"]),
            "endpoints": [{"name": "bench", "url": url}],
            "start_block": start, "reorg_window": 128, "finality": {"mode": "depth", "depth": 64},
            "poll_interval_ms": 100, "batch_size": batch_size, "max_concurrency": concurrency,
            "blocks_per_request": per_request,
            "rpc_timeout_ms": 60_000, "traces": "off",
            "native_asset": {"symbol": "ETH", "decimals": 18},
            "tokens": [{"contract": meta["token"], "symbol": "BENCH", "decimals": 18}],
            "confirmations": {"ETH": 12, "BENCH": 12},
        }},
    })


async def watcher_catch_up(name: str, url: str, bootstrap: str, meta: dict[str, Any],
                           watched: Sequence[str], start: int, end: int, batch_size: int,
                           concurrency: int, per_request: int = 2,
                           extra_watched: int = 0) -> tuple[CatchUp, set[str]]:
    prefix = f"bench-{name}-{os.getpid()}-{int(time.time())}"
    cfg = _config(url, bootstrap, meta, start, prefix, batch_size, concurrency, per_request)
    await ensure_topics(cfg.kafka, chains=list(cfg.chains))
    chain = cfg.chains["eth"]
    codec = EvmAddressCodec()
    index = AddressIndex(20)
    for a in watched:
        index.add(codec.parse(a)[1])
    rng = random.Random(5)
    for _ in range(extra_watched):   # addresses that never receive anything: only a bigger index
        index.add(rng.randbytes(20))
    source = build_source(chain)
    sink = KafkaTransactionalSink(cfg.kafka, f"{prefix}-eth", "eth")
    follower = ChainFollower(chain, source, sink, index, codec, cfg.kafka.topics.deposits)
    await follower.start()
    tune_for_throughput()   # as the daemon does once its indexes are loaded
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    while (follower.status.processed_height or -1) < end:
        await follower.step()
        if follower.status.halted_reason:
            raise RuntimeError(f"follower halted: {follower.status.halted_reason}")
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await follower.close()
    await sink.stop()
    await source.close()

    deposit_ids, events = await _read_deposits(cfg.kafka, cfg.kafka.topics.deposits)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return CatchUp(name, end - start + 1, seconds, len(deposit_ids), events, rss, cpu), deposit_ids


async def _read_deposits(kcfg: Any, topic: str) -> tuple[set[str], int]:
    from tests.support.kafka import read_all

    records = [r for r in await read_all(kcfg, topic, timeout_s=60) if r.value is not None]
    return {orjson.loads(r.value)["deposit_id"] for r in records if r.value}, len(records)


def expected_ids(directory: Path) -> set[str]:
    out = set()
    for d in json.loads((directory / "expected.json").read_text()):
        locator = "tx" if d["kind"] == "native" else f"log:{int(d['logIndex'])}"
        out.add(f"eth:{d['tx']}:{locator}")
    return out


def _pin(pid: int, cpu: int) -> None:
    subprocess.run(["taskset", "-a", "-cp", str(cpu), str(pid)], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=2000)
    ap.add_argument("--txs", type=int, default=170)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--blocks-per-request", type=int, default=2)
    ap.add_argument("--extra-watched", type=int, default=0,
                    help="random addresses added to the index (past 65,536 the set mirror is off)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is shown")
    ap.add_argument("--skip-anvil", action="store_true")
    ap.add_argument("--skip-etl", action="store_true")
    args = ap.parse_args(argv)

    directory = ensure_chain(args.blocks, args.txs)
    meta = load_meta(directory)
    watched = load_watched(directory)
    start, end = int(meta.get("first_payload_block", 1)), int(meta["head"])
    want = expected_ids(directory)
    from tests.support.services import ServiceManager

    results: list[CatchUp] = []
    replay_runs: list[CatchUp] = []
    etl_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as tmp:
        services = ServiceManager(Path(tmp))
        try:
            kafka = services.kafka()
            # The watcher alone on core 0; the node (replay server or anvil) and the broker share
            # core 1, so what is measured is the watcher's own throughput.
            kafka_pid = int((Path(tmp) / "run" / "kafka.pid").read_text().split()[0])
            _pin(kafka_pid, 1)
            os.sched_setaffinity(0, {0})
            with ReplayServer(directory, cpu=1) as replay:
                # This VM's speed varies run to run by +-20%: every figure is a median of
                # --repeat runs, ethereum-etl's too, with the range printed beside it.
                for _ in range(args.repeat):
                    res, ids = asyncio.run(watcher_catch_up(
                        "replay", replay.url, kafka.bootstrap_servers, meta, watched, start, end,
                        args.batch_size, args.concurrency, args.blocks_per_request,
                        args.extra_watched))
                    _check(res, ids, want)
                    replay_runs.append(res)
                if not args.skip_etl:
                    from bench.etl_baseline import run_etl_baseline

                    etl_rates = [run_etl_baseline(replay.url, start, end, cpu=0)
                                 for _ in range(args.repeat)]
            if not args.skip_anvil:
                with start_anvil_from_data(directory) as anvil:
                    _pin(anvil.proc.pid, 1)
                    res, ids = asyncio.run(watcher_catch_up("anvil", anvil.url, kafka.bootstrap_servers,
                                                            meta, watched, start, end, args.batch_size,
                                                            args.concurrency, args.blocks_per_request))
                    _check(res, ids, want)
                    results.append(res)
        finally:
            services.close()

    if replay_runs:
        rates = sorted(r.blocks_per_s for r in replay_runs)
        median = sorted(replay_runs, key=lambda r: r.blocks_per_s)[len(replay_runs) // 2]
        results.insert(0, median)
    print()
    print(f"catch-up over blocks {start}..{end} ({end - start + 1} blocks, "
          f"~{meta.get('txs_param', args.txs)} txs/block, {len(want)} deposits to 1,000 watched addresses)")
    print(f"settings: batch_size {args.batch_size}, max_concurrency {args.concurrency}, "
          f"blocks_per_request {args.blocks_per_request}; watcher on core 0, node and Kafka on core 1; "
          f"index of {len(watched) + args.extra_watched:,} addresses")
    print(f"{'served by':<14}{'blocks/s':>10}{'transfers/s':>13}{'events':>9}{'seconds':>9}"
          f"{'CPU busy':>10}{'max RSS MB':>12}")
    for r in results:
        print(f"{r.source:<14}{r.blocks_per_s:>10.0f}{r.transfers_per_s:>13.0f}{r.events:>9}"
              f"{r.seconds:>9.1f}{r.cpu_seconds / r.seconds:>10.0%}{r.max_rss_mb:>12.0f}")
    if replay_runs:
        print(f"replay runs (blocks/s): {', '.join(f'{x:.0f}' for x in rates)} -> median shown")
    if etl_rates:
        etl = sorted(etl_rates)[len(etl_rates) // 2]
        print(f"{'ethereum-etl':<14}{etl:>10.0f}   export_blocks_and_transactions on the replay server, "
              f"core 0; runs: {', '.join(f'{x:.0f}' for x in sorted(etl_rates))}")
        print(f"watcher / ethereum-etl (medians): {results[0].blocks_per_s / etl:.1f}x")
    return 0


def _check(res: CatchUp, ids: set[str], want: set[str]) -> None:
    missing, extra = want - ids, ids - want
    if missing or extra:
        raise SystemExit(f"{res.source}: deposits differ from the recorded chain: "
                         f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                         f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})")


if __name__ == "__main__":
    raise SystemExit(main())
