"""Errors classified once, at the adapter edge; policy about them lives in the core.

An adapter turns every node or broker failure into a :class:`ChainError` or
:class:`SinkError` carrying an :class:`ErrorKind`. Nothing above the adapters
inspects exception messages.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    RETRIABLE = "retriable"
    """Timeouts, connection resets, 5xx, rate limits, a node missing a block it should have."""
    FINAL = "final"
    """The request itself is wrong; asking again, anywhere, gives the same answer."""
    NONCE_TOO_LOW = "nonce_too_low"
    ALREADY_KNOWN = "already_known"
    UNDERPRICED = "underpriced"
    FENCED = "fenced"
    """Another instance took over this chain's transactional id: stop at once."""


class WatcherError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(WatcherError):
    """Malformed configuration; names the key and the reason."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config {key}: {reason}")
        self.key = key
        self.reason = reason


class ChainError(WatcherError):
    def __init__(self, kind: ErrorKind, message: str, endpoint: str = "") -> None:
        super().__init__(f"[{kind.value}] {endpoint}: {message}" if endpoint else message)
        self.kind = kind
        self.endpoint = endpoint


class AnswerCheck(StrEnum):
    """Which check a node's answer failed: a bounded metric label, one per kind of lie."""

    SHAPE = "shape"
    """Not JSON, a missing field, a value of the wrong type or format."""
    BATCH = "batch"
    """A batch answer with a missing, repeated or unknown id, or another number of items."""
    BLOCK_HASH = "block_hash"
    """A block (or header) fetched by hash is another block, or names another height."""
    PARENT_LINK = "parent_link"
    """A header's parent or height disagrees with what the node said before."""
    NULL_BLOCK = "null_block"
    """``null`` (or "not found") for a block the node itself named."""
    LOGS = "logs"
    """Logs missing where the block's bloom filter says they may be, or of another block."""
    RECEIPTS = "receipts"
    """A receipt of another transaction or block, or missing."""
    TRACES = "traces"
    """Not one trace per transaction, or a trace of another transaction."""
    TXID = "txid"
    """A transaction whose recomputed id or merkle root disagrees with the block."""
    OTHER = "other"


class NodeAnswerInvalid(ChainError):
    """A node answered something that fails our checks (wrong hash, broken link, bad shape).

    Retriable: another endpoint (or the same one later) may answer correctly, and the
    endpoint pool counts it against the endpoint that answered (``check`` is the label).
    """

    def __init__(self, message: str, endpoint: str = "",
                 check: AnswerCheck = AnswerCheck.SHAPE) -> None:
        super().__init__(ErrorKind.RETRIABLE, message, endpoint)
        self.check = check


class ChainIdentityMismatch(WatcherError):
    """The node serves another chain than the one configured: never follow it."""


class InvalidAddress(WatcherError):
    pass


class SinkError(WatcherError):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"[{kind.value}] {message}")
        self.kind = kind


class ReorgBeyondWindow(WatcherError):
    """A reorg deeper than the window or below finality: a critical condition, never absorbed."""


class SignerError(WatcherError):
    """The signer could not sign (key unreadable, HSM unreachable, wrong answer).

    The message never holds the key, a digest's signature or a secret's path content.
    """


def json_rpc_error_fields(obj: object) -> tuple[int | None, str]:
    """``(code, message)`` of a JSON-RPC ``error`` member, whatever its shape (an object,
    a bare string, anything else): the code only when it is a real integer, the message
    cut to 300 characters. Each chain family classifies these once, at its edge."""
    code: int | None = None
    message = ""
    if isinstance(obj, dict):
        raw_code = obj.get("code")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            code = raw_code
        raw_message = obj.get("message")
        if isinstance(raw_message, str):
            message = raw_message[:300]
    elif isinstance(obj, str):
        message = obj[:300]
    return code, message
