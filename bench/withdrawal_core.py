"""Cost of the pure withdrawal parts on this machine: intake, the machine, the snapshot.

Run (from the repository root)::

    .venv/bin/python -m bench.withdrawal_core [--requests 2000] [--in-flight 1000,10000]

Prints intake verdicts per second (JSON parse, canonical form, Ed25519 verification,
EIP-55 address), full payment lifecycles per second through the state machine (accept,
bind, sign-record, broadcast, block, confirm; signing itself excluded), EIP-1559 signing
per second with the local hot key, and the size and encode/decode time of the snapshot
committed with every step, for a given number of payments in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time

from eth_keys.main import KeyAPI
from nacl.signing import SigningKey

from chains.evm.adapter import EvmAddressCodec
from chains.evm.tx import native_payment, sign
from watcher.core.withdrawals import (
    BroadcastOutcome,
    Fees,
    MachineConfig,
    NonceBinding,
    SignedTx,
    Spend,
    WithdrawalBook,
)
from watcher.types import Address, AssetSymbol, BlockHash, ChainId, TxId
from watcher.withdrawals.intake import (
    Accepted,
    AssetRule,
    ChainRule,
    IntakePolicy,
    canonical_bytes,
    evaluate,
)
from watcher.withdrawals.signer import HotKeySigner

ETH = ChainId("eth")
CFG = MachineConfig(confirmations=12, stuck_blocks=10, fee_cap=Fees(10**12, 10**10), uses_nonces=True)
TO = Address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")


def records(n: int, sk: SigningKey) -> list[bytes]:
    out = []
    for i in range(n):
        body = {"request_id": f"w-{i}", "chain": "eth", "asset": "ETH", "to_address": TO,
                "amount": str(1 + i)}
        body["signature"] = base64.b64encode(sk.sign(canonical_bytes(body)).signature).decode()
        out.append(json.dumps(body).encode())
    return out


def fill(book: WithdrawalBook, accepted: list[Accepted], confirm: bool) -> None:
    for i, a in enumerate(accepted):
        rid = a.request.request_id
        book.accept(a.request)
        book.funds(rid, True)
        txid = TxId(f"0x{i:064x}")
        book.signed(rid, SignedTx(txid, bytes(120), NonceBinding(i), Fees(10**10, 10**9), 21_000 * 10**10))
        book.broadcast_result(rid, txid, BroadcastOutcome.OK, 100)
        if confirm:
            book.block_added(101 + i, BlockHash(f"0x{i:064x}"), [Spend(f"nonce:{i}", txid)])
            book.tip(101 + i + 12, None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--in-flight", default="1000,10000")
    args = ap.parse_args()
    sk = SigningKey(bytes(32))
    policy = IntakePolicy({"ledger": bytes(sk.verify_key)}, {"eth": ChainRule(ETH, EvmAddressCodec(), {
        "ETH": AssetRule(AssetSymbol("ETH"), None, 18, 10**30, 10**40)})})
    recs = records(args.requests, sk)
    book = WithdrawalBook(ETH, CFG)
    book.nonce_counts(0, 0)
    t0 = time.perf_counter()
    verdicts = [evaluate(r, 1_000, policy, {ETH: book}) for r in recs]
    dt = time.perf_counter() - t0
    accepted = [v for v in verdicts if isinstance(v, Accepted)]
    assert len(accepted) == len(recs)
    print(f"intake: {len(recs) / dt:,.0f} verdicts/s ({dt / len(recs) * 1e6:.0f} us each)")

    t0 = time.perf_counter()
    fill(book, accepted, confirm=True)
    dt = time.perf_counter() - t0
    print(f"machine: {len(accepted) / dt:,.0f} full lifecycles/s (tip scans every withdrawal still held)")

    signer = HotKeySigner("bench", bytes([1]) * 32)
    n = 300
    loop = asyncio.new_event_loop()
    t0 = time.perf_counter()
    for i in range(n):
        loop.run_until_complete(sign(native_payment(1, i, TO, 1, Fees(10**10, 10**9)), signer))
    dt = time.perf_counter() - t0
    loop.close()
    print(f"EIP-1559 sign + recover check ({type(KeyAPI().backend).__name__}): {n / dt:,.0f} tx/s")

    for size in (int(x) for x in args.in_flight.split(",")):
        b = WithdrawalBook(ETH, CFG)
        b.nonce_counts(0, 0)
        fill(b, [Accepted(ETH, a.request, "ledger") for a in
                 (v for v in (evaluate(r, 1_000, policy, {}) for r in records(size, sk)))
                 if isinstance(a, Accepted)], confirm=False)
        t0 = time.perf_counter()
        snap = b.snapshot()
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        WithdrawalBook.restore(snap, ETH, CFG)
        dec = time.perf_counter() - t0
        print(f"snapshot, {size:,} in flight: {len(snap) / 1e6:.2f} MB, encode {enc * 1e3:.1f} ms, "
              f"restore {dec * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
