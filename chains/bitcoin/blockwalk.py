"""The cost of a block: one walk over its raw transactions (offsets, txids, index keys) and
its merkle root. :mod:`chains.bitcoin.block` checks and wraps what these return.

One source, two ways to run it: the project's build (``setup.py``) compiles this module
with mypyc into a C extension that Python imports in preference to this file; without the
extension (no compiler, or a build told not to) the same source runs interpreted, ~4x
slower. :mod:`chains.bitcoin.walker` says which one runs. So this module is written for
mypyc as much as for CPython: module-level functions only (no closures, no nested
functions), typed locals, ``bytes`` indexed by ``int`` (a C load when compiled), and
nothing that behaves differently compiled (no reliance on ``int`` overflow, on
``__slots__`` or on monkeypatching). It imports nothing of the runtime and does no I/O.

Errors are those of :func:`walk`'s docstring, the same compiled and interpreted (a test
runs both on random and mutated blocks).
"""

from __future__ import annotations

import hashlib

from chains.bitcoin.script import HASHED, PADDING
from watcher.errors import NodeAnswerInvalid

Walked = tuple[int, list[int], list[bytes], list[bool], list[int], list[bytes]]
"""(end offset, tx start offsets + the end, txids in internal order, has-witness flags,
first output position of each transaction + the output count, one index key per output)."""

_NO_KEY = b""
_P2PKH_HEAD = b"\x76\xa9\x14"
_P2PKH_TAIL = b"\x88\xac"
_HASHED_PREFIX = bytes((HASHED,))
_PAD12 = PADDING[22]
_PAD11 = PADDING[23]
_PAD9 = PADDING[25]


def varint(buf: bytes, off: int) -> tuple[int, int]:
    """The CompactSize at ``off`` (first byte >= 0xfd) and the offset after it; IndexError
    when it runs past the end."""
    b = buf[off]
    if b == 0xFD:
        end = off + 3
    elif b == 0xFE:
        end = off + 5
    else:
        end = off + 9
    if end > len(buf):
        raise IndexError("varint beyond the end")
    return int.from_bytes(buf[off + 1:end], "little"), end


def walk(buf: bytes, off: int, count: int, what: str) -> Walked:
    """Parses ``count`` transactions from ``off`` in one pass.

    Raises :class:`NodeAnswerInvalid` for a witness flag other than 1 and for a transaction
    without inputs or outputs (``what`` names the block in the message), and
    ``IndexError`` / ``ValueError`` / ``OverflowError`` for bytes that end too early or
    hold impossible sizes: the caller turns those into one ``SHAPE`` error.
    """
    mv = memoryview(buf)
    sha = hashlib.sha256
    tx_starts: list[int] = []
    txids: list[bytes] = []
    witness: list[bool] = []
    out_first: list[int] = []
    keys: list[bytes] = []
    padding = PADDING
    pad12 = _PAD12
    pad11 = _PAD11
    pad9 = _PAD9
    k_hashed = _HASHED_PREFIX
    no_key = _NO_KEY
    p2pkh_head = _P2PKH_HEAD
    p2pkh_tail = _P2PKH_TAIL
    for _ in range(count):
        start = off
        tx_starts.append(start)
        out_first.append(len(keys))
        off += 4
        b = buf[off]
        segwit = b == 0
        if segwit:
            if buf[off + 1] != 1:
                raise NodeAnswerInvalid(f"{what}: transaction {len(txids)} has witness flag "
                                        f"{buf[off + 1]}, not 1")
            off += 2
            b = buf[off]
        body = off
        n_in = 0
        if b < 0xFD:
            n_in = b
            off += 1
        else:
            n_in, off = varint(buf, off)
        if n_in == 0:
            raise NodeAnswerInvalid(f"{what}: transaction {len(txids)} has no input")
        for _ in range(n_in):
            b = buf[off + 36]
            if b < 0xFD:
                off += 41 + b
            else:
                size, p = varint(buf, off + 36)
                off = p + size + 4
        b = buf[off]
        n_out = 0
        if b < 0xFD:
            n_out = b
            off += 1
        else:
            n_out, off = varint(buf, off)
        if n_out == 0:
            raise NodeAnswerInvalid(f"{what}: transaction {len(txids)} has no output")
        for _ in range(n_out):
            b = buf[off + 8]
            s = 0
            if b < 0xFD:
                s = off + 9
            else:
                b, s = varint(buf, off + 8)
            e = s + b
            # The same keys as chains.bitcoin.script.script_key, most common template first.
            if b == 22 and buf[s] == 0 and buf[s + 1] == 20:
                keys.append(buf[s:e] + pad12)
            elif b == 34 and buf[s + 1] == 32 and (buf[s] == 0x51 or buf[s] == 0):
                keys.append(buf[s:e])
            elif b == 25 and buf[s:s + 3] == p2pkh_head and buf[s + 23:e] == p2pkh_tail:
                keys.append(buf[s:e] + pad9)
            elif b == 23 and buf[s] == 0xA9 and buf[s + 1] == 20 and buf[s + 22] == 0x87:
                keys.append(buf[s:e] + pad11)
            elif 4 <= b <= 42 and 0x51 <= buf[s] <= 0x60 and buf[s + 1] == b - 2:
                if b <= 34:
                    keys.append(buf[s:e] + padding[b])
                else:
                    keys.append(k_hashed + sha(buf[s:e]).digest() + b"\0")
            else:
                keys.append(no_key)
            off = e
        body_end = off
        if segwit:
            for _ in range(n_in):
                items = buf[off]
                # P2WPKH's two items (signature, key) and P2TR's one, unrolled: most inputs.
                if items == 2:
                    b = buf[off + 1]
                    if b < 0xFD:
                        p = off + 2 + b
                        b = buf[p]
                        if b < 0xFD:
                            off = p + 1 + b
                            continue
                elif items == 1:
                    b = buf[off + 1]
                    if b < 0xFD:
                        off += 2 + b
                        continue
                if items < 0xFD:
                    off += 1
                else:
                    items, off = varint(buf, off)
                for _ in range(items):
                    b = buf[off]
                    if b < 0xFD:
                        off += 1 + b
                    else:
                        size, p = varint(buf, off)
                        off = p + size
            h = sha(mv[start:start + 4])
            h.update(mv[body:body_end])
            h.update(mv[off:off + 4])
        else:
            h = sha(mv[start:off + 4])
        off += 4
        txids.append(sha(h.digest()).digest())
        witness.append(segwit)
    tx_starts.append(off)
    out_first.append(len(keys))
    mv.release()
    return off, tx_starts, txids, witness, out_first, keys


def merkle_root(txids: list[bytes]) -> bytes:
    """Bitcoin's merkle root (internal order) of txids in internal order; ValueError for
    none."""
    level = txids
    if not level:
        raise ValueError("no txids")
    sha = hashlib.sha256
    while len(level) > 1:
        if len(level) & 1:
            level = [*level, level[-1]]
        nxt: list[bytes] = []
        for i in range(0, len(level), 2):
            nxt.append(sha(sha(level[i] + level[i + 1]).digest()).digest())
        level = nxt
    return level[0]
