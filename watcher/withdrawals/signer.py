"""The local hot-key :class:`watcher.ports.Signer`: a secp256k1 key from a mounted secret
file or an environment variable.

The key is read once, at start, from a place the configuration only *names* (a file
path or a variable name), never from the configuration itself. It is held in a
:class:`_Secret` whose ``repr`` and ``str`` are redacted, so neither a log line, a
traceback renderer nor a debugger's ``repr`` of the signer shows it; errors name the
source, never the content. An HSM or a remote signer implements the same port.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from eth_keys.datatypes import PrivateKey
from eth_utils.exceptions import ValidationError

from watcher.errors import SignerError
from watcher.ports import RecoverableSignature

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class _Secret:
    """32 key bytes that never print."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def reveal(self) -> bytes:
        return self._value

    def __repr__(self) -> str:
        return "<secret redacted>"

    __str__ = __repr__

    def __reduce__(self) -> str:
        raise TypeError("a secret is not serialisable")


def parse_key_text(text: str, source: str) -> bytes:
    """``0x``-prefixed or bare hex of 32 bytes, surrounding whitespace ignored."""
    t = text.strip()
    if t.startswith(("0x", "0X")):
        t = t[2:]
    if len(t) != 64:
        raise SignerError(f"hot key from {source} is not 32 bytes of hex")
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raise SignerError(f"hot key from {source} is not 32 bytes of hex") from None
    value = int.from_bytes(raw, "big")
    if not 0 < value < _SECP256K1_N:
        raise SignerError(f"hot key from {source} is not a valid secp256k1 key")
    return raw


class HotKeySigner:
    """Signs digests with a key held in this process (deterministic RFC 6979, low s)."""

    __slots__ = ("_name", "_public", "_secret")

    def __init__(self, name: str, key: bytes) -> None:
        self._name = name
        self._secret = _Secret(key)
        try:
            self._public = PrivateKey(key).public_key.to_bytes()
        except ValidationError:
            raise SignerError(f"hot key {name} is not a valid secp256k1 key") from None

    @classmethod
    def from_file(cls, name: str, path: Path) -> HotKeySigner:
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not ASCII"
            raise SignerError(f"hot key {name}: cannot read the secret file {path}: {reason}") from None
        return cls(name, parse_key_text(text, f"file {path}"))

    @classmethod
    def from_env(cls, name: str, variable: str, environ: Mapping[str, str] | None = None) -> HotKeySigner:
        env = os.environ if environ is None else environ
        text = env.get(variable)
        if not text:
            raise SignerError(f"hot key {name}: environment variable {variable} is not set")
        return cls(name, parse_key_text(text, f"environment variable {variable}"))

    @property
    def name(self) -> str:
        return self._name

    @property
    def public_key(self) -> bytes:
        return self._public

    async def sign_digest(self, digest: bytes) -> RecoverableSignature:
        if len(digest) != 32:
            raise SignerError(f"hot key {self._name}: a digest has 32 bytes, got {len(digest)}")
        sig = PrivateKey(self._secret.reveal()).sign_msg_hash(digest)
        return RecoverableSignature(r=sig.r, s=sig.s, y_parity=sig.v)

    def __repr__(self) -> str:
        return f"HotKeySigner(name={self._name!r})"
