"""Base58Check and Bech32/Bech32m (BIP173, BIP350): text <-> bytes, strictly.

Every rejection raises :class:`watcher.errors.InvalidAddress` naming the reason (bad
character, checksum, mixed case, padding, length); nothing here knows about networks.
"""

from __future__ import annotations

import hashlib
from enum import Enum

from watcher.errors import InvalidAddress

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(B58_ALPHABET)}

MAX_BASE58_LENGTH = 64
"""Longer text is rejected before any arithmetic (addresses are 25 to 35 characters)."""


def _checksum(payload: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]


def base58check_encode(payload: bytes) -> str:
    """``payload`` (version byte and data) with its 4-byte double-SHA256 checksum."""
    raw = payload + _checksum(payload)
    n = int.from_bytes(raw, "big")
    out: list[str] = []
    while n:
        n, r = divmod(n, 58)
        out.append(B58_ALPHABET[r])
    zeros = len(raw) - len(raw.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def base58check_decode(text: str) -> bytes:
    """The payload (version byte and data) of Base58Check text."""
    if not text:
        raise InvalidAddress("empty base58 text")
    if len(text) > MAX_BASE58_LENGTH:
        raise InvalidAddress(f"base58 text too long ({len(text)} characters)")
    n = 0
    for pos, c in enumerate(text):
        digit = _B58_INDEX.get(c)
        if digit is None:
            raise InvalidAddress(f"invalid base58 character {c!r} at position {pos}")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    raw = b"\0" * zeros + body
    if len(raw) < 5:
        raise InvalidAddress("base58 text too short for a checksum")
    payload, check = raw[:-4], raw[-4:]
    if _checksum(payload) != check:
        raise InvalidAddress("bad base58check checksum")
    return payload


# ------------------------------------------------------------------ bech32

BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_INDEX = {c: i for i, c in enumerate(BECH32_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
BECH32M_CONST = 0x2BC830A3
MAX_BECH32_LENGTH = 90


class Bech32Variant(Enum):
    BECH32 = 1
    """BIP173: witness version 0."""
    BECH32M = BECH32M_CONST
    """BIP350: witness versions 1 to 16."""


# The generator terms for each value of the top 5 bits, XORed ahead of time: one lookup per
# character instead of BIP173's five-step inner loop (10 million registrations are parsed
# at start).
_GEN_TABLE = tuple(
    _xor for _xor in (
        (_GEN[0] if t & 1 else 0) ^ (_GEN[1] if t & 2 else 0) ^ (_GEN[2] if t & 4 else 0)
        ^ (_GEN[3] if t & 8 else 0) ^ (_GEN[4] if t & 16 else 0)
        for t in range(32)))


def _polymod(values: list[int]) -> int:
    chk = 1
    table = _GEN_TABLE
    for v in values:
        chk = ((chk & 0x1FFFFFF) << 5 ^ v) ^ table[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_decode(text: str) -> tuple[str, list[int], Bech32Variant]:
    """HRP (lower case), 5-bit data without the checksum, and which checksum matched."""
    if len(text) > MAX_BECH32_LENGTH:
        raise InvalidAddress(f"bech32 text longer than {MAX_BECH32_LENGTH} characters")
    for c in text:
        if not 33 <= ord(c) <= 126:
            raise InvalidAddress(f"bech32 character out of range: {c!r}")
    if text.lower() != text and text.upper() != text:
        raise InvalidAddress("mixed-case bech32")
    lower = text.lower()
    sep = lower.rfind("1")
    if sep < 0:
        raise InvalidAddress("no bech32 separator '1'")
    if sep == 0:
        raise InvalidAddress("empty bech32 human-readable part")
    if sep + 7 > len(lower):
        raise InvalidAddress("bech32 checksum too short")
    hrp = lower[:sep]
    data: list[int] = []
    for c in lower[sep + 1:]:
        d = _BECH32_INDEX.get(c)
        if d is None:
            raise InvalidAddress(f"invalid bech32 data character {c!r}")
        data.append(d)
    check = _polymod(_hrp_expand(hrp) + data)
    if check == Bech32Variant.BECH32.value:
        variant = Bech32Variant.BECH32
    elif check == Bech32Variant.BECH32M.value:
        variant = Bech32Variant.BECH32M
    else:
        raise InvalidAddress("bad bech32 checksum")
    return hrp, data[:-6], variant


def bech32_encode(hrp: str, data: list[int], variant: Bech32Variant) -> str:
    values = _hrp_expand(hrp) + data
    poly = _polymod([*values, 0, 0, 0, 0, 0, 0]) ^ variant.value
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(BECH32_CHARSET[d] for d in data + checksum)


def _convert_bits(data: list[int] | bytes, from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits:
        raise InvalidAddress("bech32 padding of more than 4 bits")
    elif (acc << (to_bits - bits)) & maxv:
        raise InvalidAddress("non-zero bech32 padding")
    return out


def segwit_decode(text: str) -> tuple[str, int, bytes]:
    """HRP, witness version and program of a segwit address (BIP173 + BIP350 rules)."""
    hrp, data, variant = bech32_decode(text)
    if not data:
        raise InvalidAddress("empty bech32 data section")
    version = data[0]
    if version > 16:
        raise InvalidAddress(f"invalid witness version {version}")
    program = bytes(_convert_bits(data[1:], 5, 8, False))
    if not 2 <= len(program) <= 40:
        raise InvalidAddress(f"invalid witness program length {len(program)}")
    if version == 0 and len(program) not in (20, 32):
        raise InvalidAddress(f"invalid witness v0 program length {len(program)} (BIP141)")
    expected = Bech32Variant.BECH32 if version == 0 else Bech32Variant.BECH32M
    if variant is not expected:
        raise InvalidAddress(f"witness v{version} needs a {expected.name.lower()} checksum, "
                             f"got {variant.name.lower()}")
    return hrp, version, program


def segwit_encode(hrp: str, version: int, program: bytes) -> str:
    variant = Bech32Variant.BECH32 if version == 0 else Bech32Variant.BECH32M
    return bech32_encode(hrp, [version, *_convert_bits(program, 8, 5, True)], variant)
