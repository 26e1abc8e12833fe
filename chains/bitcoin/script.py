"""scriptPubKey <-> watched-address index key <-> address text.

The index key of a UTXO address is :data:`KEY_SIZE` (33) bytes: one type byte, then the
hash or witness program, zero-padded on the right::

    0x01 P2PKH   hash160 (20) + 12 zero bytes      76 a9 14 <20> 88 ac
    0x02 P2SH    hash160 (20) + 12 zero bytes      a9 14 <20> 87
    0x03 P2WPKH  program (20) + 12 zero bytes      00 14 <20>
    0x04 P2WSH   program (32)                      00 20 <32>
    0x05 P2TR    program (32)                      51 20 <32>
    0x06 other witness v1..v16 (2..40-byte programs other than v1/32): SHA-256 of the
         whole scriptPubKey, so 40-byte programs fit and the key stays one width

The type byte fixes the template, so a key names exactly one scriptPubKey (for 0x06 up to a
SHA-256 collision); keys are network-independent, the network only matters for text. The
key is chosen over the raw script (35 bytes padded) to keep 10 million keys under 1 GB in
:class:`watcher.core.addresses.AddressIndex` with room for its rebuild peak.

Anything else (OP_RETURN, bare multisig, P2PK, non-standard) has no key: nobody can
register an address for it, so it can never pay a watched address.
"""

from __future__ import annotations

import hashlib

from chains.bitcoin.encoding import base58check_encode, segwit_encode
from chains.bitcoin.networks import Network

KEY_SIZE = 33

P2PKH = 0x01
P2SH = 0x02
P2WPKH = 0x03
P2WSH = 0x04
P2TR = 0x05
WITNESS_OTHER = 0x06

KIND_NAMES = {P2PKH: "p2pkh", P2SH: "p2sh", P2WPKH: "p2wpkh", P2WSH: "p2wsh", P2TR: "p2tr",
              WITNESS_OTHER: "witness"}

_PAD12 = bytes(12)
_OP_0 = 0x00
_OP_1 = 0x51
_OP_16 = 0x60


def witness_script(version: int, program: bytes) -> bytes:
    """The scriptPubKey of a witness program: ``OP_n <push len> <program>``."""
    return bytes((_OP_0 if version == 0 else _OP_1 - 1 + version, len(program))) + program


def witness_key(version: int, program: bytes) -> bytes:
    """The index key of a witness program (the caller checked version and length)."""
    n = len(program)
    if version == 0 and n == 20:
        return bytes((P2WPKH,)) + program + _PAD12
    if version == 0 and n == 32:
        return bytes((P2WSH,)) + program
    if version == 1 and n == 32:
        return bytes((P2TR,)) + program
    return bytes((WITNESS_OTHER,)) + hashlib.sha256(witness_script(version, program)).digest()


def script_key(script: bytes) -> bytes | None:
    """The index key of a scriptPubKey, None when it is none of the address types.

    The reference definition; :mod:`chains.bitcoin.block` computes the same keys inline
    (a test holds the two equal).
    """
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return bytes((P2PKH,)) + script[3:23] + _PAD12
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return bytes((P2SH,)) + script[2:22] + _PAD12
    if 4 <= n <= 42 and script[1] == n - 2:
        op = script[0]
        if op == _OP_0:
            if n == 22:
                return bytes((P2WPKH,)) + script[2:] + _PAD12
            if n == 34:
                return bytes((P2WSH,)) + script[2:]
            return None  # v0 of another length is unspendable, never an address
        if _OP_1 <= op <= _OP_16:
            if op == _OP_1 and n == 34:
                return bytes((P2TR,)) + script[2:]
            return bytes((WITNESS_OTHER,)) + hashlib.sha256(script).digest()
    return None


def key_script(key: bytes) -> bytes:
    """The scriptPubKey of a key of the five standard types; ValueError otherwise."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"key must be {KEY_SIZE} bytes, got {len(key)}")
    kind, body = key[0], key[1:]
    if kind in (P2PKH, P2SH, P2WPKH) and body[20:] != _PAD12:
        raise ValueError("key padding is not zero")
    if kind == P2PKH:
        return b"\x76\xa9\x14" + body[:20] + b"\x88\xac"
    if kind == P2SH:
        return b"\xa9\x14" + body[:20] + b"\x87"
    if kind == P2WPKH:
        return b"\x00\x14" + body[:20]
    if kind == P2WSH:
        return b"\x00\x20" + body
    if kind == P2TR:
        return b"\x51\x20" + body
    raise ValueError(f"key type {kind:#04x} cannot be turned back into a script")


def script_address(script: bytes, net: Network) -> str | None:
    """Canonical address text of a scriptPubKey on ``net`` (lower-case bech32, base58 with
    the network's preferred version byte), None when it has none there."""
    n = len(script)
    if n == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return base58check_encode(bytes((net.p2pkh_version,)) + script[3:23])
    if n == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return base58check_encode(bytes((net.p2sh_version,)) + script[2:22])
    if net.bech32_hrp is None or not (4 <= n <= 42 and script[1] == n - 2):
        return None
    op = script[0]
    if op == _OP_0:
        if n not in (22, 34):
            return None
        return segwit_encode(net.bech32_hrp, 0, script[2:])
    if _OP_1 <= op <= _OP_16:
        return segwit_encode(net.bech32_hrp, op - _OP_1 + 1, script[2:])
    return None


def key_address(key: bytes, net: Network) -> str:
    """Canonical address text of a key of the five standard types on ``net`` (for events);
    ValueError for a ``WITNESS_OTHER`` key (hashed: use :func:`script_address`) or a
    segwit key on a network without segwit."""
    text = script_address(key_script(key), net)
    if text is None:
        raise ValueError(f"network {net.name} has no address for key type {key[0]:#04x}")
    return text
