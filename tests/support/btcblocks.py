"""Writes Bitcoin transactions and blocks for tests and ``bench/btc_scan.py``.

A serializer independent of :mod:`chains.bitcoin.block` (it writes, the parser reads):
txids come from serializing without the witness, the merkle root from a recursive
definition, so the parser's results are checked against another path to the same bytes.
:func:`mainnet_like_block` builds a deterministic (seeded) block shaped like a recent
mainnet one.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field


def dsha(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def push(data: bytes) -> bytes:
    return compact_size(len(data)) + data


@dataclass
class In:
    prev_txid: bytes
    """Internal byte order."""
    vout: int
    script_sig: bytes = b""
    sequence: int = 0xFFFFFFFF
    witness: list[bytes] = field(default_factory=list)


@dataclass
class Out:
    value: int
    script: bytes


@dataclass
class Tx:
    ins: list[In]
    outs: list[Out]
    version: int = 2
    locktime: int = 0

    @property
    def has_witness(self) -> bool:
        return any(i.witness for i in self.ins)

    def serialize(self, witness: bool = True) -> bytes:
        w = witness and self.has_witness
        parts = [self.version.to_bytes(4, "little")]
        if w:
            parts.append(b"\x00\x01")
        parts.append(compact_size(len(self.ins)))
        for i in self.ins:
            parts += [i.prev_txid, i.vout.to_bytes(4, "little"), push(i.script_sig),
                      i.sequence.to_bytes(4, "little")]
        parts.append(compact_size(len(self.outs)))
        for o in self.outs:
            parts += [o.value.to_bytes(8, "little"), push(o.script)]
        if w:
            for i in self.ins:
                parts.append(compact_size(len(i.witness)))
                parts += [push(item) for item in i.witness]
        parts.append(self.locktime.to_bytes(4, "little"))
        return b"".join(parts)

    def txid(self) -> bytes:
        """Internal byte order."""
        return dsha(self.serialize(witness=False))

    def txid_hex(self) -> str:
        return self.txid()[::-1].hex()

    def wtxid_hex(self) -> str:
        return dsha(self.serialize())[::-1].hex()


def merkle(hashes: list[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashes[0]
    if len(hashes) % 2:
        hashes = [*hashes, hashes[-1]]
    return merkle([dsha(hashes[i] + hashes[i + 1]) for i in range(0, len(hashes), 2)])


def coinbase(height: int, outs: list[Out]) -> Tx:
    script_sig = push(height.to_bytes(4, "little")) + b"\x00" * 4
    return Tx([In(bytes(32), 0xFFFFFFFF, script_sig)], outs, version=1)


def header(prev: bytes, root: bytes, time: int, bits: int = 0x207FFFFF, nonce: int = 0,
           version: int = 0x20000000) -> bytes:
    return (version.to_bytes(4, "little") + prev + root + time.to_bytes(4, "little")
            + bits.to_bytes(4, "little") + nonce.to_bytes(4, "little"))


def block(txs: list[Tx], prev: bytes = bytes(32), time: int = 1_700_000_000,
          root: bytes | None = None, serialized: list[bytes] | None = None) -> tuple[bytes, str]:
    """Raw block and its display hash; ``serialized`` overrides the transactions' bytes."""
    if root is None:
        root = merkle([t.txid() for t in txs])
    head = header(prev, root, time)
    body = serialized if serialized is not None else [t.serialize() for t in txs]
    return head + compact_size(len(body)) + b"".join(body), dsha(head)[::-1].hex()


# ------------------------------------------------------------------ scripts


def p2pkh(h: bytes) -> bytes:
    return b"\x76\xa9\x14" + h + b"\x88\xac"


def p2sh(h: bytes) -> bytes:
    return b"\xa9\x14" + h + b"\x87"


def p2wpkh(h: bytes) -> bytes:
    return b"\x00\x14" + h


def p2wsh(h: bytes) -> bytes:
    return b"\x00\x20" + h


def p2tr(h: bytes) -> bytes:
    return b"\x51\x20" + h


def op_return(data: bytes) -> bytes:
    return b"\x6a" + push(data)


# ------------------------------------------------------------------ a mainnet-sized block

_OUT_KINDS = (("p2wpkh", 45), ("p2tr", 22), ("p2sh", 12), ("p2pkh", 10), ("p2wsh", 7),
              ("op_return", 4))
_IN_KINDS = (("p2wpkh", 62), ("p2tr", 18), ("legacy", 15), ("p2wsh", 5))


def random_output_script(rng: random.Random, kind: str) -> bytes:
    if kind == "p2wpkh":
        return p2wpkh(rng.randbytes(20))
    if kind == "p2tr":
        return p2tr(rng.randbytes(32))
    if kind == "p2sh":
        return p2sh(rng.randbytes(20))
    if kind == "p2pkh":
        return p2pkh(rng.randbytes(20))
    if kind == "p2wsh":
        return p2wsh(rng.randbytes(32))
    return op_return(rng.randbytes(rng.choice((20, 32, 80))))


def _random_input(rng: random.Random, kind: str) -> In:
    prev = rng.randbytes(32)
    vout = rng.choice((0, 0, 1, 1, 2, 5))
    seq = rng.choice((0xFFFFFFFF, 0xFFFFFFFD, 0xFFFFFFFE))
    if kind == "legacy":
        sig = push(rng.randbytes(71)) + push(rng.randbytes(33))
        return In(prev, vout, sig, seq)
    if kind == "p2wpkh":
        return In(prev, vout, b"", seq, [rng.randbytes(72), rng.randbytes(33)])
    if kind == "p2tr":
        return In(prev, vout, b"", seq, [rng.randbytes(64)])
    # 2-of-3 multisig P2WSH: empty item, two signatures, the witness script
    return In(prev, vout, b"", seq, [b"", rng.randbytes(72), rng.randbytes(71),
                                     rng.randbytes(105)])


def _pick(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    return rng.choices([k for k, _ in table], [w for _, w in table])[0]


def mainnet_like_block(seed: int = 7, n_tx: int = 3500) -> tuple[bytes, str, list[Tx]]:
    """A deterministic block shaped like a recent mainnet one: about 1.3 MB for 3,500
    transactions, 2.7 outputs and 1.9 inputs a transaction on average, mostly segwit."""
    rng = random.Random(seed)
    txs = [coinbase(800_000, [Out(312_500_000, p2wpkh(rng.randbytes(20))),
                              Out(0, op_return(b"\xaa\x21\xa9\xed" + rng.randbytes(32)))])]
    for _ in range(n_tx - 1):
        n_in = rng.choices((1, 2, 3, 5, 12), (60, 24, 8, 6, 2))[0]
        n_out = rng.choices((1, 2, 3, 6, 25), (18, 62, 10, 7, 3))[0]
        in_kind = _pick(rng, _IN_KINDS)
        ins = [_random_input(rng, in_kind) for _ in range(n_in)]
        outs = [Out(rng.randrange(546, 5_000_000_000), random_output_script(rng, _pick(rng, _OUT_KINDS)))
                for _ in range(n_out)]
        txs.append(Tx(ins, outs, version=rng.choice((1, 2)), locktime=rng.choice((0, 799_999))))
    raw, block_hash = block(txs, prev=rng.randbytes(32))
    return raw, block_hash, txs
