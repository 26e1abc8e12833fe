"""ethereum-etl 2.4.2 baseline: time ``export_blocks_and_transactions`` against a JSON-RPC endpoint.

Run (from the repository root; the replay server must be serving, see bench/replay_server.py)::

    .venv/bin/python -m bench.etl_baseline --provider-uri http://127.0.0.1:8600 --start 0 --end 2002
    .venv/bin/python -m bench.etl_baseline --provider-uri URL --start 0 --end 2002 --tune
    .venv/bin/python -m bench.etl_baseline --setup-only

From Python: ``run_etl_baseline(provider_uri, start, end) -> blocks/s`` with the best
settings found by ``--tune`` (cached in ``bench/.data/etl-best.json``), else Python 3.10,
batch 100 and 5 workers (ethereum-etl's defaults).

The first use creates venvs under ``bench/.data/etl-venv/`` (idempotent, marker ``.ready``):
ethereum-etl 2.4.2 pins parsimonious 0.8, which breaks on Python >= 3.11.  Flavor ``py310``
uses a Python 3.10 when one is found ($ETL_PYTHON, python3.10 on PATH, pyenv's versions);
flavor ``forced`` uses the Python 3.11 running this script with ``parsimonious==0.9.0``
forced after the install.  ``--tune`` tries both (3.11 is faster) and keeps the best.

The rate is blocks divided by the duration that ethereum-etl itself logs ("Finished work
... Took ..."), which leaves out its interpreter start-up (favourable to ethereum-etl); the
wall time including start-up is reported too.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DATA_ROOT = BENCH_DIR / ".data"
ETL_VERSION = "2.4.2"
DEFAULT_BATCH_SIZE = 100
DEFAULT_MAX_WORKERS = 5
TUNE_GRID: tuple[tuple[int, int], ...] = (
    (10, 1),
    (10, 4),
    (25, 2),
    (50, 1),
    (50, 2),
    (50, 4),
    (100, 1),
    (100, 2),
    (100, 5),
    (100, 8),
    (200, 4),
)


@dataclass
class EtlRun:
    flavor: str
    start: int
    end: int
    batch_size: int
    max_workers: int
    blocks: int
    transactions: int
    etl_seconds: float
    wall_seconds: float

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.etl_seconds

    @property
    def transactions_per_s(self) -> float:
        return self.transactions / self.etl_seconds


FLAVORS = ("py310", "forced")


def _find_python310() -> str | None:
    env = os.environ.get("ETL_PYTHON")
    if env:
        return env
    found = shutil.which("python3.10")
    if found and subprocess.run([found, "-V"], check=False, capture_output=True).returncode == 0:
        return found
    pyenv_root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    for candidate in sorted(glob.glob(f"{pyenv_root}/versions/3.10.*/bin/python3.10"), reverse=True):
        if subprocess.run([candidate, "-V"], check=False, capture_output=True).returncode == 0:
            return candidate
    return None


def available_flavors() -> list[str]:
    """ "py310" (a Python 3.10, as ethereum-etl wants) when one exists; "forced" always."""
    return ["py310", "forced"] if _find_python310() else ["forced"]


def ensure_etl_venv(flavor: str = "py310", data_root: Path = DATA_ROOT, log: bool = True) -> Path:
    """Create (once) a venv with ethereum-etl; return the path of its ``ethereumetl`` script.

    flavor "py310": a Python 3.10 (falls back to "forced" when none is found); "forced": the
    Python running this (3.11) with ``parsimonious==0.9.0`` forced over ethereum-etl's pin.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}")
    py310 = _find_python310() if flavor == "py310" else None
    if py310 is None:
        flavor = "forced"
    venv = data_root / "etl-venv" / flavor
    exe = venv / "bin" / "ethereumetl"
    marker = venv / ".ready"
    if marker.exists() and exe.exists():
        return exe
    shutil.rmtree(venv, ignore_errors=True)
    base: str = py310 or str(getattr(sys, "_base_executable", None) or sys.executable)
    if log:
        print(f"etl_baseline: creating {venv} with {base}", flush=True)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, f"ethereum-etl=={ETL_VERSION}"], check=True)
    forced = None
    if py310 is None:
        # ethereum-etl pins parsimonious 0.8.x (through eth-abi 2), which fails on Python >= 3.11;
        # pip reports the conflict, and 0.9.0 works.
        subprocess.run([*pip, "parsimonious==0.9.0"], check=True, stderr=subprocess.DEVNULL)
        forced = "parsimonious==0.9.0"
    subprocess.run([str(exe), "export_blocks_and_transactions", "--help"], check=True, capture_output=True)
    marker.write_text(json.dumps({"python": base, "ethereum-etl": ETL_VERSION, "forced": forced}))
    return exe


_TOOK = re.compile(r"Finished work\. Total items processed: (\d+)\. Took (\d+):(\d+):(\d+(?:\.\d+)?)")


def _run_once(
    flavor: str, provider_uri: str, start: int, end: int, batch_size: int, max_workers: int, cpu: int | None
) -> EtlRun:
    exe = ensure_etl_venv(flavor)
    flavor = exe.parent.parent.name
    with tempfile.TemporaryDirectory(prefix="etl-bench-") as tmp:
        blocks_out, txs_out = Path(tmp) / "blocks.csv", Path(tmp) / "transactions.csv"
        cmd = [
            str(exe),
            "export_blocks_and_transactions",
            "--start-block",
            str(start),
            "--end-block",
            str(end),
            "--batch-size",
            str(batch_size),
            "--max-workers",
            str(max_workers),
            "--provider-uri",
            provider_uri,
            "--blocks-output",
            str(blocks_out),
            "--transactions-output",
            str(txs_out),
        ]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"ethereum-etl failed ({proc.returncode}): {proc.stderr[-2000:]}")
        m = _TOOK.search(proc.stderr) or _TOOK.search(proc.stdout)
        if m is None:
            raise RuntimeError(f"no 'Finished work' line in ethereum-etl output: {proc.stderr[-2000:]}")
        etl_seconds = int(m[2]) * 3600 + int(m[3]) * 60 + float(m[4])
        with blocks_out.open() as fh:
            n_blocks = sum(1 for _ in fh) - 1
        with txs_out.open() as fh:
            n_txs = sum(1 for _ in fh) - 1
    if n_blocks != end - start + 1:
        raise RuntimeError(f"ethereum-etl exported {n_blocks} blocks, expected {end - start + 1}")
    return EtlRun(flavor, start, end, batch_size, max_workers, n_blocks, n_txs, etl_seconds, wall)


@dataclass(frozen=True)
class EtlSettings:
    flavor: str
    batch_size: int
    max_workers: int


def best_settings(data_root: Path = DATA_ROOT) -> EtlSettings:
    """The settings tune() found fastest (cached in etl-best.json), else py310 with etl's defaults."""
    path = data_root / "etl-best.json"
    if path.exists():
        best = json.loads(path.read_text())
        return EtlSettings(best["flavor"], int(best["batch_size"]), int(best["max_workers"]))
    return EtlSettings("py310", DEFAULT_BATCH_SIZE, DEFAULT_MAX_WORKERS)


def run_etl_detailed(
    provider_uri: str,
    start: int,
    end: int,
    *,
    flavor: str | None = None,
    batch_size: int | None = None,
    max_workers: int | None = None,
    cpu: int | None = None,
) -> EtlRun:
    best = best_settings()
    return _run_once(
        flavor or best.flavor,
        provider_uri,
        start,
        end,
        batch_size or best.batch_size,
        max_workers or best.max_workers,
        cpu,
    )


def run_etl_baseline(
    provider_uri: str,
    start: int,
    end: int,
    *,
    flavor: str | None = None,
    batch_size: int | None = None,
    max_workers: int | None = None,
    cpu: int | None = None,
) -> float:
    """Blocks/s of ethereum-etl export_blocks_and_transactions over blocks start..end (inclusive).

    Settings default to the best found by tune(). ``cpu`` pins ethereum-etl to one core
    (taskset), e.g. the core the replay server is not on.
    """
    return run_etl_detailed(
        provider_uri, start, end, flavor=flavor, batch_size=batch_size, max_workers=max_workers, cpu=cpu
    ).blocks_per_s


def tune(
    provider_uri: str,
    start: int,
    end: int,
    grid: Sequence[tuple[int, int]] = TUNE_GRID,
    cpu: int | None = None,
    data_root: Path = DATA_ROOT,
    log: bool = True,
) -> EtlSettings:
    """Try every flavor x (batch_size, max_workers) once over start..end; cache and return the fastest."""
    runs = []
    for flavor in available_flavors():
        for b, w in grid:
            run = _run_once(flavor, provider_uri, start, end, b, w, cpu)
            runs.append(run)
            if log:
                print(
                    f"etl tune: {flavor:6s} batch {b:4d} workers {w:2d}: {run.blocks_per_s:7.1f} blocks/s "
                    f"({run.etl_seconds:.2f}s, wall {run.wall_seconds:.2f}s)",
                    flush=True,
                )
    best = max(runs, key=lambda r: r.blocks_per_s)
    (data_root / "etl-best.json").write_text(
        json.dumps(
            {
                "flavor": best.flavor,
                "batch_size": best.batch_size,
                "max_workers": best.max_workers,
                "tuned_on": [start, end],
                "runs": [{**asdict(r), "blocks_per_s": round(r.blocks_per_s, 1)} for r in runs],
            },
            indent=1,
        )
    )
    return EtlSettings(best.flavor, best.batch_size, best.max_workers)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--provider-uri", help="JSON-RPC endpoint, e.g. the replay server")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--end", type=int, help="last block (inclusive)")
    ap.add_argument("--flavor", choices=FLAVORS)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--max-workers", type=int)
    ap.add_argument("--cpu", type=int, help="pin ethereum-etl to this core")
    ap.add_argument(
        "--tune", action="store_true", help="first try a grid of settings (on --tune-blocks blocks)"
    )
    ap.add_argument("--tune-blocks", type=int, default=400)
    ap.add_argument("--setup-only", action="store_true")
    args = ap.parse_args(argv)
    for flavor in available_flavors():
        ensure_etl_venv(flavor)
    if args.setup_only:
        return 0
    if not args.provider_uri or args.end is None:
        ap.error("--provider-uri and --end are required")
    if args.tune:
        tune_end = min(args.end, args.start + args.tune_blocks - 1)
        best = tune(args.provider_uri, args.start, tune_end, cpu=args.cpu)
        print(f"etl tune: best {best}", flush=True)
    run = run_etl_detailed(
        args.provider_uri,
        args.start,
        args.end,
        flavor=args.flavor,
        batch_size=args.batch_size,
        max_workers=args.max_workers,
        cpu=args.cpu,
    )
    print(
        f"ethereum-etl {ETL_VERSION} export_blocks_and_transactions: {run.blocks} blocks, "
        f"{run.transactions} txs in {run.etl_seconds:.2f}s (wall {run.wall_seconds:.2f}s) = "
        f"{run.blocks_per_s:.1f} blocks/s, {run.transactions_per_s:,.0f} txs/s "
        f"({run.flavor}, batch {run.batch_size}, workers {run.max_workers})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
