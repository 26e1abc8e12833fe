"""Raw blocks and transactions (``getblock <hash> 0``, ``getrawtransaction``) -> txids,
outputs, spent outpoints, and the scan for outputs paying watched keys.

Guarantees of :func:`parse_block`: the header's double-SHA256 is the asked hash, the
merkle root computed from the recomputed txids (double-SHA256 of each transaction's
non-witness serialization) is the header's, no txid appears twice (the CVE-2012-2459
duplicated-subtree mutation), the first transaction and only it is a coinbase, and the
bytes end exactly where the last transaction does. So a node that omits, alters, reorders
or duplicates a transaction, or truncates the answer, cannot pass: it gets
:class:`NodeAnswerInvalid` (``SHAPE`` for bytes that do not parse, ``BLOCK_HASH`` for
another block, ``TXID`` for a merkle mismatch), never an ``IndexError``. Witness data is not
covered by the merkle root and is only skipped, never read.

Speed is the design: a mainnet block (3,500 transactions, 1.3 MB) is walked once with
integer offsets into the ``bytes`` (:mod:`chains.bitcoin.blockwalk`, run as a C extension
when built: :mod:`chains.bitcoin.walker`), no object per transaction or output; txids and
each output's index key (the layout of :mod:`chains.bitcoin.script`) come from the same
pass; values, scripts, address text and outpoints become Python objects only for the
outputs that match and for what a caller asks for.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from chains.bitcoin import script as _script
from chains.bitcoin import walker as _walker
from chains.bitcoin.blockwalk import varint as _varint
from chains.bitcoin.networks import Network
from watcher.errors import AnswerCheck, NodeAnswerInvalid
from watcher.types import Address, AssetSymbol, BlockHash, Transfer, TxId

HEADER_SIZE = 80
_FINAL_SEQUENCE_RBF = 0xFFFFFFFE
_COINBASE_PREVOUT = bytes(32) + b"\xff\xff\xff\xff"
_FIND_LIMIT = 64
"""Up to this many outpoints, :meth:`Transactions.spenders` searches the bytes for each."""

_sha256 = hashlib.sha256


def _dsha(data: bytes | memoryview) -> bytes:
    return _sha256(_sha256(data).digest()).digest()


def _hex(internal: bytes) -> str:
    """Display form of a hash: the bytes reversed, lower-case hex."""
    return internal[::-1].hex()


@dataclass(frozen=True, slots=True)
class Outpoint:
    """A transaction output, as an input names the coin it spends."""

    txid: TxId
    vout: int

    def raw(self) -> bytes:
        """The 36 bytes of the serialization (txid in internal order, vout little-endian)."""
        return bytes.fromhex(self.txid)[::-1] + self.vout.to_bytes(4, "little")

    @classmethod
    def from_raw(cls, raw: bytes) -> Outpoint:
        return cls(TxId(_hex(raw[:32])), int.from_bytes(raw[32:36], "little"))


@dataclass(frozen=True, slots=True)
class TxOut:
    value: int
    """Satoshis (base units), from the 8 raw bytes."""
    script: bytes


@dataclass(frozen=True, slots=True)
class BlockHeader:
    hash: BlockHash
    prev_hash: BlockHash
    merkle_root: str
    """Display hex, like the hashes."""
    time: int
    version: int
    bits: int
    nonce: int


def _layout(buf: bytes, start: int, witness: bool) -> tuple[list[int], list[int]]:
    """Offsets of the inputs and of the outputs of the transaction at ``start`` (a second
    walk, for the few transactions a caller asks about)."""
    off = start + (6 if witness else 4)
    n_in, off = (buf[off], off + 1) if buf[off] < 0xFD else _varint(buf, off)
    ins: list[int] = []
    for _ in range(n_in):
        ins.append(off)
        b = buf[off + 36]
        if b < 0xFD:
            off += 41 + b
        else:
            size, p = _varint(buf, off + 36)
            off = p + size + 4
    n_out, off = (buf[off], off + 1) if buf[off] < 0xFD else _varint(buf, off)
    outs: list[int] = []
    for _ in range(n_out):
        outs.append(off)
        b = buf[off + 8]
        if b < 0xFD:
            off += 9 + b
        else:
            size, p = _varint(buf, off + 8)
            off = p + size
    return ins, outs


class Transactions:
    """A sequence of parsed transactions: their txids and output keys, and offsets into the
    raw bytes from which everything else is read back on demand.

    Built by :func:`parse_block` and :func:`parse_transaction` only. Indexes are
    transaction positions (0 = the coinbase in a block); output positions count the
    outputs of all transactions in order, as :attr:`keys` does.
    """

    __slots__ = ("_buf", "_keys", "_layouts", "_out_first", "_spent", "_tx_starts", "_txids",
                 "_witness")

    def __init__(self, buf: bytes, tx_starts: list[int], txids: list[bytes],
                 witness: list[bool], out_first: list[int], keys: list[bytes]) -> None:
        self._buf = buf
        self._tx_starts = tx_starts
        """Start offset of each transaction, and one past the last's end."""
        self._txids = txids
        self._witness = witness
        self._out_first = out_first
        """Position of each transaction's first output, and the number of outputs."""
        self._keys = keys
        self._layouts: dict[int, tuple[list[int], list[int]]] = {}
        self._spent: dict[bytes, int] | None = None

    def __len__(self) -> int:
        return len(self._txids)

    @property
    def output_count(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> list[bytes]:
        """One index key per output of every transaction in order, ``b""`` for an output
        with no address (the shape :meth:`AddressIndex.matches` takes)."""
        return self._keys

    def txid(self, i: int) -> TxId:
        return TxId(_hex(self._txids[i]))

    def txids(self) -> list[TxId]:
        return [TxId(_hex(t)) for t in self._txids]

    def raw_txid(self, i: int) -> bytes:
        """Internal byte order, as outpoints and the merkle tree use it."""
        return self._txids[i]

    @property
    def raw_txids(self) -> list[bytes]:
        """Every txid in internal byte order (the list itself: do not change it)."""
        return self._txids

    def wtxid(self, i: int) -> TxId:
        """Hash of the full serialization (the txid for a transaction without witness)."""
        if not self._witness[i]:
            return self.txid(i)
        with memoryview(self._buf) as mv:
            return TxId(_hex(_dsha(mv[self._tx_starts[i]:self._tx_starts[i + 1]])))

    def raw_transaction(self, i: int) -> bytes:
        return self._buf[self._tx_starts[i]:self._tx_starts[i + 1]]

    def has_witness(self, i: int) -> bool:
        return self._witness[i]

    def _layout(self, i: int) -> tuple[list[int], list[int]]:
        got = self._layouts.get(i)
        if got is None:
            got = self._layouts[i] = _layout(self._buf, self._tx_starts[i], self._witness[i])
        return got

    # -- inputs

    def _sequence_at(self, off: int) -> int:
        buf = self._buf
        b = buf[off + 36]
        end = off + 37 + b if b < 0xFD else sum(_varint(buf, off + 36))
        return int.from_bytes(buf[end:end + 4], "little")

    def is_coinbase(self, i: int) -> bool:
        ins = self._layout(i)[0]
        return len(ins) == 1 and self._buf[ins[0]:ins[0] + 36] == _COINBASE_PREVOUT

    def spends(self, i: int) -> tuple[Outpoint, ...]:
        """The outpoints transaction ``i`` spends, in input order (none for a coinbase)."""
        if self.is_coinbase(i):
            return ()
        buf = self._buf
        return tuple(Outpoint.from_raw(buf[o:o + 36]) for o in self._layout(i)[0])

    def signals_rbf(self, i: int) -> bool:
        """BIP125 opt-in: any input with nSequence below 0xfffffffe."""
        return any(self._sequence_at(o) < _FINAL_SEQUENCE_RBF for o in self._layout(i)[0])

    def _input_owner(self, pos: int) -> int | None:
        """The transaction whose input starts at byte ``pos``, None if no input does."""
        t = bisect_right(self._tx_starts, pos) - 1
        if not 0 <= t < len(self._txids):
            return None
        return t if pos in self._layout(t)[0] else None

    def _find_input(self, raw: bytes, start: int) -> int | None:
        """The first transaction from byte ``start`` with an input naming ``raw``."""
        buf = self._buf
        at = buf.find(raw, start)
        while at >= 0:
            t = self._input_owner(at)
            if t is not None:
                return t
            at = buf.find(raw, at + 1)
        return None

    def coinbase_after_first(self) -> bool:
        """Whether a transaction after the first has a coinbase (null) input."""
        return len(self._txids) > 1 and self._find_input(_COINBASE_PREVOUT,
                                                         self._tx_starts[1]) is not None

    def spenders(self, outpoints: Collection[Outpoint]) -> dict[Outpoint, int]:
        """Which of ``outpoints`` these transactions spend, and the index of the spender:
        the double-spend check of the mempool logic.

        A few outpoints are searched for in the raw bytes (C speed, then the hit is checked
        to be an input); many build a map of every input once (kept for later questions).
        """
        out: dict[Outpoint, int] = {}
        if not outpoints:
            return out
        buf = self._buf
        if self._spent is None and len(outpoints) <= _FIND_LIMIT:
            for op in outpoints:
                raw = op.raw()
                if raw == _COINBASE_PREVOUT:
                    continue  # a coinbase spends nothing
                t = self._find_input(raw, 0)
                if t is not None:
                    out[op] = t
            return out
        spent = self._spent
        if spent is None:
            spent = {}
            for t in range(len(self._txids)):
                for o in _layout(buf, self._tx_starts[t], self._witness[t])[0]:
                    spent[buf[o:o + 36]] = t
            spent.pop(_COINBASE_PREVOUT, None)
            self._spent = spent
        for op in outpoints:
            spender = spent.get(op.raw())
            if spender is not None:
                out[op] = spender
        return out

    # -- outputs

    def _output_at(self, off: int) -> TxOut:
        buf = self._buf
        b = buf[off + 8]
        if b < 0xFD:
            start, size = off + 9, b
        else:
            size, start = _varint(buf, off + 8)
        return TxOut(int.from_bytes(buf[off:off + 8], "little"), buf[start:start + size])

    def outputs(self, i: int) -> list[TxOut]:
        return [self._output_at(o) for o in self._layout(i)[1]]

    def locate_output(self, pos: int) -> tuple[int, int]:
        """(transaction index, vout) of the ``pos``-th output overall."""
        if not 0 <= pos < len(self._keys):
            raise IndexError(f"output {pos} of {len(self._keys)}")
        t = bisect_right(self._out_first, pos) - 1
        return t, pos - self._out_first[t]

    def output(self, pos: int) -> TxOut:
        """The ``pos``-th output overall (the positions :attr:`keys` is indexed by)."""
        t, vout = self.locate_output(pos)
        return self._output_at(self._layout(t)[1][vout])


@dataclass(frozen=True, slots=True)
class RawBlock:
    header: BlockHeader
    txs: Transactions
    size: int


# ------------------------------------------------------------------ parsing


def _walk(buf: bytes, off: int, count: int, what: str) -> tuple[int, Transactions]:
    """Parses ``count`` transactions from ``off``; returns the end offset and offsets (the
    walk of :mod:`chains.bitcoin.blockwalk`, compiled or not: :mod:`chains.bitcoin.walker`)."""
    end, tx_starts, txids, witness, out_first, keys = _walker.walk(buf, off, count, what)
    return end, Transactions(buf, tx_starts, txids, witness, out_first, keys)


def merkle_root(txids: list[bytes]) -> bytes:
    """Bitcoin's merkle root (internal order) of txids in internal order."""
    return _walker.merkle_root(txids)


def _bytes_of(raw: object, what: str) -> bytes:
    if isinstance(raw, bytes):
        return raw
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    if isinstance(raw, str):
        try:
            return bytes.fromhex(raw)
        except ValueError:
            raise NodeAnswerInvalid(f"{what}: not hex") from None
    raise NodeAnswerInvalid(f"{what}: not hex text or bytes")


def parse_header(raw: bytes, what: str = "header") -> BlockHeader:
    """The 80-byte header (``getblockheader <hash> false``), its hash recomputed."""
    if len(raw) < HEADER_SIZE:
        raise NodeAnswerInvalid(f"{what}: {len(raw)} bytes, shorter than a header")
    head = raw[:HEADER_SIZE]
    return BlockHeader(
        hash=BlockHash(_hex(_dsha(head))),
        prev_hash=BlockHash(_hex(head[4:36])),
        merkle_root=_hex(head[36:68]),
        time=int.from_bytes(head[68:72], "little"),
        version=int.from_bytes(head[0:4], "little", signed=True),
        bits=int.from_bytes(head[72:76], "little"),
        nonce=int.from_bytes(head[76:80], "little"),
    )


def parse_block(raw: bytes | str, expect_hash: str | None = None) -> RawBlock:
    """A serialized block (bytes, or hex as ``getblock <hash> 0`` returns it), checked as the
    module docstring says; ``expect_hash`` (display hex) is the hash that was asked for."""
    buf = _bytes_of(raw, f"block {expect_hash}")
    what = f"block {expect_hash or '?'}"
    header = parse_header(buf, what)
    if expect_hash is not None and header.hash != expect_hash.lower():
        raise NodeAnswerInvalid(f"asked for block {expect_hash}, got {header.hash}",
                                check=AnswerCheck.BLOCK_HASH)
    what = f"block {header.hash}"
    try:
        b = buf[HEADER_SIZE]
        if b < 0xFD:
            count, off = b, HEADER_SIZE + 1
        else:
            count, off = _varint(buf, HEADER_SIZE)
        if count == 0:
            raise NodeAnswerInvalid(f"{what}: no transactions")
        end, txs = _walk(buf, off, count, what)
    except (IndexError, ValueError, OverflowError):
        raise NodeAnswerInvalid(f"{what}: truncated or malformed") from None
    if end != len(buf):
        raise NodeAnswerInvalid(f"{what}: {len(buf) - end} bytes after the last transaction"
                                if end < len(buf) else f"{what}: truncated")
    raw_ids = txs.raw_txids
    if merkle_root(raw_ids) != buf[36:68]:
        raise NodeAnswerInvalid(f"{what}: merkle root of its transactions differs from the "
                                "header", check=AnswerCheck.TXID)
    if len(set(raw_ids)) != len(raw_ids):
        raise NodeAnswerInvalid(f"{what}: a transaction appears twice", check=AnswerCheck.TXID)
    if not txs.is_coinbase(0):
        raise NodeAnswerInvalid(f"{what}: first transaction is not a coinbase")
    if txs.coinbase_after_first():
        raise NodeAnswerInvalid(f"{what}: a coinbase input after the first transaction")
    return RawBlock(header=header, txs=txs, size=len(buf))


def parse_transaction(raw: bytes | str, expect_txid: str | None = None) -> Transactions:
    """One serialized transaction (``getrawtransaction <txid>``); its txid recomputed and,
    with ``expect_txid``, checked (``TXID``)."""
    what = f"transaction {expect_txid or '?'}"
    buf = _bytes_of(raw, what)
    try:
        end, txs = _walk(buf, 0, 1, what)
    except (IndexError, ValueError, OverflowError):
        raise NodeAnswerInvalid(f"{what}: truncated or malformed") from None
    if end != len(buf):
        raise NodeAnswerInvalid(f"{what}: {len(buf) - end} bytes after its end"
                                if end < len(buf) else f"{what}: truncated")
    if expect_txid is not None and txs.txid(0) != expect_txid.lower():
        raise NodeAnswerInvalid(f"asked for transaction {expect_txid}, got {txs.txid(0)}",
                                check=AnswerCheck.TXID)
    return txs


# ------------------------------------------------------------------ scanning


class KeyLookup(Protocol):
    def __contains__(self, key: object) -> bool: ...


def matching_outputs(txs: Transactions, watched: KeyLookup) -> list[int]:
    """Positions (overall output index) of outputs whose key is watched, in order."""
    keys = txs.keys
    batch = getattr(watched, "matches", None)
    if batch is not None:
        found: list[int] = batch(keys)
        return found
    return [i for i, k in enumerate(keys) if k and k in watched]


@lru_cache(maxsize=65_536)
def _address_text(spk: bytes, net: Network) -> str | None:
    """Cached: bech32 encoding is ~25 us of pure Python, and the same watched addresses
    receive again and again (as EVM's checksum cache)."""
    return _script.script_address(spk, net)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The outputs of a block (or a mempool transaction) that pay watched keys."""

    transfers: tuple[Transfer, ...]
    """One per paying output, locator ``vout:<n>``, in block order."""
    dust_ignored: int
    """Outputs to watched keys under the dust threshold: not transfers (count a metric)."""
    txs: Transactions
    """The parsed transactions, for what the mempool logic asks next:
    :meth:`Transactions.spenders` (double spends), :meth:`Transactions.spends` and
    :meth:`Transactions.signals_rbf` of the paying ones, :meth:`Transactions.txids`."""
    paying: tuple[int, ...]
    """Transaction indexes of the transfers, parallel to ``transfers``."""

    def spent_by_paying(self) -> Iterator[tuple[TxId, Outpoint]]:
        """(paying txid, outpoint it spends) for each paying transaction, once each."""
        for i in dict.fromkeys(self.paying):
            txid = self.txs.txid(i)
            for op in self.txs.spends(i):
                yield txid, op


def scan(txs: Transactions, watched: KeyLookup, net: Network, *, asset: AssetSymbol,
         decimals: int = 8, dust_threshold: int = 0) -> ScanResult:
    """Outputs paying watched keys as :class:`Transfer` (amounts in satoshis from the raw
    bytes); outputs under ``dust_threshold`` satoshis, and zero-value ones whatever the
    threshold, are counted, not reported. Coinbase
    outputs are reported like any other (the caller decides about their maturity)."""
    transfers: list[Transfer] = []
    paying: list[int] = []
    dust = 0
    floor = max(dust_threshold, 1)  # a zero-value output is never a deposit (spam), as on EVM
    for pos in matching_outputs(txs, watched):
        out = txs.output(pos)
        if out.value > net.max_money:
            raise NodeAnswerInvalid(f"output {pos}: {out.value} satoshis is above the money "
                                    "supply")
        if out.value < floor:
            dust += 1
            continue
        tx, vout = txs.locate_output(pos)
        text = _address_text(out.script, net)
        if text is None:
            continue  # a segwit key on a network without segwit: not an address there
        transfers.append(Transfer(
            txid=txs.txid(tx),
            locator=f"vout:{vout}",
            asset=asset,
            token_contract=None,
            to_address=Address(text),
            from_address=None,
            amount=out.value,
            decimals=decimals,
        ))
        paying.append(tx)
    return ScanResult(tuple(transfers), dust, txs, tuple(paying))
