"""Per-block cost of decoding, checking and scanning a contents answer: orjson into dicts
(the old path) against msgspec into typed views (``chains/evm/answers.py``).

Run (from the repository root; uses the recorded benchmark chain)::

    .venv/bin/python -m bench.decode [--blocks 300] [--repeat 5]

Each recorded block is served as the replay server would (a JSON-RPC batch answer of
``eth_getBlockByHash(h, true)`` and ``eth_getLogs``), then decoded, checked and scanned
against the 1,000 watched addresses by both paths, which must find the same transfers.
Prints the median per-block time of each (one core, no I/O).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Sequence
from typing import Any

import orjson

from bench.chaingen import chain_dir, iter_corpus, load_meta, load_watched
from chains.evm import answers, parse, verify
from chains.evm.rpc import EvmRpcClient, _batch_replies, raise_errors
from watcher.config import Endpoint
from watcher.types import AssetSymbol, BlockHash, BlockRef


def _answers(limit: int) -> list[tuple[BlockRef, bytes]]:
    out = []
    for rec in itertools.islice(iter_corpus(chain_dir()), 3, 3 + limit):
        block, logs = rec["block"], rec["logs"]
        ref = BlockRef(int(block["number"], 16), BlockHash(block["hash"]),
                       BlockHash(block["parentHash"]), int(block["timestamp"], 16))
        raw = orjson.dumps([{"jsonrpc": "2.0", "id": 1, "result": block},
                            {"jsonrpc": "2.0", "id": 2, "result": logs}])
        out.append((ref, raw))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    meta = load_meta(chain_dir())
    watched = {bytes.fromhex(a[2:]) for a in load_watched(chain_dir())}
    token = str(meta["token"]).lower()
    assets = parse.Assets(AssetSymbol("ETH"), 18, {token: parse.TokenMeta(
        parse.address(token, "token"), AssetSymbol("BENCH"), 18)})
    log_filter = verify.LogFilter.of([token], parse.TRANSFER_TOPIC)
    blocks = _answers(args.blocks)
    client = EvmRpcClient("bench", Endpoint("bench", "http://127.0.0.1:1"), chain_id=1, timeout_s=1)

    def old(ref: BlockRef, raw: bytes) -> parse.ScannedBlock:
        replies = raise_errors(_batch_replies(orjson.loads(raw), 1, 2, "bench"))
        s = parse.scan_block(replies[0], ref, watched, assets)
        parse.scan_logs(replies[1], s, watched, assets)
        verify.check_logs_answer(replies[1], verify.parse_bloom(s.logs_bloom, "bloom"), log_filter)
        return s

    def new(ref: BlockRef, raw: bytes) -> parse.ScannedBlock:
        replies = raise_errors(client._raw_replies(200, raw, 1, 2, contents=True))
        s = parse.scan_block_json(replies[0], ref, watched, assets)
        logs = answers.generic(replies[1])
        parse.scan_logs(logs, s, watched, assets)
        verify.check_logs_answer(logs, verify.parse_bloom(s.logs_bloom, "bloom"), log_filter)
        return s

    def found(s: parse.ScannedBlock) -> Any:
        return ([(c.tx_index, c.transfer) for c in s.candidates], s.found)

    for ref, raw in blocks:
        assert found(old(ref, raw)) == found(new(ref, raw)), ref
    size = statistics.median(len(raw) for _, raw in blocks)
    print(f"{len(blocks)} recorded blocks, median answer {size / 1000:.0f} kB "
          f"(~{meta.get('txs_param', '?')} txs); same transfers on both paths")
    for name, fn in (("orjson -> dicts (before)", old), ("msgspec -> typed views (now)", new)):
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for ref, raw in blocks:
                fn(ref, raw)
            times.append((time.perf_counter() - t0) / len(blocks))
        print(f"  {name:<30} {statistics.median(times) * 1000:.3f} ms/block "
              f"(runs {min(times) * 1000:.3f}-{max(times) * 1000:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
