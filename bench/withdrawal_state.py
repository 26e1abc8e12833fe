"""Withdrawal state: bytes committed per step and load time, by settled requests.

Run (from the repository root)::

    .venv/bin/python -m bench.withdrawal_state [--sizes 1000,100000,1000000] [--no-kafka]

For each number N of settled requests (request ids ``w-<n>`` with 64-hex digests, as
intake makes them):

* **bytes per step**: what one commit writes with the live layout (the live snapshot of
  a book holding 10 requests in flight and a day of rolling amounts, plus one new settled
  record) against the version 1 layout, which wrote every settled digest in every step's
  snapshot (its 16 MB cap ends the runner at roughly 10^5);
* **load, in process**: :func:`load_settled` over N ``(key, value)`` records and the
  book restored over them, and the resident memory they take;
* **load, Kafka** (unless ``--no-kafka``): N records written to a compacted topic of a
  real broker (started here, from ``~/.cache/watcher-dev``), then read back whole with
  :class:`KafkaSettledRecords` as a runner does at start.

Prints one table row per N.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka import AIOKafkaProducer

from watcher.core.settled import SettledIndex
from watcher.core.withdrawals import (
    BroadcastOutcome,
    Fees,
    MachineConfig,
    NonceBinding,
    Request,
    RequestId,
    SettledOutcome,
    SignedTx,
    WithdrawalBook,
    load_settled,
    settled_record,
)
from watcher.types import Address, AssetSymbol, ChainId, TxId

ETH = ChainId("eth")
CFG = MachineConfig(confirmations=12, stuck_blocks=5, fee_cap=Fees(10**12, 10**10), uses_nonces=True)
TO = Address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
DAY_MS = 24 * 3600 * 1000


def digest(n: int) -> str:
    return hashlib.sha256(n.to_bytes(8, "big")).hexdigest()


def records(n: int) -> list[tuple[bytes, bytes]]:
    return [(f"w-{i}".encode(), settled_record(digest(i), "eth", SettledOutcome.CONFIRMED))
            for i in range(n)]


def live_book(settled: SettledIndex) -> WithdrawalBook:
    """10 requests in flight (signed, 110-byte raw transactions) and one accepted request a
    minute for the last day (the rolling amounts at their largest for one asset)."""
    b = WithdrawalBook(ETH, CFG, settled)
    b.nonce_counts(len(settled), len(settled))
    for m in range(1440):
        b.limits.add(AssetSymbol("ETH"), 10**18, m * 60_000)
    for i in range(10):
        rid = RequestId(f"live-{i}")
        b.accept(Request(rid, AssetSymbol("ETH"), None, TO, 10**18, 18, digest(10**9 + i), DAY_MS))
        b.funds(rid, True)
        nonce = b.get(rid).binding.nonce  # type: ignore[union-attr]
        tx = SignedTx(TxId("0x" + digest(i)), bytes(110), NonceBinding(nonce), Fees(10**10, 10**9),
                      21_000 * 10**10)
        b.signed(rid, tx)
        b.broadcast_result(rid, tx.txid, BroadcastOutcome.OK, 100)
    b.changes_committed()
    return b


def step_bytes(n: int, settled: SettledIndex) -> tuple[int, int]:
    """(live layout, version 1 layout) bytes of one step that settles one more request."""
    b = live_book(settled)
    b.reject(RequestId("w-new"), digest(-1 % 2**63))  # one new settled record this step
    ch = b.take_changes()
    new = len(ch.snapshot) + sum(len(k) + len(v) for k, v in ch.records.items())
    # Version 1: the same live part plus every digest in the snapshot of every step
    # ("w-<i>":"<64 hex>", comma-separated, in "digests":{...}).
    v1_digests = len(',"digests":{}') + sum(len(f"w-{i}") + 2 + 1 + 66 for i in range(n)) + n - 1
    return new, len(ch.snapshot) + v1_digests


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def kafka_round(bootstrap: str, n: int,
                      recs: list[tuple[bytes, bytes]]) -> tuple[float, float, float]:
    """Writes ``recs`` to a fresh compacted topic; returns (write s, load without an index
    snapshot s, load with one s)."""
    from watcher.config import parse
    from watcher.kafka.settled import KafkaSettledRecords

    cfg = parse({"kafka": {"bootstrap_servers": bootstrap, "transactional_id_prefix": "bench",
                           "topics": {"checkpoints": f"bench-state-{n}-{time.time_ns()}"}},
                 "chains": {"eth": {"family": "evm", "chain_id": 1,
                                    "endpoints": [{"name": "n", "url": "http://127.0.0.1:1"}],
                                    "native_asset": {"symbol": "ETH", "decimals": 18},
                                    "confirmations": {"ETH": 1}}}}).kafka
    store = KafkaSettledRecords(cfg, "eth", timeout_s=120)
    await store.ensure()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20,
                                compression_type="lz4", max_batch_size=512 * 1024,
                                max_request_size=4 * 1024 * 1024)
    await producer.start()

    async def send(items: list[tuple[str, bytes, bytes]]) -> None:
        futures = [await producer.send(t, value=v, key=k) for t, k, v in items]
        await producer.flush()
        for f in futures:
            f.result()
    try:
        started = time.perf_counter()
        await send([(store.topic, k, v) for k, v in recs])
        wrote = time.perf_counter() - started
        started = time.perf_counter()
        loaded = await store.load()
        plain = time.perf_counter() - started
        assert len(loaded.index) == n and loaded.read == n, (len(loaded.index), n)
        covered = await store.end_offset()
        await send([(r.topic, r.key, r.value or b"")
                    for r in store.index_records(loaded.index, covered)])
    finally:
        await producer.stop()
    started = time.perf_counter()
    again = await store.load()
    indexed = time.perf_counter() - started
    assert len(again.index) == n and again.read == 0 and again.seq == 1
    return wrote, plain, indexed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--no-kafka", action="store_true")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    kafka = None
    services = None
    tmp = tempfile.TemporaryDirectory(prefix="bench-wdstate-")
    if not args.no_kafka:
        from tests.support.services import ServiceManager
        services = ServiceManager(Path(tmp.name) / "svc")
        kafka = services.kafka()
    rows = []
    try:
        for n in sizes:
            recs = records(n)
            gc.collect()
            before = rss_mb()
            started = time.perf_counter()
            settled = load_settled(recs)
            loaded = time.perf_counter() - started
            started = time.perf_counter()
            book = WithdrawalBook.restore(live_book(SettledIndex()).snapshot(), ETH, CFG, settled)
            restored = time.perf_counter() - started
            last = f"w-{n - 1}"
            assert book.seen(last, digest(n - 1)) is True and book.seen(last, digest(n)) is False
            grown = rss_mb() - before
            new, old = step_bytes(n, settled)
            kw = kr = ki = float("nan")
            if kafka is not None:
                kw, kr, ki = asyncio.run(kafka_round(kafka.bootstrap_servers, n, recs))
            rows.append((n, new, old, loaded + restored, settled.nbytes(), grown, kw, kr, ki))
            del recs, settled, book
    finally:
        if services is not None:
            services.close()
        tmp.cleanup()
    print(f"{'settled':>9} {'bytes/step':>11} {'v1 bytes/step':>14} {'load in-proc':>13} "
          f"{'index':>7} {'peak':>6} {'kafka write':>12} {'load all':>9} {'load idx':>9}")
    for n, new, old, load_s, index_b, mem, kw, kr, ki in rows:
        print(f"{n:>9,} {new:>11,} {old:>14,} {load_s:>12.2f}s {index_b / 2**20:>5.1f}MB "
              f"{mem:>4.0f}MB {kw:>11.1f}s {kr:>8.1f}s {ki:>8.1f}s")
    print("bytes/step: the live snapshot (10 in flight, a day of per-minute amounts) plus one "
          "new settled record; v1: the same with every settled digest in the snapshot "
          f"(over {16 * 1024 * 1024:,} bytes a commit is refused). index: the settled index "
          "held in memory; peak: RSS growth while loading (ru_maxrss; a later, smaller N "
          "shows 0). load all: every record read back (no index snapshot); load idx: from "
          "an index snapshot covering them all.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
