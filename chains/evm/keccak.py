"""Keccak-256 and EIP-55 without eth_utils: the daemon's start-up skips pydantic.

``eth_utils`` imports pydantic and the rest of its package for two functions; on the
benchmark machine that was the largest single item of ``watcher run``'s start-up
(``python -X importtime``). pycryptodome (already a dependency of web3 through
eth-hash) computes the hash; EIP-55 is a few lines over it.
"""

from __future__ import annotations

import re

from Crypto.Hash import keccak as _keccak

_LOWER_ADDRESS_RE = re.compile(r"0x[0-9a-f]{40}\Z")


def keccak256(data: bytes) -> bytes:
    return _keccak.new(digest_bits=256, data=data).digest()


def checksum_lower(lower: str) -> str:
    """The EIP-55 form of a lower-case ``0x`` address: each hex letter upper-cased where the
    matching nibble of keccak256(the 40 lower-case digits as ASCII) is 8 or more."""
    if not _LOWER_ADDRESS_RE.match(lower):
        raise ValueError("not a lower-case 0x address of 40 hex digits")
    digits = lower[2:]
    nibbles = keccak256(digits.encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(n, 16) >= 8 else c for c, n in zip(digits, nibbles,
                                                                              strict=False))
