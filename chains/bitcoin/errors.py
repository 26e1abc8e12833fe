"""Classification of every Bitcoin node failure, done once, here, for Bitcoin Core and btcd.

Nothing above :mod:`chains.bitcoin.rpc` looks at a message, a code or an HTTP
status: each failure becomes a :class:`BitcoinRpcError` (a node's JSON-RPC
error object) or a plain :class:`ChainError` (transport, HTTP), and the
error carries a :class:`Reason` (what the node meant) beside its
:class:`ErrorKind` (what the caller may do)::

    ChainError                         watcher.errors
    ├── NodeAnswerInvalid              the answer fails a check (RETRIABLE elsewhere)
    └── BitcoinRpcError                a JSON-RPC error object; .reason, .code
          reason               kind            Core                         btcd
          NOT_FOUND            RETRIABLE       -5 "Block not found",        -5 same texts
                                               "No such mempool or
                                               blockchain transaction"
          NOT_IN_MAIN_CHAIN    RETRIABLE       (verbose header of a stale   -32603 "block <h> is not
                                               block: confirmations -1)     in the main chain"
          OUT_OF_RANGE         RETRIABLE       -8 "Block height out of      -1 "Block number out
                                               range"                       of range"
          WARMUP               RETRIABLE       -28 "Loading block index..." -
          ALREADY_IN_CHAIN     ALREADY_KNOWN   -27 "Transaction outputs     -27 "transaction already
                                               already in utxo set"         exists in blockchain"
          ALREADY_IN_MEMPOOL   ALREADY_KNOWN   -26 "txn-already-in-mempool" -26 "already have
                                                                            transaction in mempool"
          FEE_TOO_LOW          UNDERPRICED     -26 "insufficient fee" (RBF),-26 "insufficient
                                               "min relay fee not met",     priority", RBF "replacement
                                               "mempool min fee not met"    ... insufficient absolute
                                                                            fee" / "fee rate"
          CONFLICT             FINAL           -26 "txn-mempool-conflict"   -26 "output already spent
                                                                            in mempool"
          INPUTS_SPENT         FINAL           -25 "bad-txns-inputs-        -25 "orphan transaction
                                               missingorspent"              ... references outputs of
                                                                            unknown or fully-spent
                                                                            transaction"
          REJECTED             FINAL           -26 and -25 otherwise        -25, -22
          METHOD_NOT_FOUND     FINAL           -32601 (HTTP 404)            -32601, -1 "Command
                                                                            unimplemented"
          BAD_REQUEST          FINAL           -32700 -32600 -32602 -3 -8   same, -22 "must be
                                               -22                          hexadecimal"
          OTHER                by code         anything else: -32603 and unknown server codes
                                               RETRIABLE, application codes FINAL

A refused ``sendrawtransaction`` becomes a withdrawal :class:`BroadcastOutcome` here too,
in one table (:func:`broadcast_outcome`): ALREADY_IN_MEMPOOL and ALREADY_IN_CHAIN are
ALREADY_KNOWN, FEE_TOO_LOW (min relay fee, RBF "rejecting replacement", insufficient
absolute fee or fee rate) is UNDERPRICED, INPUTS_SPENT ("missing inputs", "already
spent", bad-txns-inputs-missingorspent) is CONSUMED; anything else is sent again later.

The btcd texts were read from btcd v0.26 itself (``tests/integration/test_btc_rpc.py``
provokes each one); Core's are in ``tests/fixtures/bitcoin/core-v27.json``.
Messages are matched before codes because the two nodes share codes for
different things (btcd's -1 is "out of range", Core's -1 any exception).
Transport failures and HTTP statuses without a JSON error body are
classified by :func:`chains.evm.errors.transport_error` and
:func:`http_error` rules, shared across families. The legacy Core server
(and btcd for some errors) answers an RPC error with HTTP 500 or 404 *and a
JSON body*: that body, not the status, is the answer.

No message, URL, credential or request of a call is put in an exception:
only the endpoint's configured name and the node's own error text (which
names no secret), cut to 300 characters.
"""

from __future__ import annotations

from enum import StrEnum

from chains.evm.errors import classify_exception, classify_http_status, transport_error
from watcher.core.withdrawals import BroadcastOutcome
from watcher.errors import ChainError, ErrorKind, json_rpc_error_fields

__all__ = [
    "BitcoinRpcError",
    "Reason",
    "broadcast_outcome",
    "classify",
    "classify_exception",
    "http_error",
    "rpc_error_from_object",
    "transport_error",
]


class Reason(StrEnum):
    """What a node meant by an error, the same for Bitcoin Core and btcd."""

    NOT_FOUND = "not_found"
    NOT_IN_MAIN_CHAIN = "not_in_main_chain"
    OUT_OF_RANGE = "out_of_range"
    WARMUP = "warmup"
    ALREADY_IN_CHAIN = "already_in_chain"
    ALREADY_IN_MEMPOOL = "already_in_mempool"
    FEE_TOO_LOW = "fee_too_low"
    CONFLICT = "conflict"
    """The transaction's inputs are spent by another mempool transaction and it does not
    replace it (no RBF signal, or replacement rules not met other than by fee)."""
    INPUTS_SPENT = "inputs_spent"
    """An input is missing or already spent on chain: the UTXO form of "nonce too low"."""
    REJECTED = "rejected"
    METHOD_NOT_FOUND = "method_not_found"
    BAD_REQUEST = "bad_request"
    OTHER = "other"


_KIND: dict[Reason, ErrorKind] = {
    Reason.NOT_FOUND: ErrorKind.RETRIABLE,
    Reason.NOT_IN_MAIN_CHAIN: ErrorKind.RETRIABLE,
    Reason.OUT_OF_RANGE: ErrorKind.RETRIABLE,
    Reason.WARMUP: ErrorKind.RETRIABLE,
    Reason.ALREADY_IN_CHAIN: ErrorKind.ALREADY_KNOWN,
    Reason.ALREADY_IN_MEMPOOL: ErrorKind.ALREADY_KNOWN,
    Reason.FEE_TOO_LOW: ErrorKind.UNDERPRICED,
    Reason.CONFLICT: ErrorKind.FINAL,
    Reason.INPUTS_SPENT: ErrorKind.FINAL,
    Reason.REJECTED: ErrorKind.FINAL,
    Reason.METHOD_NOT_FOUND: ErrorKind.FINAL,
    Reason.BAD_REQUEST: ErrorKind.FINAL,
}

# (needle in the lower-cased message, reason); the first match wins, so the specific
# forms come before the general ones ("insufficient fee" before "txn-mempool-conflict":
# Core's RBF refusal for fee names both).
_MESSAGE_RULES: tuple[tuple[str, Reason], ...] = (
    ("not in the main chain", Reason.NOT_IN_MAIN_CHAIN),
    ("out of range", Reason.OUT_OF_RANGE),
    ("loading block index", Reason.WARMUP),
    ("verifying blocks", Reason.WARMUP),
    ("rewinding blocks", Reason.WARMUP),
    ("in warmup", Reason.WARMUP),
    ("already in block chain", Reason.ALREADY_IN_CHAIN),
    ("already in utxo set", Reason.ALREADY_IN_CHAIN),
    ("transaction already exists", Reason.ALREADY_IN_CHAIN),
    ("txn-already-in-mempool", Reason.ALREADY_IN_MEMPOOL),
    ("txn-already-known", Reason.ALREADY_IN_MEMPOOL),
    ("already have transaction", Reason.ALREADY_IN_MEMPOOL),
    ("insufficient fee", Reason.FEE_TOO_LOW),
    ("insufficient absolute fee", Reason.FEE_TOO_LOW),
    ("min relay fee not met", Reason.FEE_TOO_LOW),
    ("mempool min fee not met", Reason.FEE_TOO_LOW),
    ("insufficient priority", Reason.FEE_TOO_LOW),
    ("under the required amount", Reason.FEE_TOO_LOW),
    ("rejecting replacement", Reason.FEE_TOO_LOW),
    ("txn-mempool-conflict", Reason.CONFLICT),
    ("already spent in mempool", Reason.CONFLICT),
    ("in the memory pool", Reason.CONFLICT),
    ("bad-txns-inputs-missingorspent", Reason.INPUTS_SPENT),
    ("missing inputs", Reason.INPUTS_SPENT),
    ("orphan transaction", Reason.INPUTS_SPENT),
    ("already spent", Reason.INPUTS_SPENT),
    ("block not found", Reason.NOT_FOUND),
    ("no such mempool or blockchain transaction", Reason.NOT_FOUND),
    ("no such mempool transaction", Reason.NOT_FOUND),
    ("no information available about transaction", Reason.NOT_FOUND),
    ("method not found", Reason.METHOD_NOT_FOUND),
    ("command unimplemented", Reason.METHOD_NOT_FOUND),  # btcd's getnetworkinfo
    ("must be hexadecimal", Reason.BAD_REQUEST),
)

_CODE_RULES: dict[int, Reason] = {
    -5: Reason.NOT_FOUND,
    -28: Reason.WARMUP,
    -27: Reason.ALREADY_IN_CHAIN,
    -26: Reason.REJECTED,
    -25: Reason.REJECTED,
    -32601: Reason.METHOD_NOT_FOUND,
    -32700: Reason.BAD_REQUEST,
    -32600: Reason.BAD_REQUEST,
    -32602: Reason.BAD_REQUEST,
    -3: Reason.BAD_REQUEST,
    -8: Reason.BAD_REQUEST,
    -22: Reason.BAD_REQUEST,
}


class BitcoinRpcError(ChainError):
    """A JSON-RPC error object a Bitcoin node answered; ``code`` and ``rpc_message`` are
    the node's, ``reason`` what it means on either node."""

    def __init__(self, reason: Reason, kind: ErrorKind, code: int | None, rpc_message: str,
                 endpoint: str = "") -> None:
        super().__init__(kind, f"json-rpc error {code} ({reason.value}): {rpc_message}",
                         endpoint)
        self.reason = reason
        self.code = code
        self.rpc_message = rpc_message

    def with_endpoint(self, endpoint: str) -> BitcoinRpcError:
        return BitcoinRpcError(self.reason, self.kind, self.code, self.rpc_message, endpoint)


def classify(code: int | None, message: str) -> tuple[Reason, ErrorKind]:
    """Reason and kind of a JSON-RPC error object, by message first, then by code."""
    text = message.lower()
    reason = next((r for needle, r in _MESSAGE_RULES if needle in text), None)
    if reason is None and code is not None:
        reason = _CODE_RULES.get(code)
    if reason is not None:
        return reason, _KIND[reason]
    if code is None or code == -32603 or -32099 <= code <= -32000:
        return Reason.OTHER, ErrorKind.RETRIABLE  # internal or server errors
    return Reason.OTHER, ErrorKind.FINAL  # application codes (-1 misc, -4 wallet, ...)


def rpc_error_from_object(obj: object, endpoint: str) -> BitcoinRpcError:
    """A :class:`BitcoinRpcError` from a JSON-RPC ``error`` member, whatever its shape."""
    code, message = json_rpc_error_fields(obj)
    reason, kind = classify(code, message)
    return BitcoinRpcError(reason, kind, code, message, endpoint)


def http_error(status: int, endpoint: str) -> ChainError:
    """A non-200 answer without a JSON error body (Core's 401, 403, 503 "work queue depth
    exceeded" come as plain text)."""
    return ChainError(classify_http_status(status), f"HTTP status {status}", endpoint)


_BROADCAST: dict[Reason, BroadcastOutcome] = {
    Reason.ALREADY_IN_MEMPOOL: BroadcastOutcome.ALREADY_KNOWN,
    Reason.ALREADY_IN_CHAIN: BroadcastOutcome.ALREADY_KNOWN,
    Reason.FEE_TOO_LOW: BroadcastOutcome.UNDERPRICED,
    Reason.INPUTS_SPENT: BroadcastOutcome.CONSUMED,
}


def broadcast_outcome(exc: ChainError) -> BroadcastOutcome:
    """What a failed ``sendrawtransaction`` means for a withdrawal; anything not in the
    table (a conflict, a transport failure, a policy refusal) is what its kind means to
    the book (:meth:`BroadcastOutcome.of`): the recorded bytes are sent again later, and
    nothing else is ever signed for the binding."""
    if isinstance(exc, BitcoinRpcError) and exc.reason in _BROADCAST:
        return _BROADCAST[exc.reason]
    if exc.kind is ErrorKind.NONCE_TOO_LOW:
        return BroadcastOutcome.RETRIABLE  # no nonces on a UTXO chain: never a "consumed" hint
    return BroadcastOutcome.of(exc.kind)
