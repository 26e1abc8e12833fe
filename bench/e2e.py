"""The watcher end to end: ``watcher run`` as a subprocess, timed from process start until
its checkpoint at the chain's last block (and with it that block's events) is committed in
Kafka; then every event is read and checked field by field against the recorded chain.

Run (from the repository root; a replay server and a Kafka broker must be serving)::

    .venv/bin/python -m bench.e2e --rpc http://127.0.0.1:8600 --bootstrap 127.0.0.1:9092

What is timed: from just before ``Popen`` (interpreter start, imports, configuration,
Kafka producer and transactions, address file, every block fetched, checked and
committed) until a ``read_committed`` consumer in this process sees the watcher's
committed checkpoint at the chain's last block. The watcher commits each batch's events
with its checkpoint in one Kafka transaction, so that is the moment the last events are
committed (a reader sees both or neither). The consumer waits at most 20 ms a fetch, so
the figure includes up to that much observer latency. The events themselves are read
after the clock stops: reading all of them during the run cost the observer ~0.8 s of
CPU on the same two cores (measured 2026-12-01), which the watcher paid in the figure.

The project's bytecode is compiled first (``compileall``), as in the deployed image (pip
compiles the ``.pyc`` files there) or after any earlier start on a machine that lets Python
write them: a source checkout under ``PYTHONDONTWRITEBYTECODE=1`` would otherwise compile
every module of the watcher at every start (~0.25 s of CPU, measured), which no deployment
pays.

What is checked: for every deposit the generator recorded, the watcher's events carry
the same ``deposit_id`` (txid and locator), ``amount``, ``address``, ``token_contract``,
``block_number`` and ``block_hash``; no event names a deposit the chain does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.proc import cpu_seconds

REPO_ROOT = Path(__file__).resolve().parent.parent
WATCHER_EXE = REPO_ROOT / ".venv" / "bin" / "watcher"


@dataclass(frozen=True)
class EndToEnd:
    blocks: int
    seconds: float
    deposits: int
    events: int
    cpu_seconds: float
    """User + system CPU of the watcher process (and its children) over the run."""
    pinned: str
    others_cpu: Mapping[str, float] = field(default_factory=dict)
    """CPU seconds of the other processes on the same cores (the broker, the node) from the
    watcher's start to its last commit, by name: what the machine spent beside the watcher."""

    @property
    def blocks_per_s(self) -> float:
        return self.blocks / self.seconds


def expected_deposits(directory: Path) -> dict[str, dict[str, Any]]:
    """The generator's record, by the deposit id the contract gives each deposit."""
    out: dict[str, dict[str, Any]] = {}
    for d in json.loads((directory / "expected.json").read_text()):
        locator = "tx" if d["kind"] == "native" else f"log:{int(d['logIndex'])}"
        out[f"eth:{d['tx']}:{locator}"] = d
    return out


def compare(events: dict[str, list[dict[str, Any]]], want: dict[str, dict[str, Any]]) -> list[str]:
    """Every difference between the watcher's events and the generator's record (empty: same)."""
    problems: list[str] = []
    for did in sorted(set(events) - set(want))[:5]:
        problems.append(f"unexpected deposit {did}")
    if len(set(events) - set(want)) > 5:
        problems.append(f"... {len(set(events) - set(want)) - 5} more unexpected")
    missing = sorted(set(want) - set(events))
    for did in missing[:5]:
        problems.append(f"missing deposit {did}")
    if len(missing) > 5:
        problems.append(f"... {len(missing) - 5} more missing")
    for did, d in want.items():
        for ev in events.get(did, ()):
            token = d.get("token")
            checks = {
                "amount": (ev.get("amount"), d["value"]),
                "address": (str(ev.get("address", "")).lower(), d["to"]),
                "token_contract": ((ev.get("token_contract") or "").lower() or None, token),
                "block_number": (ev.get("block_number"), d["block"]),
                "block_hash": (ev.get("block_hash"), d["blockHash"]),
                "txid": (ev.get("txid"), d["tx"]),
                "type": (ev.get("type") in ("deposit.pending", "deposit.confirmed"), True),
            }
            for name, (got, expected) in checks.items():
                if got != expected:
                    problems.append(f"{did}: {name} {got!r}, recorded {expected!r}")
    return problems


def write_config(tmp: Path, rpc: str, bootstrap: str, meta: dict[str, Any], watched: Sequence[str],
                 start: int, prefix: str, metrics_port: int, *, log_level: str = "warning") -> Path:
    (tmp / "addresses.yaml").write_text(yaml.safe_dump({"eth": list(watched)}))
    chain: dict[str, Any] = {
        "family": "evm", "chain_id": int(meta["chain_id"]),
        "endpoints": [{"name": "replay", "url": rpc}],
        "start_block": start, "reorg_window": 128, "finality": {"mode": "depth", "depth": 64},
        "poll_interval_ms": 100, "rpc_timeout_ms": 60_000, "traces": "off",
        "native_asset": {"symbol": "ETH", "decimals": 18},
        "tokens": [{"contract": meta["token"], "symbol": "BENCH", "decimals": 18}],
        "confirmations": {"ETH": 12, "BENCH": 12},
    }
    cfg = {
        "kafka": {"bootstrap_servers": bootstrap, "transactional_id_prefix": prefix,
                  "topics": {"deposits": f"{prefix}.deposits", "checkpoints": f"{prefix}.checkpoints",
                             "address_registrations": f"{prefix}.registrations",
                             "dead_letter": f"{prefix}.dead-letter"}},
        "metrics": {"port": metrics_port},
        "logging": {"level": log_level},
        "addresses_file": str(tmp / "addresses.yaml"),
        "chains": {"eth": chain},
    }
    path = tmp / "watcher.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def _committed_consumer(kafka: Any, topic: str) -> tuple[Any, list[Any]]:
    """A ``read_committed`` consumer assigned to every partition of ``topic`` from the start,
    waiting at most 20 ms a fetch (so a commit is seen when it lands, not 0.5 s later)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from watcher.kafka.client import ManualConsumer

    probe = ManualConsumer(kafka, topic, timeout_s=30)
    partitions = await probe.start(assign=False)
    await probe.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers,
                                isolation_level="read_committed", enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=20)
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer, tps


async def _wait_checkpoint(kafka: Any, chain: str, head: int, proc: subprocess.Popen[bytes],
                           timeout_s: float) -> float:
    """Waits until the chain's committed checkpoint has ``head`` at the tip of its window; when
    it was seen (``perf_counter``).

    Why the checkpoint and not the events: the watcher commits each batch's events and its
    checkpoint in one Kafka transaction, so a ``read_committed`` reader sees the checkpoint of
    the last block exactly when it sees the last block's events (both, or neither). Reading
    that one small record costs the observer almost nothing, where reading every event while
    the watcher runs cost ~0.8 s of CPU on the same two cores (measured), taken from the
    watcher. Every event is still read and compared after the clock stops
    (:func:`_read_events`)."""
    from watcher.kafka.client import checkpoint_topic

    consumer, _ = await _committed_consumer(kafka, checkpoint_topic(kafka.topics, chain))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"watcher exited with {proc.returncode} before committing the head")
            if time.monotonic() > deadline:
                raise SystemExit(f"timeout: no committed checkpoint at block {head}")
            for records in (await consumer.getmany(timeout_ms=50)).values():
                for r in records:
                    if r.value is not None and orjson.loads(r.value)["window"][-1][0] >= head:
                        return time.perf_counter()
    finally:
        await consumer.stop()


async def _read_events(kafka: Any, topic: str, want: set[str],
                       timeout_s: float = 30.0) -> tuple[dict[str, list[dict[str, Any]]], int]:
    """Every committed event of ``topic`` (read after the run), by deposit id; and how many."""
    consumer, tps = await _committed_consumer(kafka, topic)
    try:
        ends = await consumer.end_offsets(tps)
        events: dict[str, list[dict[str, Any]]] = {}
        count = 0
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise SystemExit(f"timeout reading {topic}: {len(want - events.keys())} "
                                 "deposits not read")
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    if r.value is not None:
                        ev = orjson.loads(r.value)
                        events.setdefault(ev["deposit_id"], []).append(ev)
                        count += 1
        return events, count
    finally:
        await consumer.stop()


async def _provision(cfg: Path) -> Any:
    """Creates the watcher's topics and waits until every partition has a leader; the
    Kafka configuration."""
    from watcher.config import load
    from watcher.kafka.client import ManualConsumer, checkpoint_topic, ensure_topics

    loaded = load(str(cfg))
    kafka = loaded.kafka
    # Every topic the watcher needs, its chains' checkpoint topics included (a deployment
    # coming back after an outage has them all).
    await ensure_topics(kafka, chains=list(loaded.chains))
    for topic in (kafka.topics.deposits, *(checkpoint_topic(kafka.topics, c) for c in loaded.chains),
                  kafka.topics.address_registrations):
        for _ in range(100):
            consumer = ManualConsumer(kafka, topic, timeout_s=10)
            try:
                await consumer.start(assign=False)
                await consumer.end_offsets()
                break
            except Exception:
                await asyncio.sleep(0.1)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
    return kafka


def compile_bytecode() -> None:
    """The watcher's own packages compiled to ``__pycache__`` (what is not up to date)."""
    import compileall

    for package in ("watcher", "chains"):
        compileall.compile_dir(REPO_ROOT / package, quiet=2)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_end_to_end(rpc: str, bootstrap: str, directory: Path, *, cpus: Sequence[int] | None = None,
                   env: dict[str, str] | None = None, timeout_s: float = 300.0,
                   label: str = "e2e", log_level: str = "warning",
                   keep_log: Path | None = None,
                   cpu_probes: Mapping[str, Callable[[], float]] | None = None,
                   ) -> tuple[EndToEnd, list[str]]:
    """One ``watcher run`` over the recorded chain; (figure, differences from the record).

    ``cpu_probes``: name -> a reading of another process's CPU seconds so far, read just
    before the watcher starts and just after its last commit (``EndToEnd.others_cpu``)."""
    from bench.chaingen import free_port, load_meta, load_watched

    meta = load_meta(directory)
    watched = load_watched(directory)
    start, end = int(meta.get("first_payload_block", 1)), int(meta["head"])
    want = expected_deposits(directory)
    compile_bytecode()
    prefix = f"bench-{label}-{os.getpid()}-{time.monotonic_ns()}"
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmpd:
        tmp = Path(tmpd)
        cfg = write_config(tmp, rpc, bootstrap, meta, watched, start, prefix, free_port(),
                           log_level=log_level)
        # The topics exist before the watcher starts, as in a deployment coming back after an
        # outage (the watcher still checks them at start; it creates none).
        kafka = asyncio.run(_provision(cfg))
        cmd = [str(WATCHER_EXE), "run", "-c", str(cfg)]
        pinned = "unpinned (both cores)"
        if cpus is not None:
            cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
            pinned = f"core {','.join(map(str, cpus))}"
        log = tmp / "watcher.log"
        cpu0 = _children_cpu()
        probes = dict(cpu_probes or {})
        others0 = {name: probe() for name, probe in probes.items()}
        with log.open("wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=out, stderr=out, env={**os.environ, **(env or {})})
            try:
                done = asyncio.run(_wait_checkpoint(kafka, "eth", end, proc, timeout_s))
                others = {name: probe() - others0[name] for name, probe in probes.items()}
            except SystemExit:
                proc.kill()
                proc.wait()
                sys.stderr.write(log.read_text()[-3000:])
                raise
            finally:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        cpu = _children_cpu() - cpu0
        events, count = asyncio.run(_read_events(kafka, kafka.topics.deposits, set(want)))
        if keep_log is not None:
            keep_log.write_bytes(log.read_bytes())
    result = EndToEnd(end - start + 1, done - t0, len(events), count, cpu, pinned, others)
    return result, compare(events, want)


def process_cpu(pid: int) -> Callable[[], float]:
    """A probe of ``pid``'s CPU seconds so far (user + system, all its threads)."""
    return lambda: cpu_seconds(pid)



def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rpc", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--data", type=Path, help="chain directory (default: bench.chaingen's)")
    ap.add_argument("--cpus", help="pin the watcher (taskset list, e.g. 0)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--log-level", default="warning", help="the watcher's")
    ap.add_argument("--keep-log", type=Path, help="copy the watcher's log here")
    args = ap.parse_args(argv)
    from bench.chaingen import chain_dir

    directory = args.data or chain_dir()
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    for _ in range(args.repeat):
        res, problems = run_end_to_end(args.rpc, args.bootstrap, directory, cpus=cpus,
                                       log_level=args.log_level, keep_log=args.keep_log)
        print(f"watcher end to end ({res.pinned}): {res.blocks} blocks in {res.seconds:.2f} s = "
              f"{res.blocks_per_s:.0f} blocks/s, {res.deposits} deposits, {res.events} events, "
              f"CPU {res.cpu_seconds:.2f} s; {'all fields match' if not problems else problems[:5]}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
