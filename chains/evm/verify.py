"""Pure checks of EVM answers against what the node cannot leave out without it showing.

* A block's ``logsBloom`` (2048 bits, Yellow Paper §4.3.1: for each log, its
  address and each topic set three bits taken from the low 11 bits of the first
  three byte pairs of their keccak-256) may say "maybe" for a log that is not
  there, but never "no" for one that is. So an ``eth_getLogs`` answer without any
  allow-listed ``Transfer`` log, for a block whose bloom may hold both the
  ``Transfer`` topic and an allow-listed contract, is not believed on its own.
* The block's receipts settle it: one per transaction, each naming that
  transaction's hash and index and the block's hash, and the bloom recomputed
  from all their logs must equal the header's ``logsBloom``. A node that drops a
  log cannot make that match (it would have to forge the header, whose hash the
  window has checked against its parent links).

Every failure is a :class:`NodeAnswerInvalid` with its :class:`AnswerCheck`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from chains.evm import answers
from chains.evm.keccak import keccak256
from watcher.errors import AnswerCheck, NodeAnswerInvalid
from watcher.types import BlockHash

_BLOOM_RE = re.compile(r"0x[0-9a-fA-F]{512}\Z")


@lru_cache(maxsize=4096)
def bloom_bits(item: bytes) -> tuple[int, int, int]:
    """The three bit positions (0 = least significant bit of the last byte) ``item`` sets."""
    h = keccak256(item)
    return tuple(((h[i] << 8) | h[i + 1]) & 2047 for i in (0, 2, 4))  # type: ignore[return-value]


def bloom_of(logs: Iterable[tuple[bytes, Sequence[bytes]]]) -> int:
    """The bloom of ``(address, topics)`` pairs, as a 2048-bit integer."""
    bloom = 0
    for address, topics in logs:
        for item in (address, *topics):
            for bit in bloom_bits(item):
                bloom |= 1 << bit
    return bloom


def parse_bloom(value: object, what: str) -> int:
    if isinstance(value, str) and _BLOOM_RE.match(value):
        return int(value, 16)
    raise NodeAnswerInvalid(f"{what}: not a 256-byte hex bloom")


def may_contain(bloom: int, item: bytes) -> bool:
    return all(bloom >> bit & 1 for bit in bloom_bits(item))


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The token ``Transfer`` logs a chain asks for: allow-listed contracts, one topic."""

    contracts: tuple[bytes, ...]
    topic: bytes

    @classmethod
    def of(cls, contracts: Iterable[str], topic: str) -> LogFilter:
        return cls(tuple(bytes.fromhex(c[2:]) for c in contracts), bytes.fromhex(topic[2:]))

    def bloom_may_match(self, bloom: int) -> bool:
        """Whether a block with this bloom may hold a log this filter would return."""
        return may_contain(bloom, self.topic) and any(may_contain(bloom, c)
                                                      for c in self.contracts)

    def matches(self, log: Any) -> bool:
        address, topics = log.get("address"), log.get("topics")
        return (isinstance(address, str) and bytes.fromhex(address[2:]) in self.contracts
                and isinstance(topics, list) and bool(topics) and isinstance(topics[0], str)
                and bytes.fromhex(topics[0][2:]) == self.topic)


def check_logs_answer(logs: Sequence[Any], bloom: int, log_filter: LogFilter) -> bool:
    """True when an ``eth_getLogs`` answer can be believed as it is; False when the bloom says
    matching logs may exist but the answer has none (the receipts must settle it)."""
    if any(log_filter.matches(log) for log in logs):
        return True
    return not log_filter.bloom_may_match(bloom)


def logs_of_receipts(receipts: object, txs: Sequence[Any], block: BlockHash,
                     header_bloom: int) -> list[Any]:
    """Every log of a block from its receipts, after checking the receipts are the block's:
    one per transaction, in order (hash, index, block hash), and their logs' bloom equal
    to the header's ``logsBloom``."""
    if not isinstance(receipts, list):
        raise NodeAnswerInvalid(f"receipts of {block}: not a list", check=AnswerCheck.RECEIPTS)
    if len(receipts) != len(txs):
        raise NodeAnswerInvalid(
            f"receipts of {block}: {len(receipts)} for {len(txs)} transactions",
            check=AnswerCheck.RECEIPTS)
    logs: list[Any] = []
    pairs: list[tuple[bytes, list[bytes]]] = []
    try:
        for index, (receipt, tx) in enumerate(zip(receipts, txs, strict=True)):
            check_receipt(receipt, str(answers.tx_hash_of(tx)).lower(), index, block)
            for log in receipt["logs"]:
                pairs.append((bytes.fromhex(log["address"][2:]),
                              [bytes.fromhex(t[2:]) for t in log["topics"]]))
                logs.append(log)
    except NodeAnswerInvalid:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise NodeAnswerInvalid(f"receipts of {block}: malformed ({type(exc).__name__})",
                                check=AnswerCheck.RECEIPTS) from None
    if bloom_of(pairs) != header_bloom:
        raise NodeAnswerInvalid(f"receipts of {block}: their logs do not make the block's bloom",
                                check=AnswerCheck.LOGS)
    return logs


def check_receipt(receipt: object, txid: str, index: int, block: BlockHash) -> None:
    """``receipt`` is the one of transaction ``txid`` at ``index`` in ``block``."""
    if receipt is None:
        raise NodeAnswerInvalid(f"no receipt for {txid}", check=AnswerCheck.RECEIPTS)
    if not isinstance(receipt, dict):
        raise NodeAnswerInvalid(f"receipt of {txid}: not an object", check=AnswerCheck.RECEIPTS)
    got_tx = receipt.get("transactionHash")
    got_index = receipt.get("transactionIndex")
    got_block = receipt.get("blockHash")
    if not isinstance(got_tx, str) or got_tx.lower() != txid:
        raise NodeAnswerInvalid(f"asked for the receipt of {txid}, got another",
                                check=AnswerCheck.RECEIPTS)
    if not isinstance(got_index, str) or got_index[:2] != "0x" or int(got_index, 16) != index:
        raise NodeAnswerInvalid(f"receipt of {txid}: not at index {index}",
                                check=AnswerCheck.RECEIPTS)
    if not isinstance(got_block, str) or got_block.lower() != block:
        raise NodeAnswerInvalid(f"receipt of {txid} is of another block than {block}",
                                check=AnswerCheck.RECEIPTS)
