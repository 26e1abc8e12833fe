"""CPU per block of the scan worker's path, in one process: ``_scan_range`` + ``_succeeded``
over the recorded chain against the replay server, then the reply pickled and unpickled as
it crosses the pipe to the daemon, then the daemon's ``transfers`` of each block.

Run (from the repository root; uses the recorded benchmark chain)::

    .venv/bin/python -m bench.scan_cpu [--range 100] [--repeat 3] [--profile OUT.pstats]

Ranges of ``--range`` blocks (the daemon's batch of 200 shared by two workers), each with
the bench's settings (2 blocks a POST, 4 at a time, token logs, bloom check). Prints the
median CPU milliseconds per block of each step (process time, this process only: the
replay server runs elsewhere; pin it with ``--server-cpu``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pickle
import statistics
import time
from collections.abc import Sequence

from bench.chaingen import chain_dir, iter_corpus, load_meta, load_watched
from bench.replay_server import ReplayServer
from chains.evm import parse, scanworker
from chains.evm.adapter import ScanPlan
from chains.evm.rpc import EvmRpcClient
from watcher.config import Endpoint
from watcher.runtime.gc_tuning import tune_for_throughput
from watcher.types import AssetSymbol, BlockContents, BlockHash, BlockRef

STEPS = ("scan", "succeeded", "pickle", "unpickle", "transfers", "old pickle", "old unpickle",
         "old transfers", "txs freed")
"""pickle: packing the reply (the worker's side); unpickle and transfers: the daemon's; txs
freed: dropping the decoded transactions, which both formats pay (not in the pickle steps)."""


def _refs() -> list[BlockRef]:
    meta = load_meta(chain_dir())
    first = int(meta.get("first_payload_block", 1))
    out = []
    for rec in iter_corpus(chain_dir()):
        block = rec["block"]
        n = int(block["number"], 16)
        if n >= first:
            out.append(BlockRef(n, BlockHash(block["hash"]), BlockHash(block["parentHash"]),
                                int(block["timestamp"], 16)))
    return out


async def _run(url: str, refs: Sequence[BlockRef], size: int, profile: cProfile.Profile | None
               ) -> dict[str, float]:
    meta = load_meta(chain_dir())
    token = str(meta["token"]).lower()
    assets = parse.Assets(AssetSymbol("ETH"), 18, {token: parse.TokenMeta(
        parse.address(token, "token"), AssetSymbol("BENCH"), 18)})
    plan = ScanPlan(assets, (token,), False, True)
    init = scanworker.WorkerInit("eth", int(meta["chain_id"]), (("replay", url),), 60.0, 8, 2, 4,
                                 20)
    keys = scanworker._keys_from(b"".join(bytes.fromhex(a[2:])
                                          for a in load_watched(chain_dir())), 20)
    client = EvmRpcClient("eth", Endpoint("replay", url), chain_id=init.chain_id, timeout_s=60,
                          connections=8)
    cpu = dict.fromkeys(STEPS, 0.0)
    found = legacy_found = 0
    try:
        for i in range(0, len(refs), size):
            part = list(refs[i:i + size])
            if profile is not None:
                profile.enable()
            t0 = time.process_time()
            scanned, doubtful = await scanworker._scan_range(client, init, plan, part, keys)
            t1 = time.process_time()
            succeeded = await scanworker._succeeded(client, init, scanned)
            t2 = time.process_time()
            reply = scanworker._ok_reply(1, 1, scanned, doubtful, succeeded, [])
            blob = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            t3 = time.process_time()
            _, blocks, ok, _ = scanworker._ok_result(pickle.loads(blob))
            t4 = time.process_time()
            for b in blocks:
                found += len(b.transfers if isinstance(b, BlockContents) else b.transfers(ok))
            t5 = time.process_time()
            # The reply as it was before (ScannedBlock dataclasses, settled in the daemon).
            doubtful_ids = {id(d) for d in doubtful}
            flags = [id(s) in doubtful_ids for s in scanned]
            t55 = time.process_time()
            for s, keep in zip(scanned, flags, strict=True):
                if not keep:
                    s.txs = []  # freed in both formats: before the reply then, after it now
            t56 = time.process_time()
            old = pickle.dumps(("ok", 1, 1, scanned, flags, succeeded, []),
                               protocol=pickle.HIGHEST_PROTOCOL)
            t6 = time.process_time()
            _, _, _, back, flags, ok, _ = pickle.loads(old)
            t7 = time.process_time()
            for b in back:
                legacy_found += len(b.transfers(ok))
            t8 = time.process_time()
            cpu["old pickle"] += (t6 - t5) - (t56 - t55)
            cpu["txs freed"] += t56 - t55
            cpu["old unpickle"] += t7 - t6
            cpu["old transfers"] += t8 - t7
            if profile is not None:
                profile.disable()
            cpu["scan"] += t1 - t0
            cpu["succeeded"] += t2 - t1
            cpu["pickle"] += t3 - t2
            cpu["unpickle"] += t4 - t3
            cpu["transfers"] += t5 - t4
    finally:
        await client.close()
    cpu["transfers found"] = found
    cpu["legacy found"] = legacy_found
    return cpu


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--range", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--blocks", type=int, default=0, help="0: all recorded blocks")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--url", default=None, help="a replay server already running")
    ap.add_argument("--gc", choices=("default", "tuned"), default="tuned",
                    help="the worker's collector settings: the interpreter's, or the daemon's")
    args = ap.parse_args(argv)
    refs = _refs()
    if args.gc == "tuned":
        tune_for_throughput()
    if args.blocks:
        refs = refs[:args.blocks]
    runs: list[dict[str, float]] = []
    collected = {"seconds": 0.0, "runs": 0, "started": 0.0}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collected["started"] = time.process_time()
        else:
            collected["seconds"] += time.process_time() - collected["started"]
            collected["runs"] += 1

    gc.callbacks.append(on_gc)
    profile = cProfile.Profile() if args.profile else None
    if args.url:
        for _ in range(args.repeat):
            runs.append(asyncio.run(_run(args.url, refs, args.range, profile)))
    else:
        with ReplayServer(chain_dir(), cpu=args.server_cpu) as replay:
            for _ in range(args.repeat):
                runs.append(asyncio.run(_run(replay.url, refs, args.range, profile)))
    if profile is not None:
        profile.dump_stats(args.profile)
    n = len(refs)
    print(f"{n} blocks, ranges of {args.range}, {args.repeat} runs; "
          f"{int(runs[0]['transfers found'])} transfers")
    total = []
    assert all(r["transfers found"] == r["legacy found"] for r in runs)
    for key in STEPS:
        values = [r[key] / n * 1000 for r in runs]
        print(f"  {key:<10} {statistics.median(values):.3f} ms/block "
              f"(runs {min(values):.3f}-{max(values):.3f})")
    for r in runs:
        total.append(sum(r[k] for k in ("scan", "succeeded", "pickle")) / n * 1000)
    print(f"  worker total (scan+succeeded+pickle) {statistics.median(total):.3f} ms/block")
    print(f"  cyclic collector ({args.gc}): {collected['runs']} runs, "
          f"{collected['seconds'] / n / args.repeat * 1000:.3f} ms/block")
    print("  (old: the reply as ScannedBlock dataclasses, settled in the daemon)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
