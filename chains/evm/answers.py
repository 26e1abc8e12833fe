"""Typed decoding (msgspec) of the answers on the catch-up hot path: only what the checks read.

A 170-transaction block answer is ~110 kB of JSON of which the scan reads six
fields per transaction. Decoding it into dicts (orjson) builds every field of
every transaction; decoding into these structs names only the fields the checks
and the scan read, and msgspec skips the rest without building it (measured on
the benchmark chain: see ``bench/decode.py``).

The views are shapes, not trust: a field of the wrong JSON type fails the decode
(``msgspec.ValidationError``, a ``ValueError``), which the RPC client turns into a
:class:`watcher.errors.NodeAnswerInvalid` like any malformed answer; every value is
still checked by :mod:`chains.evm.parse` exactly as on the dict path. Fields the
dict path reads with ``.get`` default to ``None`` here, so both paths accept and
refuse the same answers.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Envelope(msgspec.Struct, gc=False):
    """One JSON-RPC reply; ``result`` left encoded (empty when the reply has none)."""

    id: Any = None
    result: msgspec.Raw = msgspec.Raw()
    error: Any = None


class TxView(msgspec.Struct, gc=False):
    """The fields of a transaction object the block scan and the answer checks read."""

    blockHash: str  # the node's field names, as they are
    to: str | None = None
    hash: Any = None
    value: Any = None
    transactionIndex: Any = None
    sender: Any = msgspec.field(default=None, name="from")


class BlockView(msgspec.Struct, gc=False):
    """A full block (``eth_getBlockByHash(h, true)``) as the scan reads it."""

    number: Any = None
    hash: Any = None
    parentHash: Any = None
    timestamp: Any = None
    logsBloom: Any = None
    transactions: list[TxView] | None = None


class HeaderView(msgspec.Struct, gc=False):
    """A block header (``eth_getBlockByNumber(n, false)``) as a :class:`BlockRef` needs it."""

    number: Any = None
    hash: Any = None
    parentHash: Any = None
    timestamp: Any = None


class ContentsEnvelope(msgspec.Struct, gc=False):
    """One reply of a contents batch, decoded in the same pass as the envelope: a block is an
    object (:class:`BlockView`), logs and traces are arrays (dicts and lists inside)."""

    id: Any = None
    result: BlockView | list[Any] | msgspec.UnsetType | None = msgspec.UNSET
    error: Any = None


_BATCH = msgspec.json.Decoder(list[Envelope])
_CONTENTS = msgspec.json.Decoder(list[ContentsEnvelope])
_BLOCK = msgspec.json.Decoder(BlockView | None)
_HEADER = msgspec.json.Decoder(HeaderView | None)
_ANY = msgspec.json.Decoder()

DecodeError = msgspec.DecodeError
"""Raised for bytes that are not JSON or not of the view's shape (a ``ValueError``)."""


def batch(raw: bytes) -> list[Envelope]:
    """The replies of a batch answer, results still encoded."""
    return _BATCH.decode(raw)


def contents_batch(raw: bytes) -> list[ContentsEnvelope]:
    """The replies of a contents batch (blocks with transactions, logs, traces), in one pass."""
    return _CONTENTS.decode(raw)


def has_no_result(result: object) -> bool:
    """A reply without ``result`` (``null`` is a result)."""
    return result is msgspec.UNSET or (type(result) is msgspec.Raw and not len(result))


def block(raw: object) -> BlockView | None:
    """A block reply as a view: decoded from its encoded result, or as it came from
    :func:`contents_batch` (a view, or ``None``; an array there is refused)."""
    if raw is None or type(raw) is BlockView:
        return raw
    if type(raw) is msgspec.Raw or type(raw) is bytes:
        return _BLOCK.decode(raw)
    raise DecodeError(f"Expected `object | null`, got `{type(raw).__name__}`")


def header(raw: msgspec.Raw | bytes) -> HeaderView | None:
    return _HEADER.decode(raw)


def generic(raw: Any) -> Any:
    """Dicts and lists, as ``orjson.loads`` gives them (logs, receipts, traces); a result that
    :func:`contents_batch` already decoded passes as it is (an object there is a
    :class:`BlockView`, which no check of a list accepts)."""
    if type(raw) is msgspec.Raw or type(raw) is bytes:
        return _ANY.decode(raw)
    return raw


def tx_hash_of(tx: object) -> object:
    """The ``hash`` of a transaction object of either shape (``None`` when it has none)."""
    if type(tx) is TxView:
        return tx.hash
    if isinstance(tx, dict):
        return tx.get("hash")
    return None
