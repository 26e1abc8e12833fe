"""Keccak-256 and EIP-55 without eth_utils: the daemon's start-up skips pydantic.

``eth_utils`` imports pydantic and the rest of its package for two functions; on the
benchmark machine that was the largest single item of ``watcher run``'s start-up
(``python -X importtime``). pycryptodome (already a dependency of web3 through
eth-hash) computes the hash; EIP-55 is a few lines over it.
"""

from __future__ import annotations

import re
import sys
from types import ModuleType
from typing import TYPE_CHECKING


def _load_keccak() -> ModuleType:
    """pycryptodome's keccak, bound through ctypes rather than cffi.

    pycryptodome binds its compiled code through cffi whenever cffi is importable, and
    cffi's ABI mode parses the C declarations with pycparser at import: ~75 ms of CPU on
    the daemon's start-up critical path (0.3 s on a loaded machine), where its ctypes
    binding of the same compiled code loads in ~25 ms and hashes no slower (measured
    7-8 us against 9-18 us a 64-byte hash). Only when nothing imported cffi before: then
    the binding already chosen is used as it is.
    """
    blocked = "cffi" not in sys.modules
    if blocked:
        sys.modules["cffi"] = None  # type: ignore[assignment]  # "import cffi" fails
    try:
        from Crypto.Hash import keccak
    finally:
        if blocked and sys.modules.get("cffi", ...) is None:
            del sys.modules["cffi"]
    return keccak


if TYPE_CHECKING:
    from Crypto.Hash import keccak as _keccak
else:
    _keccak = _load_keccak()

_LOWER_ADDRESS_RE = re.compile(r"0x[0-9a-f]{40}\Z")


def keccak256(data: bytes) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


_HIGH_NIBBLE = bytes.maketrans(b"0123456789abcdef", b"\0" * 8 + b"\x20" * 8)
"""A hash nibble's hex digit to 0x20 where the nibble is 8 or more (EIP-55: upper-case)."""
_LETTER = bytes.maketrans(b"0123456789abcdef", b"\0" * 10 + b"\x20" * 6)
"""An address digit to 0x20 where it is a letter (the only digits that have a case)."""


def checksum_lower(lower: str) -> str:
    """The EIP-55 form of a lower-case ``0x`` address: each hex letter upper-cased where the
    matching nibble of keccak256(the 40 lower-case digits as ASCII) is 8 or more.

    In whole-string operations (ASCII ``a``-``f`` xor 0x20 is ``A``-``F``), not a loop
    over characters: each address new to a process costs one of these (2x cheaper)."""
    if not _LOWER_ADDRESS_RE.match(lower):
        raise ValueError("not a lower-case 0x address of 40 hex digits")
    digits = lower[2:].encode("ascii")
    nibbles = keccak256(digits).hex()[:40].encode("ascii")
    flip = int.from_bytes(nibbles.translate(_HIGH_NIBBLE), "big") & \
        int.from_bytes(digits.translate(_LETTER), "big")
    return "0x" + (int.from_bytes(digits, "big") ^ flip).to_bytes(40, "big").decode("ascii")
