"""cryo 0.3.2 (paradigmxyz; Rust, the PyPI wheel) as a peer: the same blocks from the same server.

Run (from the repository root; a replay server must be serving)::

    .venv/bin/python -m bench.cryo_peer --rpc http://127.0.0.1:8600 --start 3 --end 2002 [--cpus 0]
    .venv/bin/python -m bench.cryo_peer --rpc URL --start 3 --end 2002 --tune

The work asked of cryo is the closest to the watcher's: ``blocks``, ``transactions``
and ``logs`` filtered to the token contract and the ``Transfer`` topic (the watcher's
``eth_getLogs`` filter), no receipts (the transaction columns that need a receipt,
``gas_used`` and ``success``, are excluded), written as parquet to a temporary
directory. The watcher does more: checks every answer, keeps the deposit lifecycle,
fetches receipts for native deposits and commits to Kafka.

Timed from process start (``python -c 'import cryo; cryo.freeze(...)'``) to its exit,
as the watcher is. cryo lives in its own venv, ``bench/.data/cryo-venv`` (created on
first use, marker ``.ready``), never in the project's. ``--tune`` tries a grid of
``max_concurrent_requests`` x ``chunk_size`` and caches the best in
``bench/.data/cryo-best.json``; without a cache, the constants below (the best of a
tuning run on the 2-core development machine, 2026-12-01) are used.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DATA_ROOT = BENCH_DIR / ".data"
CRYO_VERSION = "0.3.2"
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
RECEIPT_COLUMNS = ("gas_used", "success")
"""Transaction columns cryo can only fill from receipts: left out, so none are fetched."""

BEST_CONCURRENCY = 16
BEST_CHUNK_SIZE = 100
TUNE_GRID: tuple[tuple[int, int], ...] = ((16, 100), (16, 50), (32, 50), (16, 25), (32, 25), (64, 25),
                                          (16, 10), (32, 10), (64, 10))
"""(max_concurrent_requests, chunk_size); smaller chunks won on the first tuning (more
chunks in flight), so the grid goes down to 10 blocks a chunk."""

_SCRIPT = """
import sys, os, json, cryo
a = json.loads(sys.argv[1])
cryo.freeze(["blocks", "transactions", "logs"], rpc=a["rpc"], start_block=a["start"],
            end_block=a["end"], output_dir=a["out"], contract=a["contract"], topic0=a["topic0"],
            exclude_columns=a["exclude"], max_concurrent_requests=a["concurrency"],
            chunk_size=a["chunk"], verbose=False, hex=True)
sys.stdout.flush()
# cryo 0.3.2's Rust runtime can abort in interpreter finalization (PyGILState_Release) once
# its work is done and written: leave without finalizing.
os._exit(0)
"""


@dataclass(frozen=True)
class CryoRun:
    blocks: int
    seconds: float
    concurrency: int
    chunk_size: int
    pinned: str

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.seconds


def ensure_cryo_venv(data_root: Path = DATA_ROOT, log: bool = True) -> Path:
    """Create (once) a venv with cryo from PyPI; return its python."""
    venv = data_root / "cryo-venv"
    py = venv / "bin" / "python"
    marker = venv / ".ready"
    if marker.exists() and py.exists():
        return py
    shutil.rmtree(venv, ignore_errors=True)
    base = str(getattr(sys, "_base_executable", None) or sys.executable)
    if log:
        print(f"cryo_peer: creating {venv} with {base}", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    f"cryo=={CRYO_VERSION}"], check=True)
    subprocess.run([str(py), "-c", "import cryo"], check=True)
    marker.write_text(json.dumps({"python": base, "cryo": CRYO_VERSION}))
    return py


def best_settings(data_root: Path = DATA_ROOT) -> tuple[int, int]:
    path = data_root / "cryo-best.json"
    if path.exists():
        best = json.loads(path.read_text())
        return int(best["concurrency"]), int(best["chunk_size"])
    return BEST_CONCURRENCY, BEST_CHUNK_SIZE


def run_cryo(rpc: str, start: int, end: int, contract: str, *, cpus: Sequence[int] | None = None,
             concurrency: int | None = None, chunk_size: int | None = None) -> CryoRun:
    """One cryo run over blocks start..end (inclusive)."""
    py = ensure_cryo_venv()
    best_c, best_k = best_settings()
    concurrency = concurrency or best_c
    chunk_size = chunk_size or best_k
    with tempfile.TemporaryDirectory(prefix="bench-cryo-") as out:
        # cryo's block ranges are end-exclusive: start:end+1 is start..end.
        args = {"rpc": rpc, "start": start, "end": end + 1, "out": out, "contract": [contract],
                "topic0": [TRANSFER_TOPIC], "exclude": list(RECEIPT_COLUMNS),
                "concurrency": concurrency, "chunk": chunk_size}
        cmd = [str(py), "-c", _SCRIPT, json.dumps(args)]
        pinned = "unpinned (both cores)"
        if cpus is not None:
            cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
            pinned = f"core {','.join(map(str, cpus))}"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"cryo failed ({proc.returncode}): {proc.stderr[-2000:]}")
        files = sorted(p.name for p in Path(out).rglob("*.parquet"))
        for kind in ("blocks", "transactions", "logs"):
            if not any(f"__{kind}__" in f for f in files):
                raise RuntimeError(f"cryo wrote no {kind} file: {files}")
    return CryoRun(end - start + 1, seconds, concurrency, chunk_size, pinned)


def tune(rpc: str, start: int, end: int, contract: str, cpus: Sequence[int] | None = None,
         data_root: Path = DATA_ROOT, log: bool = True) -> tuple[int, int]:
    runs = []
    for c, k in TUNE_GRID:
        run = run_cryo(rpc, start, end, contract, cpus=cpus, concurrency=c, chunk_size=k)
        runs.append(run)
        if log:
            print(f"cryo tune: concurrency {c:3d} chunk {k:4d}: {run.blocks_per_s:7.0f} blocks/s "
                  f"({run.seconds:.2f}s)", flush=True)
    best = max(runs, key=lambda r: r.blocks_per_s)
    (data_root / "cryo-best.json").write_text(json.dumps({
        "concurrency": best.concurrency, "chunk_size": best.chunk_size, "tuned_on": [start, end],
        "runs": [{"concurrency": r.concurrency, "chunk_size": r.chunk_size,
                  "blocks_per_s": round(r.blocks_per_s, 1)} for r in runs]}, indent=1))
    return best.concurrency, best.chunk_size


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rpc", required=True)
    ap.add_argument("--start", type=int, required=True)
    ap.add_argument("--end", type=int, required=True)
    ap.add_argument("--contract", help="token contract (default: the benchmark chain's)")
    ap.add_argument("--cpus")
    ap.add_argument("--tune", action="store_true")
    args = ap.parse_args(argv)
    contract = args.contract
    if contract is None:
        from bench.chaingen import chain_dir, load_meta

        contract = str(load_meta(chain_dir())["token"])
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    if args.tune:
        print(f"cryo tune: best {tune(args.rpc, args.start, args.end, contract, cpus)}", flush=True)
    run = run_cryo(args.rpc, args.start, args.end, contract, cpus=cpus)
    print(f"cryo {CRYO_VERSION} ({run.pinned}, concurrency {run.concurrency}, chunk {run.chunk_size}): "
          f"{run.blocks} blocks in {run.seconds:.2f} s = {run.blocks_per_s:.0f} blocks/s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
