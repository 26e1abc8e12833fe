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


class NodeAnswerInvalid(ChainError):
    """A node answered something that fails our checks (wrong hash, broken link, bad shape)."""

    def __init__(self, message: str, endpoint: str = "") -> None:
        super().__init__(ErrorKind.RETRIABLE, message, endpoint)


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
