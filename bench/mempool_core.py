"""Cost of the pure mempool core per poll and per block, and of its checkpoint.

    python -m bench.mempool_core [--tracked 10000] [--added 3000] [--block-inputs 9000]

A state holding ``--tracked`` seen transactions (one watched output, two inputs
each) receives polls of ``--added`` new transactions (1 % paying a watched
address, the rest only conflicting-candidates) and ``--added // 10`` gone txids,
then a connected block spending ``--block-inputs`` outpoints (none of them
tracked, as most blocks). Figures are medians over repeats; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time

from watcher.core.chainstate import ChainState
from watcher.core.mempool import MempoolChange, UnconfirmedTx
from watcher.core.window import Extend
from watcher.types import (
    Address,
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainId,
    Outpoint,
    Spend,
    Transfer,
    TxId,
)

BTC = ChainId("btc")


def _tx(i: int, watched: bool) -> UnconfirmedTx:
    txid = TxId(f"{i:064x}")
    pays = (Transfer(txid, "vout:0", AssetSymbol("BTC"), None, Address(f"bc1q{i:038x}"), None,
                     10_000 + i, 8),) if watched else ()
    return UnconfirmedTx(txid, pays, (Outpoint(TxId(f"{i:063x}f"), 0),
                                      Outpoint(TxId(f"{i:063x}e"), 1)), True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracked", type=int, default=10_000)
    ap.add_argument("--added", type=int, default=3_000)
    ap.add_argument("--block-inputs", type=int, default=9_000)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()

    st = ChainState(BTC, 100, lambda a, n: 3)
    tip = BlockRef(1, BlockHash("11" * 32), BlockHash("00" * 32))
    st.apply(Extend((tip,)), [BlockContents(tip, ())], lambda t: None)
    st.observe_mempool(MempoolChange(tuple(_tx(i, True) for i in range(args.tracked)),
                                     tip=tip.hash), 0.0, lambda t: None)

    polls, blocks = [], []
    base = 10**9
    for r in range(args.repeats):
        added = tuple(_tx(base + r * args.added + i, i % 100 == 0) for i in range(args.added))
        gone = tuple(TxId(f"{base - 1 - r * 1000 - i:064x}") for i in range(args.added // 10))
        t0 = time.perf_counter()
        st.mempool.observe(MempoolChange(added, gone, tip.hash), float(r), lambda t: None,
                           caught_up=True)
        polls.append(time.perf_counter() - t0)
        spends = tuple(Spend(Outpoint(TxId(f"b{r:031x}{i:032x}"), 0), TxId(f"{i:064x}"))
                       for i in range(args.block_inputs))
        t0 = time.perf_counter()
        st.mempool.connect(spends, ())
        blocks.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    snap = st.snapshot()
    snap_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ChainState.restore(snap, BTC, 100, lambda a, n: 3)
    restore_s = time.perf_counter() - t0

    print(f"tracked unconfirmed transactions: {len(st.mempool)}")
    print(f"poll of {args.added} added + {args.added // 10} gone: "
          f"{statistics.median(polls) * 1000:.2f} ms median")
    print(f"block of {args.block_inputs} inputs: {statistics.median(blocks) * 1000:.2f} ms median")
    print(f"snapshot: {len(snap) / 1e6:.2f} MB in {snap_s * 1000:.1f} ms, "
          f"restore {restore_s * 1000:.1f} ms")


if __name__ == "__main__":
    main()
