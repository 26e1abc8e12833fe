"""Classification of every EVM node failure into an :class:`ErrorKind`, done once, here.

Nothing above the adapter looks at messages or codes: the RPC layer turns a
transport failure, an HTTP status or a JSON-RPC error object into a
:class:`ChainError` whose ``kind`` decides retries (RPC layer) and policy (core).

Messages are matched first because nodes disagree on codes (``nonce too low``
is -32000 on geth and -32003 on anvil); codes decide what no message names.
No message, code or URL of a request is ever put in an exception: only the
endpoint's configured name, since a URL may carry an API key.
"""

from __future__ import annotations

import os

from watcher.errors import ChainError, ErrorKind, json_rpc_error_fields
from watcher.runtime.httpclient import HttpError

# (needle in the lower-cased message, kind). Order matters: the first match wins, so the
# more specific "replacement transaction underpriced" is listed with the general form.
_MESSAGE_RULES: tuple[tuple[str, ErrorKind], ...] = (
    ("nonce too low", ErrorKind.NONCE_TOO_LOW),
    ("already known", ErrorKind.ALREADY_KNOWN),
    ("known transaction", ErrorKind.ALREADY_KNOWN),
    ("transaction already imported", ErrorKind.ALREADY_KNOWN),
    ("replacement transaction underpriced", ErrorKind.UNDERPRICED),
    ("transaction underpriced", ErrorKind.UNDERPRICED),
    ("header not found", ErrorKind.RETRIABLE),
    ("unknown block", ErrorKind.RETRIABLE),
    ("block not found", ErrorKind.RETRIABLE),
    ("missing trie node", ErrorKind.RETRIABLE),
    ("limit exceeded", ErrorKind.RETRIABLE),
    ("rate limit", ErrorKind.RETRIABLE),
    ("too many requests", ErrorKind.RETRIABLE),
    ("capacity exceeded", ErrorKind.RETRIABLE),
    ("timeout", ErrorKind.RETRIABLE),
    ("timed out", ErrorKind.RETRIABLE),
    ("try again", ErrorKind.RETRIABLE),
    ("temporarily unavailable", ErrorKind.RETRIABLE),
    ("method not found", ErrorKind.FINAL),
    ("does not exist/is not available", ErrorKind.FINAL),
    ("not supported", ErrorKind.FINAL),
    ("invalid params", ErrorKind.FINAL),
    ("invalid argument", ErrorKind.FINAL),
    ("execution reverted", ErrorKind.FINAL),
    # A send every node refuses until the hot wallet is funded (geth -32000, anvil -32003):
    # FINAL, so the pool does not try every endpoint and the payment backs off (same bytes).
    ("insufficient funds", ErrorKind.FINAL),
)

# Answers that only a smaller request can cure: FINAL for a retry, a cue to split.
_TOO_LARGE_NEEDLES = ("response too large", "batch too large", "too many batch",
                      "batch size", "request entity too large", "payload too large")

# JSON-RPC 2.0 and EIP-1474 codes.
_CODE_RULES: dict[int, ErrorKind] = {
    -32700: ErrorKind.FINAL,      # parse error: our request was not JSON
    -32600: ErrorKind.FINAL,      # invalid request
    -32601: ErrorKind.FINAL,      # method not found
    -32602: ErrorKind.FINAL,      # invalid params
    -32603: ErrorKind.RETRIABLE,  # internal error
    -32000: ErrorKind.RETRIABLE,  # server error, message unknown to us
    -32001: ErrorKind.RETRIABLE,  # resource not found (a block the node lacks)
    -32002: ErrorKind.RETRIABLE,  # resource unavailable
    -32003: ErrorKind.FINAL,      # transaction rejected
    -32004: ErrorKind.FINAL,      # method not supported
    -32005: ErrorKind.RETRIABLE,  # limit exceeded
    -32006: ErrorKind.FINAL,      # JSON-RPC version not supported
}

_RETRIABLE_HTTP = frozenset({401, 403, 404, 408, 425, 429})
"""Beside 5xx: statuses that concern this endpoint (auth, path, throttling), not the request,
so another endpoint may well answer."""


class RpcError(ChainError):
    """A JSON-RPC error object a node answered; ``code`` and ``rpc_message`` are the node's."""

    def __init__(self, kind: ErrorKind, code: int | None, rpc_message: str,
                 endpoint: str = "", too_large: bool = False) -> None:
        super().__init__(kind, f"json-rpc error {code}: {rpc_message}", endpoint)
        self.code = code
        self.rpc_message = rpc_message
        self.too_large = too_large


def classify_rpc_error(code: int | None, message: str) -> ErrorKind:
    """Kind of a JSON-RPC error object, by message first, then by code."""
    text = message.lower()
    for needle, kind in _MESSAGE_RULES:
        if needle in text:
            return kind
    if any(n in text for n in _TOO_LARGE_NEEDLES):
        return ErrorKind.FINAL
    if code is None:
        return ErrorKind.RETRIABLE
    if code in _CODE_RULES:
        return _CODE_RULES[code]
    if -32099 <= code <= -32000:
        return ErrorKind.RETRIABLE  # implementation-defined server errors
    return ErrorKind.FINAL  # application codes, e.g. 3 = execution reverted


def is_too_large(message: str) -> bool:
    """Whether the node refused a request for its size (only a smaller one can pass)."""
    text = message.lower()
    return any(n in text for n in _TOO_LARGE_NEEDLES)


def classify_http_status(status: int) -> ErrorKind:
    """Kind of a non-200 HTTP answer that carries no JSON-RPC error object."""
    if status >= 500 or status in _RETRIABLE_HTTP:
        return ErrorKind.RETRIABLE
    return ErrorKind.FINAL


def classify_exception(exc: BaseException) -> ErrorKind:
    """Kind of a transport failure: every network or timeout problem may pass on retry."""
    if isinstance(exc, ChainError):
        return exc.kind
    if isinstance(exc, TimeoutError | HttpError | OSError):
        return ErrorKind.RETRIABLE
    return ErrorKind.FINAL


def rpc_error_from_object(obj: object, endpoint: str) -> RpcError:
    """An :class:`RpcError` from a JSON-RPC ``error`` member, whatever its shape."""
    code, message = json_rpc_error_fields(obj)
    return RpcError(classify_rpc_error(code, message), code, message, endpoint,
                    too_large=is_too_large(message))


def http_error(status: int, endpoint: str) -> ChainError:
    if status == 413:
        return RpcError(ErrorKind.FINAL, None, "HTTP 413 request entity too large", endpoint,
                        too_large=True)
    return ChainError(classify_http_status(status), f"HTTP status {status}", endpoint)


def transport_error(exc: BaseException, endpoint: str) -> ChainError:
    """A :class:`ChainError` for a transport failure that names the endpoint, never its URL.

    OS errors' messages (and those of any HTTP library) may carry host, port or the full
    URL, so only the exception's class name (and an OS error's errno text) is kept.
    """
    if isinstance(exc, ChainError):
        return exc
    if isinstance(exc, TimeoutError):
        detail = "timed out"
    elif isinstance(exc, OSError) and exc.errno:
        detail = f"{type(exc).__name__}: {os.strerror(exc.errno)}"
    else:
        detail = type(exc).__name__
    return ChainError(classify_exception(exc), f"transport failure ({detail})", endpoint)
