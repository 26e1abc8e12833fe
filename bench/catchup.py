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
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.chaingen import ensure_chain, load_meta, load_watched, start_anvil_from_data
from bench.e2e import EndToEnd, process_cpu, run_end_to_end
from bench.replay_server import ReplayServer
from chains.evm.adapter import EvmAddressCodec, EvmChainSource
from watcher.config import parse
from watcher.core.addresses import AddressIndex
from watcher.kafka.client import ensure_topics
from watcher.kafka.sink import KafkaTransactionalSink
from watcher.runtime.follower import ChainFollower
from watcher.runtime.gc_tuning import tune_for_throughput

WARMUP_RUNS = 4
"""Untimed end-to-end runs that warm the broker before the timed rounds."""


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
                           extra_watched: int = 0, *, check_bloom: bool = True
                           ) -> tuple[CatchUp, set[str]]:
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
    source = EvmChainSource(chain, check_bloom=check_bloom)
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


@dataclass(frozen=True)
class Figure:
    """Runs of one tool under one pinning: the median and the range are printed."""

    key: str
    """(tool, pinning) for the ratios: watcher-1, watcher-2, cryo-1, cryo-2, etl-1, etl-2, ..."""
    tool: str
    pinning: str
    rates: tuple[float, ...]
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.rates)

    def line(self) -> str:
        lo, hi = min(self.rates), max(self.rates)
        runs = f"{lo:,.0f}-{hi:,.0f}" if len(self.rates) > 1 else "1 run"
        return (f"{self.median:>8,.0f}  {runs + f', n={len(self.rates)}':<18}{self.pinning:<20}"
                f"{self.tool}{'; ' + self.note if self.note else ''}")


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
    ap.add_argument("--skip-cryo", action="store_true")
    ap.add_argument("--skip-steady", action="store_true",
                    help="leave out the in-process steady rate and the bloom on/off pair")
    ap.add_argument("--retune", action="store_true",
                    help="tune ethereum-etl and cryo again even when a tuning is cached")
    args = ap.parse_args(argv)

    directory = ensure_chain(args.blocks, args.txs)
    meta = load_meta(directory)
    watched = load_watched(directory)
    start, end = int(meta.get("first_payload_block", 1)), int(meta["head"])
    want = expected_ids(directory)
    from tests.support.services import ServiceManager

    figures: list[Figure] = []
    anvil_result: CatchUp | None = None
    steady: dict[bool, list[CatchUp]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="bench-catchup-") as tmp:
        services = ServiceManager(Path(tmp))
        try:
            kafka = services.kafka()
            # The node (replay server or anvil) and the broker on core 1. A tool "on core 0"
            # has core 0 to itself; "unpinned" may use both cores, sharing core 1 with them.
            kafka_pid = int((Path(tmp) / "run" / "kafka.pid").read_text().split()[0])
            _pin(kafka_pid, 1)
            with ReplayServer(directory, cpu=1) as replay:
                # The peers' tunings first (cached after the first use).
                from bench import cryo_peer, etl_baseline

                use_cryo, use_etl = not args.skip_cryo, not args.skip_etl
                if use_cryo:
                    cryo_peer.ensure_cryo_venv()
                    if args.retune or not (cryo_peer.DATA_ROOT / "cryo-best.json").exists():
                        cryo_peer.tune(replay.url, start, end, str(meta["token"]))
                if use_etl:
                    best_path = etl_baseline.DATA_ROOT / "etl-best.json"
                    if args.retune or not best_path.exists():
                        etl_baseline.tune(replay.url, start, min(end, start + 399), cpu=0)
                # This VM's speed varies minute to minute (it is shared): every figure is a
                # median of --repeat runs with the range beside it, and each round runs every
                # tool once, so that all tools see the same minutes (a ratio of runs taken
                # minutes apart measured the load more than the tools).
                runs: dict[str, list[float]] = {}
                cpu_busy: list[float] = []
                budgets: list[EndToEnd] = []
                pinnings: tuple[tuple[str, list[int] | None], ...] = (("unpinned", None),
                                                                      ("core 0", [0]))
                # Untimed watcher runs first: a fresh broker's JIT compilers took ~4 s of CPU
                # in the first run, ~1 s in the second and third and ~0.4 s from the fifth
                # (measured per broker thread, 2026-12-01; the broker's CPU per run 4.0, 2.1,
                # 1.7, 1.8, 1.3, 1.3, 1.1 s), on the cores the timed tools share. A broker in
                # service has been running for days.
                for _ in range(WARMUP_RUNS):
                    run_end_to_end(replay.url, kafka.bootstrap_servers, directory, label="warmup")
                probes = {"broker": process_cpu(kafka_pid), "replay": process_cpu(replay.pid)}
                for _ in range(args.repeat):
                    for pin, cpus in pinnings:
                        res, problems = run_end_to_end(replay.url, kafka.bootstrap_servers, directory,
                                                       cpus=cpus, label=pin.replace(" ", ""),
                                                       cpu_probes=probes)
                        if problems:
                            raise SystemExit("watcher end to end: output differs from the record:\n  "
                                             + "\n  ".join(problems[:20]))
                        runs.setdefault(f"watcher {pin}", []).append(res.blocks_per_s)
                        if cpus is None:
                            cpu_busy.append(res.cpu_seconds / res.seconds)
                            budgets.append(res)
                        if use_cryo:
                            runs.setdefault(f"cryo {pin}", []).append(cryo_peer.run_cryo(
                                replay.url, start, end, str(meta["token"]), cpus=cpus).blocks_per_s)
                        if use_etl:
                            runs.setdefault(f"etl {pin}", []).append(etl_baseline.run_etl_baseline(
                                replay.url, start, end, cpu=cpus[0] if cpus else None))
                checked = (f"all {len(want):,} deposits match the record field by field "
                           "(id, amount, address, token, block, block hash)")
                figures.append(Figure("watcher-2", "watcher end to end (`watcher run`, start to last commit)",
                                      "unpinned (2 cores)", tuple(runs["watcher unpinned"]),
                                      f"CPU {statistics.median(cpu_busy):.0%} of one core; " + checked))
                figures.append(Figure("watcher-1", "watcher end to end", "core 0 (1 core)",
                                      tuple(runs["watcher core 0"])))
                if use_cryo:
                    c, k = cryo_peer.best_settings()
                    what = (f"cryo {cryo_peer.CRYO_VERSION} (blocks+txs+filtered logs, no receipts; "
                            f"{c} requests, chunk {k})")
                    figures.append(Figure("cryo-2", what, "unpinned (2 cores)", tuple(runs["cryo unpinned"]),
                                          "process start to exit"))
                    figures.append(Figure("cryo-1", "cryo, same", "core 0 (1 core)",
                                          tuple(runs["cryo core 0"])))
                if use_etl:
                    best = etl_baseline.best_settings()
                    best_path = etl_baseline.DATA_ROOT / "etl-best.json"
                    tuned_at = time.strftime("%Y-%m-%d", time.gmtime(best_path.stat().st_mtime))
                    what = (f"ethereum-etl {etl_baseline.ETL_VERSION} tuned ({best.flavor}, batch "
                            f"{best.batch_size}, {best.max_workers} workers; tuned {tuned_at})")
                    figures.append(Figure("etl-1", what, "core 0 (1 core)", tuple(runs["etl core 0"]),
                                          "its own logged time (start-up left out)"))
                    figures.append(Figure("etl-2", "ethereum-etl tuned", "unpinned (2 cores)",
                                          tuple(runs["etl unpinned"])))
                if not args.skip_steady:
                    for _ in range(args.repeat):
                        for bloom in (True, False):
                            run, ids = asyncio.run(watcher_catch_up(
                                "replay", replay.url, kafka.bootstrap_servers, meta, watched, start, end,
                                args.batch_size, args.concurrency, args.blocks_per_request,
                                args.extra_watched, check_bloom=bloom))
                            _check(run, ids, want)
                            steady[bloom].append(run)
                    on = tuple(r.blocks_per_s for r in steady[True])
                    off = tuple(r.blocks_per_s for r in steady[False])
                    ratio = statistics.median(on) / statistics.median(off)
                    figures.append(Figure("steady-on", "watcher steady rate (in process, start-up excluded)",
                                          "unpinned (2 cores)", on, "every answer check on"))
                    figures.append(Figure("steady-off",
                                          "  same, bloom check off (#6: what verification costs)",
                                          "unpinned (2 cores)", off,
                                          f"checks on / off: {ratio:.2f} (#6 target >= 0.90; "
                                          "below the run-to-run noise when the ranges overlap)"))
            if not args.skip_anvil:
                with start_anvil_from_data(directory) as anvil:
                    _pin(anvil.proc.pid, 1)
                    anvil_result, ids = asyncio.run(watcher_catch_up(
                        "anvil", anvil.url, kafka.bootstrap_servers, meta, watched, start, end,
                        args.batch_size, args.concurrency, args.blocks_per_request))
                    _check(anvil_result, ids, want)
        finally:
            services.close()

    print()
    print(f"catch-up over blocks {start}..{end} ({end - start + 1} blocks, "
          f"~{meta.get('txs_param', args.txs)} txs/block, {len(want):,} deposits to "
          f"{len(watched) + args.extra_watched:,} watched addresses), served from memory by the "
          f"replay server; the server and Kafka pinned to core 1; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"watcher settings: batch_size {args.batch_size}, max_concurrency {args.concurrency}, "
          f"blocks_per_request {args.blocks_per_request}; each of the {args.repeat} rounds ran every "
          "tool once (watcher, cryo, ethereum-etl; unpinned, then on core 0); "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"{'blocks/s':>8}  {'(range, runs)':<18}{'pinning':<20}tool")
    for f in figures:
        print(f.line())
    by = {f.key: f.median for f in figures}
    w, w1 = by.get("watcher-2"), by.get("watcher-1")
    cryo_u, cryo_1, etl_1 = by.get("cryo-2"), by.get("cryo-1"), by.get("etl-1")
    # ethereum-etl at its best: the faster of its two pinnings (its tuned setting is one
    # worker, so pinning only moves it by the noise), never the slower one.
    etl_runs = [(by[k], pin) for k, pin in (("etl-1", "core 0"), ("etl-2", "unpinned")) if by.get(k)]
    etl_best = max(etl_runs) if etl_runs else None
    print("ratios (medians, this run):")
    if w and cryo_u:
        print(f"  watcher end to end unpinned / cryo unpinned                  {w / cryo_u:5.2f}x")
    if w1 and cryo_1:
        print(f"  watcher end to end core 0 / cryo core 0                      {w1 / cryo_1:5.2f}x")
    if w and etl_best:
        print(f"  watcher end to end unpinned / ethereum-etl tuned, its best "
              f"({etl_best[1]}) {w / etl_best[0]:5.2f}x")
    if w1 and etl_1:
        print(f"  watcher end to end core 0 / ethereum-etl tuned core 0       {w1 / etl_1:5.2f}x "
              "(both one core)")
    if budgets:
        print(cpu_budget(budgets))
    if anvil_result is not None:
        print(f"watcher served by anvil (in process): {anvil_result.blocks_per_s:.0f} blocks/s "
              f"(anvil-bound; watcher CPU {anvil_result.cpu_seconds / anvil_result.seconds:.0%})")
    return 0


def cpu_budget(runs: Sequence[EndToEnd]) -> str:
    """Where the two cores' time went in the unpinned end-to-end runs (medians): the watcher
    (its daemon and scan workers), the broker and the replay server, against 2 x the wall
    time; and what 2,000 blocks/s would leave (the broker's and the server's CPU as
    measured): why the absolute rate is this machine's, not only the watcher's."""
    med = statistics.median
    wall = med(r.seconds for r in runs)
    watcher = med(r.cpu_seconds for r in runs)
    broker = med(r.others_cpu.get("broker", 0.0) for r in runs)
    replay = med(r.others_cpu.get("replay", 0.0) for r in runs)
    blocks = runs[0].blocks
    at_2000 = 2 * blocks / 2000
    return (f"CPU of an unpinned watcher run (medians of {len(runs)}): watcher {watcher:.2f} s "
            f"(daemon + scan workers, start to exit), Kafka broker {broker:.2f} s, replay server "
            f"{replay:.2f} s (start to last commit), = {watcher + broker + replay:.2f} s of the two "
            f"cores' {2 * wall:.2f} s (2 x {wall:.2f} s wall). At 2,000 blocks/s the run would have "
            f"{at_2000:.2f} s of both cores, {at_2000 - broker - replay:.2f} s of it left to the "
            f"watcher after the broker and the server ({blocks / (watcher + broker + replay) * 2:,.0f} "
            "blocks/s is where this run's CPU caps it on 2 cores)")


def _check(res: CatchUp, ids: set[str], want: set[str]) -> None:
    missing, extra = want - ids, ids - want
    if missing or extra:
        raise SystemExit(f"{res.source}: deposits differ from the recorded chain: "
                         f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), "
                         f"{len(extra)} unexpected (e.g. {sorted(extra)[:3]})")


if __name__ == "__main__":
    raise SystemExit(main())
