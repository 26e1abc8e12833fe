"""Restart-to-following time with millions of registered addresses, address snapshots on and off.

    python -m bench.restart [--sizes 1000000,10000000] [--full-max 1000000] [--tail 10000]

A private Kafka broker keeps its data in ``bench/.data/restart-kafka`` (fixed ports 29192/29193),
so the registration topics (N registrations of random EVM addresses, written once by Kafka's
own console producer, lz4, batched) and the snapshots are reused by later runs.

Each figure is one fresh ``python`` process doing what the daemon does before a chain moves:
build the index, start the registrations follower (snapshots on or off) and wait for
``caught_up``. "restart" is measured by the parent from spawning the process to the line the
child prints at ``caught_up`` (interpreter start and imports included); the child reports its
own breakdown (manifest read, chunk read, bulk load, tail of registrations) and its peak RSS.
Before the "on" runs, ``--tail`` registrations (adds and removals) are produced after the
snapshot, so a restore always applies a tail on top.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / "bench" / ".data" / "restart-kafka"
PORT, CONTROLLER_PORT = 29192, 29193
KEY_SIZE = 20


def kafka_cfg(bootstrap: str, size: int) -> Any:
    from watcher.config import KafkaConfig, Topics

    prefix = f"bench.restart.{size}"
    topics = Topics(**{f: f"{prefix}.{f}" for f in Topics.__dataclass_fields__})
    return KafkaConfig(bootstrap_servers=bootstrap, topics=topics,
                       transactional_id_prefix=prefix, client_id="bench-restart",
                       security_protocol="PLAINTEXT", sasl_mechanism=None, sasl_username=None,
                       sasl_password=None, ssl_cafile=None, transaction_timeout_ms=60_000)


def _hwm_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------- child: one start


async def child(bootstrap: str, size: int, mode: str) -> dict[str, Any]:
    from chains.evm.adapter import EvmAddressCodec
    from watcher.core.addresses import AddressIndex
    from watcher.core.addrsnapshot import Manifest, Restored
    from watcher.kafka.addrsnapshots import AddressSnapshotStore
    from watcher.kafka.registrations import RegistrationFollower, SnapshotSettings

    t0 = time.perf_counter()
    cfg = kafka_cfg(bootstrap, size)
    timings: dict[str, float] = {}

    class TimedStore(AddressSnapshotStore):
        async def read_manifest(self, chain: str) -> Manifest | None:
            t = time.perf_counter()
            try:
                return await super().read_manifest(chain)
            finally:
                timings["manifest_s"] = time.perf_counter() - t

        async def read_chunks(self, manifest: Manifest) -> Restored:
            t = time.perf_counter()
            try:
                return await super().read_chunks(manifest)
            finally:
                timings["chunks_s"] = time.perf_counter() - t

    class TimedIndex(AddressIndex):
        __slots__ = ()

        def load_packed(self, blob: bytes | Sequence[bytes], labels: Any = None) -> None:
            t = time.perf_counter()
            try:
                super().load_packed(blob, labels)
            finally:
                timings["bulk_load_s"] = time.perf_counter() - t

    class Dead:
        async def write(self, **_: Any) -> None:
            return None

    store = TimedStore(cfg, timeout_s=300)
    if mode == "seed":
        return {"mode": mode, "size": size,
                "snapshot_write_s": round(await seed_snapshot(cfg, store, size), 2)}
    index = TimedIndex(KEY_SIZE)
    snapshots = None if mode == "off" else SnapshotSettings(store, every_changes=10**12)
    follower = RegistrationFollower(cfg, {"eth": EvmAddressCodec()}, {"eth": index}, Dead(),
                                    timeout_s=120, snapshots=snapshots)
    await follower.start()
    await follower.caught_up.wait()
    caught = time.perf_counter() - t0
    print(json.dumps({"event": "caught_up"}), flush=True)
    out: dict[str, Any] = {"mode": mode, "size": size, "caught_up_s": round(caught, 2),
                           "keys": len(index), "restored": follower.restored["eth"],
                           "applied": follower.applied, "peak_rss_mb": round(_hwm_mb()),
                           **{k: round(v, 2) for k, v in timings.items()}}
    if mode == "write":
        t = time.perf_counter()
        await follower.snapshot_now()
        out["snapshot_write_s"] = round(time.perf_counter() - t, 2)
    await follower.stop()
    return out


def offsets_file(size: int) -> Path:
    return STATE / f"generated-{size}.json"


async def seed_snapshot(cfg: Any, store: Any, size: int) -> float:
    """Writes the snapshot a full read of the freshly generated topic would give, built from
    the generator instead of from a full read (10 M registrations take many minutes to read
    here). The offsets are the topic's end right after it was generated; the integration test
    ``test_address_snapshots`` proves that snapshot plus tail equals a full read."""
    from watcher.core.addresses import AddressIndex

    meta = json.loads(offsets_file(size).read_text())
    index = AddressIndex(KEY_SIZE)
    index.load_packed(b"".join(raw for _, _, raw in generated(size, meta["seed"])))
    labels = {}
    for base, n, raw in generated(size, meta["seed"]):
        for i in range((-base) % 10, n, 10):
            labels[raw[i * KEY_SIZE:(i + 1) * KEY_SIZE]] = f"c-{base + i}"
    index.load_packed(b"".join(index.packed_chunks()), labels)
    t = time.perf_counter()
    chunks = list(index.packed_chunks(1_000_000 // KEY_SIZE))
    await store.write("eth", KEY_SIZE, len(index), chunks, index.labels(),
                      {int(p): o for p, o in meta["offsets"].items()}, None, None)
    print(json.dumps({"event": "seeded"}), flush=True)
    return time.perf_counter() - t


def run_child(bootstrap: str, size: int, mode: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench.restart", "--child", mode,
                             "--bootstrap", bootstrap, "--sizes", str(size)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    restart_s = time.perf_counter() - t0
    if not first:
        raise RuntimeError(f"child {mode} {size} died (exit {proc.wait()})")
    result: dict[str, Any] = json.loads(proc.stdout.readline())
    if proc.wait() != 0:
        raise RuntimeError(f"child {mode} {size} exited {proc.returncode}")
    result["restart_s"] = round(restart_s, 2)
    return result


# ---------------------------------------------------------------- setup


async def has_snapshot(cfg: Any) -> bool:
    from watcher.kafka.addrsnapshots import AddressSnapshotStore

    return await AddressSnapshotStore(cfg).read_manifest("eth") is not None


async def end_offsets(cfg: Any) -> dict[int, int]:
    from watcher.kafka.client import ManualConsumer

    consumer = ManualConsumer(cfg, cfg.topics.address_registrations, timeout_s=60)
    await consumer.start()
    try:
        return await consumer.end_offsets()
    finally:
        await consumer.stop()


async def topic_records(cfg: Any) -> int:
    from watcher.kafka.client import ManualConsumer

    consumer = ManualConsumer(cfg, cfg.topics.address_registrations, timeout_s=60)
    await consumer.start()
    try:
        return sum((await consumer.end_offsets()).values())
    finally:
        await consumer.stop()


def generated(size: int, seed: int) -> Any:
    """The registrations :func:`produce_registrations` writes: (address digits, label) chunks."""
    rng = random.Random(seed)
    step = 100_000
    for base in range(0, size, step):
        n = min(step, size - base)
        yield base, n, rng.randbytes(KEY_SIZE * n)


def produce_registrations(bootstrap: str, topic: str, size: int, seed: int) -> float:
    """``size`` registrations through Kafka's console producer (Java: ~10x aiokafka's rate)."""
    from tests.support.services import devstack

    ds = devstack()
    java = ds._java()
    libs = ds.install_kafka()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [java, "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ConsoleProducer",
         "--bootstrap-server", bootstrap, "--topic", topic,
         "--property", "parse.key=true", "--property", "key.separator=\t",
         "--producer-property", "compression.type=lz4",
         "--producer-property", "linger.ms=50", "--producer-property", "batch.size=1048576",
         "--producer-property", "acks=all"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert proc.stdin is not None
    for base, n, raw in generated(size, seed):
        blob = raw.hex()
        lines = []
        for i in range(n):
            address = "0x" + blob[i * 40:(i + 1) * 40]
            label = f',"label":"c-{base + i}"' if (base + i) % 10 == 0 else ""
            lines.append(f'eth:{address}\t{{"chain":"eth","address":"{address}"{label}}}\n')
        proc.stdin.write("".join(lines).encode())
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"console producer exited {proc.returncode}")
    return time.perf_counter() - t0


async def produce_tail(cfg: Any, count: int, seed: int) -> None:
    """``count`` later registrations: new addresses, and removals of earlier tail addresses."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, linger_ms=20,
                                compression_type="lz4", acks="all", enable_idempotence=True)
    await producer.start()
    try:
        rng = random.Random(seed)
        futures = []
        for i in range(count):
            address = "0x" + rng.randbytes(KEY_SIZE).hex()
            value = None if i % 5 == 4 else f'{{"chain":"eth","address":"{address}"}}'.encode()
            futures.append(await producer.send(cfg.topics.address_registrations,
                                               key=f"eth:{address}".encode(), value=value))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--full-max", type=int, default=1_000_000,
                    help="measure the full re-read (snapshot off) only up to this size")
    ap.add_argument("--tail", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2, help="restores per size (snapshot on)")
    ap.add_argument("--child", choices=["off", "on", "write", "seed"])
    ap.add_argument("--bootstrap")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(asyncio.run(child(args.bootstrap, sizes[0], args.child))), flush=True)
        return 0

    from tests.support.services import devstack
    from watcher.kafka.client import ensure_topics

    STATE.mkdir(parents=True, exist_ok=True)
    info = devstack().start_kafka(STATE, PORT, CONTROLLER_PORT, die_with_parent=True)
    bootstrap = info.bootstrap_servers
    rows: list[dict[str, Any]] = []
    for size in sizes:
        cfg = kafka_cfg(bootstrap, size)
        asyncio.run(ensure_topics(cfg))
        have = asyncio.run(topic_records(cfg))
        if have < size:
            took = produce_registrations(bootstrap, cfg.topics.address_registrations,
                                         size - have, seed=size + have)
            print(f"{size:,}: produced {size - have:,} registrations in {took:.0f}s", flush=True)
            if have == 0:
                offsets = asyncio.run(end_offsets(cfg))
                offsets_file(size).write_text(json.dumps({"seed": size, "offsets": offsets}))
        else:
            print(f"{size:,}: registration topic cached ({have:,} records)", flush=True)
        if size <= args.full_max:
            row = run_child(bootstrap, size, "off")
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not asyncio.run(has_snapshot(cfg)):
            how = "seed" if offsets_file(size).exists() else "write"
            written = run_child(bootstrap, size, how)
            print(json.dumps(written), flush=True)
        asyncio.run(produce_tail(cfg, args.tail, seed=int(time.time())))
        for _ in range(args.repeat):
            row = run_child(bootstrap, size, "on")
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\nrestart to following (registrations caught up), fresh process each:")
    print(f"{'addresses':>12} {'snapshot':>8} {'restart s':>9} {'manifest':>8} {'chunks':>7} "
          f"{'load':>6} {'peak MB':>7}")
    for r in rows:
        print(f"{r['keys']:>12,} {'on' if r['mode'] == 'on' else 'off':>8} {r['restart_s']:>9.1f} "
              f"{r.get('manifest_s', 0):>8.2f} {r.get('chunks_s', 0):>7.2f} "
              f"{r.get('bulk_load_s', 0):>6.2f} {r['peak_rss_mb']:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
