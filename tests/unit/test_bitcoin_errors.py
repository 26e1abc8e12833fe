"""Every Bitcoin Core and btcd error text this project knows, classified once (table-driven).

The btcd rows are texts btcd v0.26 answered in ``tests/integration/test_btc_rpc.py``; the
Core rows are Core's documented codes and messages.
"""

from __future__ import annotations

import pytest

from chains.bitcoin.errors import Reason, classify, rpc_error_from_object
from watcher.errors import ErrorKind

TXID = "a473e41080b54d9cd4dcaf35e977f1abfec6ba7690cbab9c272809771d3a08ce"

R, F, K, U = ErrorKind.RETRIABLE, ErrorKind.FINAL, ErrorKind.ALREADY_KNOWN, ErrorKind.UNDERPRICED


@pytest.mark.parametrize(("node", "code", "message", "reason", "kind"), [
    # Bitcoin Core
    ("core", -5, "Block not found", Reason.NOT_FOUND, R),
    ("core", -5, "No such mempool or blockchain transaction. Use gettransaction for wallet "
                 "transactions.", Reason.NOT_FOUND, R),
    ("core", -8, "Block height out of range", Reason.OUT_OF_RANGE, R),
    ("core", -28, "Loading block index\u2026", Reason.WARMUP, R),
    ("core", -28, "Verifying blocks...", Reason.WARMUP, R),
    ("core", -27, "Transaction outputs already in utxo set", Reason.ALREADY_IN_CHAIN, K),
    ("core", -27, "Transaction already in block chain", Reason.ALREADY_IN_CHAIN, K),
    ("core", -26, "txn-already-in-mempool", Reason.ALREADY_IN_MEMPOOL, K),
    ("core", -26, "txn-already-known", Reason.ALREADY_IN_MEMPOOL, K),
    ("core", -26, "insufficient fee, rejecting replacement " + TXID + "; new feerate "
                  "0.00001000 BTC/kvB <= old feerate 0.00002000 BTC/kvB",
     Reason.FEE_TOO_LOW, U),
    ("core", -26, "min relay fee not met, 100 < 141", Reason.FEE_TOO_LOW, U),
    ("core", -26, "mempool min fee not met, 150 < 2000", Reason.FEE_TOO_LOW, U),
    ("core", -26, "txn-mempool-conflict", Reason.CONFLICT, F),
    ("core", -25, "bad-txns-inputs-missingorspent", Reason.INPUTS_SPENT, F),
    ("core", -25, "Missing inputs", Reason.INPUTS_SPENT, F),
    ("core", -26, "non-mandatory-script-verify-flag (Signature must be zero for failed "
                  "CHECK(MULTI)SIG operation)", Reason.REJECTED, F),
    ("core", -25, "bad-txns-in-belowout", Reason.REJECTED, F),
    ("core", -22, "TX decode failed", Reason.BAD_REQUEST, F),
    ("core", -8, "parameter 1 must be of length 64 (not 3, for 'abc')", Reason.BAD_REQUEST, F),
    ("core", -32601, "Method not found", Reason.METHOD_NOT_FOUND, F),
    ("core", -32603, "Internal error", Reason.OTHER, R),
    ("core", -1, "std::bad_alloc", Reason.OTHER, F),
    # btcd v0.26
    ("btcd", -5, "Block not found", Reason.NOT_FOUND, R),
    ("btcd", -5, "No information available about transaction " + TXID, Reason.NOT_FOUND, R),
    ("btcd", -1, "Block number out of range", Reason.OUT_OF_RANGE, R),
    ("btcd", -32603, "block " + TXID + " is not in the main chain",
     Reason.NOT_IN_MAIN_CHAIN, R),
    ("btcd", -26, "TX rejected: already have transaction in mempool " + TXID,
     Reason.ALREADY_IN_MEMPOOL, K),
    ("btcd", -27, "TX rejected: transaction already exists in blockchain",
     Reason.ALREADY_IN_CHAIN, K),
    ("btcd", -26, "TX rejected: " + TXID + ": replacement transaction has an insufficient "
                  "absolute fee: needs 2144, has 2000", Reason.FEE_TOO_LOW, U),
    ("btcd", -26, "TX rejected: " + TXID + ": replacement transaction has an insufficient "
                  "fee rate: needs more than 347222, has 13071", Reason.FEE_TOO_LOW, U),
    ("btcd", -26, "TX rejected: transaction " + TXID + " has insufficient priority "
                  "(2.7e+07 <= 5.76e+07)", Reason.FEE_TOO_LOW, U),
    ("btcd", -26, "TX rejected: output already spent in mempool: output=" + TXID + ":0, tx="
                  + TXID, Reason.CONFLICT, F),
    ("btcd", -25, "TX rejected: orphan transaction " + TXID + " references outputs of unknown "
                  "or fully-spent transaction " + TXID, Reason.INPUTS_SPENT, F),
    ("btcd", -22, "TX decode failed: unexpected EOF", Reason.BAD_REQUEST, F),
    ("btcd", -22, 'Argument must be hexadecimal string (not "zz")', Reason.BAD_REQUEST, F),
    ("btcd", -32602, "parameter #2 'verbosity' must be type int (got bool)",
     Reason.BAD_REQUEST, F),
    ("btcd", -32601, "Method not found", Reason.METHOD_NOT_FOUND, F),
    ("btcd", -1, "Command unimplemented", Reason.METHOD_NOT_FOUND, F),
    # Neither: no code, unknown server range
    ("any", None, "", Reason.OTHER, R),
    ("any", -32050, "something odd", Reason.OTHER, R),
])
def test_classification(node: str, code: int | None, message: str, reason: Reason,
                        kind: ErrorKind) -> None:
    assert classify(code, message) == (reason, kind)


def test_error_objects_of_any_shape_are_classified() -> None:
    err = rpc_error_from_object({"code": -5, "message": "Block not found"}, "core-0")
    assert (err.reason, err.kind, err.code, err.endpoint) == (Reason.NOT_FOUND, R, -5, "core-0")
    assert "core-0" in str(err) and "not_found" in str(err)
    odd = rpc_error_from_object("plain text error", "e")
    assert (odd.code, odd.rpc_message, odd.kind) == (None, "plain text error", R)
    weird = rpc_error_from_object({"code": True, "message": 7}, "e")
    assert (weird.code, weird.rpc_message) == (None, "")
    long = rpc_error_from_object({"code": -26, "message": "x" * 5000}, "e")
    assert len(long.rpc_message) == 300
    assert long.with_endpoint("other").endpoint == "other"
