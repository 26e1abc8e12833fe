"""Catch-up throughput of the Bitcoin family from a real btcd (regtest).

    .venv/bin/python -m bench.btc_catchup [--blocks 200] [--txs 10] [--outputs 20]

Starts a btcd of its own in a temporary folder, mines ``--blocks`` blocks of ``--txs``
signed transactions of ``--outputs`` outputs each (one output in five pays one of
``--watched`` watched P2WPKH/P2TR addresses), then times the source's catch-up path
(:class:`chains.bitcoin.source.BitcoinChainSource`: header batches, raw blocks fetched
by hash concurrently, parsed, merkle-checked and scanned) over the whole range, for
several ``max_concurrency`` values. Prints blocks/s, transactions/s and MB/s of raw
block, and checks that every watched output was found with its exact amount.

Regtest blocks are small (a few kB): the figure is dominated by btcd's per-request cost,
which is what catching up on a real node also pays per block, plus parsing. The parse
and scan of a mainnet-sized block is measured separately (``bench/btc_scan.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.script import KEY_SIZE
from chains.bitcoin.source import BitcoinChainSource
from tests.support.btc_wallet import RegtestWallet, regtest_payee
from watcher.config import parse
from watcher.core.addresses import AddressIndex

REPO_ROOT = Path(__file__).resolve().parents[1]


def devstack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("devstack_bench",
                                                  REPO_ROOT / "deploy" / "local" / "devstack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["devstack_bench"] = module
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_chain(node: Any, blocks: int, txs: int, outputs: int, watched: list[Any],
                rng: random.Random) -> dict[tuple[str, int], int]:
    """Mines the chain; the watched outputs (txid, vout) -> satoshis."""
    wallet = RegtestWallet(node)
    stranger = regtest_payee("p2wpkh", "bench-stranger")
    expected: dict[tuple[str, int], int] = {}
    coin = wallet.coin()
    for _ in range(blocks):
        for _ in range(txs):
            outs = []
            for _ in range(outputs):
                payee = rng.choice(watched) if rng.random() < 0.2 else stranger
                outs.append((payee, rng.randrange(1_000, 100_000)))
            tx = wallet.build([(p.script, a) for p, a in outs], coin=coin, fee=5_000)
            wallet.send(tx)
            for n, (p, a) in enumerate(outs):
                if p is not stranger:
                    expected[(tx.txid, n)] = a
            change = len(tx.outputs) - 1
            coin = type(coin)(tx.txid, change, tx.outputs[change][1])
        node.rpc("generate", 1)
    return expected


async def catch_up(cfg: Any, index: AddressIndex, start: int, tip: int, batch: int
                   ) -> tuple[float, int, int, dict[tuple[str, int], int]]:
    source = BitcoinChainSource(cfg)
    found: dict[tuple[str, int], int] = {}
    txs = 0
    try:
        await source.verify_identity()
        bytes_before = _fetched_bytes(cfg.id)
        started = time.perf_counter()
        height = start
        while height <= tip:
            refs = await source.headers(height, min(batch, tip - height + 1))
            contents = await source.contents(refs, index)
            for c in contents:
                for t in c.transfers:
                    found[(t.txid, int(t.locator.split(":")[1]))] = t.amount
            height = refs[-1].number + 1
        elapsed = time.perf_counter() - started
        size = int(_fetched_bytes(cfg.id) - bytes_before)
    finally:
        await source.close()
    return elapsed, size, txs, found


def _fetched_bytes(chain: str) -> float:
    from watcher.metrics import REGISTRY

    return REGISTRY.get_sample_value("watcher_block_bytes_fetched_total", {"chain": chain}) or 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=200)
    ap.add_argument("--txs", type=int, default=10, help="transactions per block")
    ap.add_argument("--outputs", type=int, default=20, help="outputs per transaction")
    ap.add_argument("--watched", type=int, default=1000)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--batch", type=int, default=50, help="blocks per headers request")
    ap.add_argument("--per-request", default="1,2,8", help="blocks per getblock batch POST")
    args = ap.parse_args()
    rng = random.Random(11)
    ds = devstack()
    with tempfile.TemporaryDirectory(prefix="btc-bench-") as tmp:
        port = free_port()
        info = ds.start_btcd(Path(tmp), port, None, die_with_parent=True)
        try:
            kinds = ("p2wpkh", "p2tr")
            watched = [regtest_payee(kinds[i % 2], f"bench-{i}") for i in range(args.watched)]
            codec = UtxoAddressCodec("regtest")
            index = AddressIndex(KEY_SIZE)
            for p in watched:
                index.add(codec.parse(p.address)[1])
            start = int(info.rpc("getblockcount")) + 1
            t0 = time.perf_counter()
            expected = build_chain(info, args.blocks, args.txs, args.outputs, watched, rng)
            tip = int(info.rpc("getblockcount"))
            print(f"btcd regtest: mined {tip - start + 1} blocks of {args.txs} transactions x "
                  f"{args.outputs} outputs in {time.perf_counter() - t0:.1f}s; "
                  f"{len(expected)} watched outputs, {args.watched} watched addresses")
            runs = [(int(c), int(b)) for c in args.concurrency.split(",")
                    for b in args.per_request.split(",")]
            for conc, per_request in runs:
                raw = {"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "chains": {"btc": {
                    "family": "bitcoin", "network": "regtest",
                    "endpoints": [{"name": "btcd", "url": info.rpc_url,
                                   "username_env": "U", "password_env": "P"}],
                    "native_asset": {"symbol": "BTC", "decimals": 8}, "reorg_window": 16,
                    "confirmations": {"BTC": 2}, "max_concurrency": conc,
                    "blocks_per_request": per_request,
                    "batch_size": args.batch}}}
                cfg = parse(raw, environ={"U": info.rpc_user, "P": info.rpc_password})
                chain_cfg = cfg.chains["btc"]  # type: ignore[index]
                elapsed, size, _, found = asyncio.run(
                    catch_up(chain_cfg, index, start, tip, args.batch))
                n = tip - start + 1
                ok = "ok" if found == expected else f"MISMATCH ({len(found)} vs {len(expected)})"
                print(f"  max_concurrency={conc} blocks_per_request={per_request}: "
                      f"{n / elapsed:7.1f} blocks/s, "
                      f"{n * (args.txs + 1) / elapsed:8.0f} tx/s, "
                      f"{size / elapsed / 1e6:5.2f} MB/s of raw block "
                      f"({size / n / 1e3:.1f} kB/block), deposits {ok}")
        finally:
            ds.stop(Path(tmp), "btcd")


if __name__ == "__main__":
    main()
