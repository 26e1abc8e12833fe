"""Pure functions from decoded JSON-RPC answers to domain values; every answer is checked.

A node's answer is never trusted: shapes, hex, and the links between answers
(the hash asked for, each transaction's and log's block hash, each trace's
transaction) are verified, and any mismatch raises :class:`NodeAnswerInvalid`
(retriable: another attempt or another node may answer correctly).

The scan of a block costs one ``bytes.fromhex`` and one set lookup per
transaction; only transactions, logs and call frames that pay a watched
address become Python objects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from chains.evm import answers
from chains.evm.keccak import checksum_lower
from watcher.config import ChainConfig
from watcher.errors import AnswerCheck, NodeAnswerInvalid
from watcher.ports import WatchedAddressLookup
from watcher.types import Address, AssetSymbol, BlockHash, BlockRef, Transfer, TxId

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
"""keccak256("Transfer(address,address,uint256)")."""

_HASH_RE = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ADDRESS_RE = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_QUANTITY_RE = re.compile(r"0x[0-9a-fA-F]{1,64}\Z")
_WORD_RE = re.compile(r"0x[0-9a-fA-F]{64}\Z")
_ZERO_PAD = "0x000000000000000000000000"
"""The first 12 bytes of a 32-byte word holding an address."""

_VALUE_FRAMES = frozenset({"CALL", "CREATE", "CREATE2", "SELFDESTRUCT"})
"""Call frames that move value to ``to``; CALLCODE/DELEGATECALL keep it in the caller."""

_RANK_TX, _RANK_TRACE, _RANK_LOG = 0, 1, 2

SortKey = tuple[int, int, tuple[int, ...]]
"""(transaction index, kind, sub-position): the order of transfers within a block."""


# ------------------------------------------------------------------ scalars


def quantity(value: object, what: str) -> int:
    """A JSON-RPC quantity (``0x``-prefixed hex, at most 256 bits) as an int."""
    if isinstance(value, str) and _QUANTITY_RE.match(value):
        return int(value, 16)
    raise NodeAnswerInvalid(f"{what}: not a hex quantity")


@lru_cache(maxsize=1 << 16)
def _checksum_lower(lower_hex: str) -> str:
    return checksum_lower(lower_hex)


def to_checksum_address(value: str) -> str:
    """EIP-55 form, cached: it costs a keccak, and the same watched addresses recur in every
    block (profiled at ~20% of catch-up time uncached)."""
    return _checksum_lower(value.lower())


def block_hash(value: object, what: str) -> BlockHash:
    """A 32-byte ``0x`` hex hash, lower-cased."""
    if isinstance(value, str) and _HASH_RE.match(value):
        return BlockHash(value.lower())
    raise NodeAnswerInvalid(f"{what}: not a 32-byte hex hash")


def tx_hash(value: object, what: str) -> TxId:
    return TxId(block_hash(value, what))


def address(value: object, what: str) -> Address:
    """A 20-byte ``0x`` hex address in its EIP-55 form."""
    if isinstance(value, str) and _ADDRESS_RE.match(value):
        return Address(to_checksum_address(value))
    raise NodeAnswerInvalid(f"{what}: not a 20-byte hex address")


def _word_address(word: object) -> Address | None:
    """The address in a 32-byte topic, or None when the upper 12 bytes are not zero."""
    if isinstance(word, str) and _WORD_RE.match(word) and word[:26].lower() == _ZERO_PAD:
        return Address(to_checksum_address("0x" + word[26:]))
    return None


# ------------------------------------------------------------------ assets


@dataclass(frozen=True, slots=True)
class TokenMeta:
    contract: Address
    symbol: AssetSymbol
    decimals: int


@dataclass(frozen=True, slots=True)
class Assets:
    """A chain's native asset and its allow-listed tokens, keyed by lower-case contract."""

    native_symbol: AssetSymbol
    native_decimals: int
    tokens: Mapping[str, TokenMeta]

    @classmethod
    def from_config(cls, cfg: ChainConfig) -> Assets:
        tokens = {
            t.contract.lower(): TokenMeta(Address(to_checksum_address(t.contract)), t.symbol,
                                          t.decimals)
            for t in cfg.tokens
        }
        return cls(cfg.native_symbol, cfg.native_decimals, tokens)

    @property
    def token_contracts(self) -> list[str]:
        """Lower-case contract addresses, as a log filter wants them."""
        return sorted(self.tokens)


# ------------------------------------------------------------------ headers


def parse_header(obj: object, *, expect_hash: str | None = None,
                 expect_number: int | None = None) -> BlockRef:
    """A :class:`BlockRef` from a block object (``eth_getBlockBy*``), a dict or a typed view
    (:mod:`chains.evm.answers`), checked against the ask."""
    if isinstance(obj, dict):
        number, hash_, parent, timestamp = (obj.get("number"), obj.get("hash"),
                                            obj.get("parentHash"), obj.get("timestamp"))
    elif type(obj) is answers.HeaderView or type(obj) is answers.BlockView:
        number, hash_, parent, timestamp = obj.number, obj.hash, obj.parentHash, obj.timestamp
    else:
        raise NodeAnswerInvalid("block: not an object")
    ref = BlockRef(
        number=quantity(number, "block.number"),
        hash=block_hash(hash_, "block.hash"),
        parent_hash=block_hash(parent, "block.parentHash"),
        timestamp=quantity(timestamp, "block.timestamp"),
    )
    if expect_hash is not None and ref.hash != expect_hash.lower():
        raise NodeAnswerInvalid(f"asked for block {expect_hash}, got {ref.hash}",
                                check=AnswerCheck.BLOCK_HASH)
    if expect_number is not None and ref.number != expect_number:
        raise NodeAnswerInvalid(f"asked for block {expect_number}, got {ref.number}",
                                check=AnswerCheck.BLOCK_HASH)
    return ref


# ------------------------------------------------------------------ block scan


@dataclass(frozen=True, slots=True)
class NativeCandidate:
    """A top-level value transfer to a watched address, pending its receipt's status."""

    tx_index: int
    transfer: Transfer


@dataclass(slots=True)
class ScannedBlock:
    ref: BlockRef
    txs: list[Any]
    """The node's transaction objects (dicts, or :class:`answers.TxView` on the typed path),
    kept as they are (no copy); read through :func:`answers.tx_hash_of`."""
    logs_bloom: object = None
    """The header's ``logsBloom`` as the node gave it, parsed only when logs look short."""
    candidates: list[NativeCandidate] = field(default_factory=list)
    found: list[tuple[SortKey, Transfer]] = field(default_factory=list)
    """Transfers that need no receipt: token logs and internal transfers."""

    def transfers(self, succeeded: frozenset[TxId] | set[TxId]) -> tuple[Transfer, ...]:
        """All transfers of the block in order; native ones only if their tx succeeded."""
        keyed = list(self.found)
        keyed.extend(((c.tx_index, _RANK_TX, ()), c.transfer)
                     for c in self.candidates if c.transfer.txid in succeeded)
        keyed.sort(key=lambda item: item[0])
        return tuple(t for _, t in keyed)


def matches(watched: WatchedAddressLookup, keys: list[bytes]) -> list[int]:
    """Positions of watched keys; one call for all when the lookup offers it."""
    batch = getattr(watched, "matches", None)
    if batch is not None:
        found: list[int] = batch(keys)
        return found
    return [i for i, k in enumerate(keys) if k in watched]


def scan_block(obj: object, ref: BlockRef, watched: WatchedAddressLookup,
               assets: Assets) -> ScannedBlock:
    """Checks a full block (``eth_getBlockByHash(h, true)``) against ``ref`` and finds
    top-level native transfers to watched addresses."""
    header = parse_header(obj, expect_hash=ref.hash)
    if header.number != ref.number or header.parent_hash != ref.parent_hash:
        raise NodeAnswerInvalid(f"block {ref.hash}: number or parent differs from its header",
                                check=AnswerCheck.PARENT_LINK)
    assert isinstance(obj, dict)
    txs = obj.get("transactions")
    if not isinstance(txs, list):
        raise NodeAnswerInvalid(f"block {ref.hash}: transactions missing")
    bh = ref.hash
    scanned = ScannedBlock(ref=ref, txs=txs, logs_bloom=obj.get("logsBloom"))
    fromhex = bytes.fromhex
    # Comprehensions, not a loop with a lookup call per transaction: this is the hot path
    # of catch-up (~170 transactions a block, nearly all paying nobody watched).
    try:
        named = [tx["blockHash"] for tx in txs]
        if named.count(bh) != len(named) and any(n.lower() != bh for n in named):
            raise NodeAnswerInvalid(f"block {bh}: a transaction names another block",
                                    check=AnswerCheck.BLOCK_HASH)
        tos = [tx.get("to") for tx in txs]
        keys = [fromhex(to[2:]) if to is not None else b"" for to in tos]
        hits = matches(watched, keys)
        for index in hits:
            tx = txs[index]
            candidate = _native_candidate(tx.get("value"), tx.get("transactionIndex"),
                                          tx.get("hash"), tx.get("from"), index, tos[index],
                                          assets)
            if candidate is not None:
                scanned.candidates.append(candidate)
    except NodeAnswerInvalid:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise NodeAnswerInvalid(
            f"block {bh}: malformed transaction ({type(exc).__name__})") from None
    if len({c.transfer.txid for c in scanned.candidates}) != len(scanned.candidates):
        raise NodeAnswerInvalid(f"block {bh}: a transaction hash appears twice")
    return scanned


def scan_block_json(raw: Any, ref: BlockRef, watched: WatchedAddressLookup,
                    assets: Assets) -> ScannedBlock:
    """:func:`scan_block` of an encoded answer (or of one a contents batch already decoded),
    decoded into :class:`answers.BlockView` (only the fields the checks and the scan read).
    Same checks, same result."""
    try:
        view = answers.block(raw)
    except answers.DecodeError as exc:
        raise NodeAnswerInvalid(f"block {ref.hash}: malformed ({_first_line(exc)})") from None
    if view is None:
        raise NodeAnswerInvalid(f"null for block {ref.hash} of the followed chain",
                                check=AnswerCheck.NULL_BLOCK)
    return scan_block_view(view, ref, watched, assets)


def scan_block_view(view: answers.BlockView, ref: BlockRef, watched: WatchedAddressLookup,
                    assets: Assets) -> ScannedBlock:
    """:func:`scan_block` of a typed block view: the same checks in the same order."""
    header = parse_header(view, expect_hash=ref.hash)
    if header.number != ref.number or header.parent_hash != ref.parent_hash:
        raise NodeAnswerInvalid(f"block {ref.hash}: number or parent differs from its header",
                                check=AnswerCheck.PARENT_LINK)
    txs = view.transactions
    if txs is None:
        raise NodeAnswerInvalid(f"block {ref.hash}: transactions missing")
    bh = ref.hash
    scanned = ScannedBlock(ref=ref, txs=txs, logs_bloom=view.logsBloom)
    fromhex = bytes.fromhex
    try:
        named = [tx.blockHash for tx in txs]
        if named.count(bh) != len(named) and any(n.lower() != bh for n in named):
            raise NodeAnswerInvalid(f"block {bh}: a transaction names another block",
                                    check=AnswerCheck.BLOCK_HASH)
        tos = [tx.to for tx in txs]
        keys = [fromhex(to[2:]) if to is not None else b"" for to in tos]
        for index in matches(watched, keys):
            tx = txs[index]
            to = tos[index]
            if to is None:
                continue  # a contract creation pays no one (its key b"" is never watched)
            candidate = _native_candidate(tx.value, tx.transactionIndex, tx.hash, tx.sender,
                                          index, to, assets)
            if candidate is not None:
                scanned.candidates.append(candidate)
    except NodeAnswerInvalid:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise NodeAnswerInvalid(
            f"block {bh}: malformed transaction ({type(exc).__name__})") from None
    if len({c.transfer.txid for c in scanned.candidates}) != len(scanned.candidates):
        raise NodeAnswerInvalid(f"block {bh}: a transaction hash appears twice")
    return scanned


def _first_line(exc: Exception) -> str:
    """msgspec's message names the JSON path and the expected type; never a value."""
    return str(exc).splitlines()[0][:200]


def _native_candidate(value: object, tx_index: object, txid: object, sender: object,
                      index: int, to: str, assets: Assets) -> NativeCandidate | None:
    amount = quantity(value, "transaction.value")
    if amount == 0:
        return None
    if quantity(tx_index, "transaction.transactionIndex") != index:
        raise NodeAnswerInvalid(f"transaction {index}: transactionIndex differs from its position")
    return NativeCandidate(index, Transfer(
        txid=tx_hash(txid, "transaction.hash"),
        locator="tx",
        asset=assets.native_symbol,
        token_contract=None,
        to_address=address(to, "transaction.to"),
        from_address=address(sender, "transaction.from"),
        amount=amount,
        decimals=assets.native_decimals,
    ))


# ------------------------------------------------------------------ receipts


def receipt_succeeded(obj: object, txid: TxId, block: BlockHash,
                      index: int | None = None) -> bool:
    """Whether a receipt (``eth_getTransactionReceipt``) reports success, checked to be the
    receipt of ``txid`` in ``block`` (at ``index`` when given)."""
    if obj is None:
        raise NodeAnswerInvalid(f"no receipt for {txid}", check=AnswerCheck.RECEIPTS)
    if not isinstance(obj, dict):
        raise NodeAnswerInvalid(f"receipt of {txid}: not an object", check=AnswerCheck.RECEIPTS)
    if tx_hash(obj.get("transactionHash"), "receipt.transactionHash") != txid:
        raise NodeAnswerInvalid(f"asked for the receipt of {txid}, got another",
                                check=AnswerCheck.RECEIPTS)
    if block_hash(obj.get("blockHash"), "receipt.blockHash") != block:
        raise NodeAnswerInvalid(f"receipt of {txid} is of another block than {block}",
                                check=AnswerCheck.RECEIPTS)
    if index is not None and quantity(obj.get("transactionIndex"),
                                      "receipt.transactionIndex") != index:
        raise NodeAnswerInvalid(f"receipt of {txid}: not at index {index}",
                                check=AnswerCheck.RECEIPTS)
    status = obj.get("status")
    if status == "0x1":
        return True
    if status == "0x0":
        return False
    raise NodeAnswerInvalid(f"receipt of {txid}: status missing or not 0x0/0x1")


# ------------------------------------------------------------------ token logs


def scan_logs(obj: object, scanned: ScannedBlock, watched: WatchedAddressLookup,
              assets: Assets) -> None:
    """Adds ERC-20 ``Transfer`` logs (``eth_getLogs`` by block hash) paying watched addresses.

    Only allow-listed contracts, exactly three topics and 32 bytes of data count: ERC-721
    transfers (four topics) and zero amounts (address-poisoning spam) are ignored. A log of
    another block or one marked ``removed`` fails the whole answer.
    """
    if not isinstance(obj, list):
        raise NodeAnswerInvalid(f"logs of {scanned.ref.hash}: not a list")
    bh = scanned.ref.hash
    seen: set[int] = set()
    fromhex = bytes.fromhex
    # Checks and keys for every log in comprehensions; the per-log work runs for hits only.
    try:
        named = [log["blockHash"] for log in obj]
        if named.count(bh) != len(named) and any(
                block_hash(n, "log.blockHash") != bh for n in named):
            raise NodeAnswerInvalid(f"logs of {bh}: a log of another block",
                                    check=AnswerCheck.LOGS)
        if [log.get("removed") for log in obj].count(True):
            raise NodeAnswerInvalid(f"logs of {bh}: a log marked removed")
        topic_lists = [log.get("topics") for log in obj]
        # Only three-topic logs can be ERC-20 transfers (ERC-721 has four); the third
        # topic is the recipient, left-padded to 32 bytes.
        keys = [fromhex(t[2][26:]) if type(t) is list and len(t) == 3 and type(t[2]) is str
                and len(t[2]) == 66 else b"" for t in topic_lists]
    except NodeAnswerInvalid:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise NodeAnswerInvalid(f"logs of {bh}: malformed log ({type(exc).__name__})") from None
    for at in matches(watched, keys):
        log = obj[at]
        topics = topic_lists[at]
        word = topics[2]
        contract = log.get("address")
        token = assets.tokens.get(contract.lower()) if isinstance(contract, str) else None
        data = log.get("data")
        if (token is None or not isinstance(topics[0], str) or topics[0].lower() != TRANSFER_TOPIC
                or not isinstance(data, str) or not _WORD_RE.match(data)):
            continue
        to = _word_address(word)
        if to is None:
            continue
        amount = int(data, 16)
        if amount == 0:
            continue
        log_index = quantity(log.get("logIndex"), "log.logIndex")
        tx_index = quantity(log.get("transactionIndex"), "log.transactionIndex")
        txid = tx_hash(log.get("transactionHash"), "log.transactionHash")
        if log_index in seen:
            raise NodeAnswerInvalid(f"logs of {bh}: log index {log_index} appears twice")
        seen.add(log_index)
        _check_tx_at(scanned, tx_index, txid)
        scanned.found.append(((tx_index, _RANK_LOG, (log_index,)), Transfer(
            txid=txid,
            locator=f"log:{log_index}",
            asset=token.symbol,
            token_contract=token.contract,
            to_address=to,
            from_address=_word_address(topics[1]),
            amount=amount,
            decimals=token.decimals,
        )))


def _check_tx_at(scanned: ScannedBlock, index: int, txid: TxId) -> None:
    txs = scanned.txs
    if index >= len(txs) or not isinstance(found := answers.tx_hash_of(txs[index]), str) or \
            found.lower() != txid:
        raise NodeAnswerInvalid(
            f"block {scanned.ref.hash}: transaction {txid} is not at index {index}",
            check=AnswerCheck.LOGS)


# ------------------------------------------------------------------ internal transfers


def scan_traces(obj: object, scanned: ScannedBlock, watched: WatchedAddressLookup,
                assets: Assets) -> None:
    """Adds internal native transfers from ``debug_traceBlockByHash`` with ``callTracer``.

    A CALL, CREATE, CREATE2 or SELFDESTRUCT frame with value to a watched address counts
    when neither it nor any ancestor (the top-level frame included, so the transaction
    succeeded) has an ``error``. The top-level frame is the ``tx`` transfer and is skipped.
    Locator ``trace:<path>``, the path indexing ``calls`` from the top-level frame down.
    """
    bh = scanned.ref.hash
    txs = scanned.txs
    if not isinstance(obj, list) or len(obj) != len(txs):
        raise NodeAnswerInvalid(f"traces of {bh}: not one per transaction",
                                check=AnswerCheck.TRACES)
    fromhex = bytes.fromhex
    tx_index = 0
    try:
        for tx_index, item in enumerate(obj):
            expected = answers.tx_hash_of(txs[tx_index])
            if not isinstance(expected, str):
                raise TypeError("transaction.hash")
            traced = item.get("txHash")
            if traced is not None and traced.lower() != expected.lower():
                raise NodeAnswerInvalid(f"traces of {bh}: trace {tx_index} is of another tx",
                                        check=AnswerCheck.TRACES)
            top = item.get("result")
            if not isinstance(top, dict):
                raise NodeAnswerInvalid(f"traces of {bh}: transaction {tx_index} not traced",
                                        check=AnswerCheck.TRACES)
            if top.get("error") is not None:
                continue
            calls = top.get("calls")
            if not calls:
                continue
            if not isinstance(calls, list):
                raise TypeError("calls")
            stack: list[tuple[dict[str, Any], tuple[int, ...]]] = [
                (child, (i,)) for i, child in enumerate(calls)]
            while stack:
                frame, path = stack.pop()
                if frame.get("error") is not None:
                    continue  # its value went back, and so did its subtree's
                to = frame.get("to")
                if to is not None and fromhex(to[2:]) in watched:
                    transfer = _frame_transfer(frame, to, path, expected, assets)
                    if transfer is not None:
                        scanned.found.append(((tx_index, _RANK_TRACE, path), transfer))
                children = frame.get("calls")
                if children:
                    if not isinstance(children, list):
                        raise TypeError("calls")
                    stack.extend((child, (*path, i)) for i, child in enumerate(children))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise NodeAnswerInvalid(
            f"traces of {bh}: malformed trace {tx_index} ({type(exc).__name__})") from None


def _frame_transfer(frame: dict[str, Any], to: str, path: tuple[int, ...], txid: str,
                    assets: Assets) -> Transfer | None:
    if frame.get("type") not in _VALUE_FRAMES:
        return None
    value = frame.get("value")
    if value is None:
        return None
    amount = quantity(value, "trace.value")
    if amount == 0:
        return None
    return Transfer(
        txid=tx_hash(txid, "transaction.hash"),
        locator="trace:" + ".".join(map(str, path)),
        asset=assets.native_symbol,
        token_contract=None,
        to_address=address(to, "trace.to"),
        from_address=address(frame.get("from"), "trace.from"),
        amount=amount,
        decimals=assets.native_decimals,
    )


def candidates_of(blocks: Sequence[ScannedBlock]) -> list[tuple[BlockHash, TxId, int]]:
    """(block hash, txid, index) of every native candidate, whose receipts are to be fetched."""
    return [(b.ref.hash, c.transfer.txid, c.tx_index) for b in blocks for c in b.candidates]
