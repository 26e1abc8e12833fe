"""``watcher tail``: committed events as they arrive, one readable line each.

Reads the deposits and withdrawals topics with ``read_committed`` (aborted or open
transactions are never shown), by manual partition assignment: no consumer group,
no committed offsets, so tailing never disturbs anything. Formatting and filtering
are pure functions of the record (:func:`format_event`, :class:`Filter`); amounts are
rendered from base units with integer arithmetic, never through a float.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import orjson

from watcher.config import KafkaConfig
from watcher.errors import ErrorKind, SinkError
from watcher.kafka.client import Consumed, ManualConsumer


def format_amount(amount: str, decimals: int) -> str:
    """``"1500000000000000000", 18`` -> ``"1.5"``: exact, trailing zeros dropped."""
    negative = amount.startswith("-")
    digits = amount[1:] if negative else amount
    if not digits.isdigit() or decimals < 0:
        return amount
    if decimals == 0:
        whole, frac = digits.lstrip("0") or "0", ""
    else:
        digits = digits.rjust(decimals + 1, "0")
        whole, frac = digits[:-decimals].lstrip("0") or "0", digits[-decimals:].rstrip("0")
    text = f"{whole}.{frac}" if frac else whole
    return f"-{text}" if negative else text


def _short(value: Any, keep: int = 10) -> str:
    text = str(value)
    return text if len(text) <= keep + 2 else f"{text[:keep]}…"


def format_event(doc: dict[str, Any]) -> str:
    """One line for a deposit or withdrawal event of the contract."""
    type_ = str(doc.get("type", "?"))
    head = f"{doc.get('emitted_at', '?')} {doc.get('chain', '?')} {type_:<21}"
    decimals = doc.get("decimals")
    amount = str(doc.get("amount", "?"))
    if isinstance(decimals, int) and not isinstance(decimals, bool):
        amount = format_amount(amount, decimals)
    value = f"{amount} {doc.get('asset', '?')}"
    if type_.startswith("deposit."):
        parts = [head, value, f"to {doc.get('address', '?')}"]
        if doc.get("label"):
            parts.append(f"[{doc['label']}]")
        if doc.get("block_number") is not None:
            parts.append(f"block {doc['block_number']} ({_short(doc.get('block_hash'))})")
        parts.append(f"conf {doc.get('confirmations', '?')}/{doc.get('required_confirmations', '?')}")
        if doc.get("previous_type"):
            parts.append(f"was {doc['previous_type']}")
        if doc.get("reason"):
            parts.append(f"reason {doc['reason']}")
        parts.append(f"id {doc.get('deposit_id', '?')}")
        return " ".join(parts)
    parts = [head, str(doc.get("request_id", "?")), value, f"to {doc.get('to_address', '?')}"]
    if doc.get("txid"):
        parts.append(f"tx {_short(doc['txid'], 18)}")
    if doc.get("replaces_txid"):
        parts.append(f"replaces {_short(doc['replaces_txid'], 18)}")
    if doc.get("block_number") is not None:
        parts.append(f"block {doc['block_number']}")
    if doc.get("confirmations") is not None:
        parts.append(f"conf {doc['confirmations']}")
    if doc.get("reason"):
        parts.append(f"reason {doc['reason']}" + (f": {doc['message']}" if doc.get("message") else ""))
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events to show; an empty filter shows everything.

    ``types``: an exact type (``deposit.confirmed``) or a family (``deposit``, ``withdrawal``).
    ``address``: the deposit's address or the withdrawal's destination, case-insensitive
    (EVM addresses are checksummed in records, people paste them in any case).
    """

    chains: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    address: str | None = None

    def matches(self, doc: dict[str, Any]) -> bool:
        if self.chains and doc.get("chain") not in self.chains:
            return False
        type_ = str(doc.get("type", ""))
        if self.types and not any(type_ == t or type_.startswith(f"{t}.") for t in self.types):
            return False
        if self.address is not None:
            wanted = self.address.lower()
            seen = {str(doc.get(k, "")).lower() for k in ("address", "to_address")}
            if wanted not in seen:
                return False
        return True


@dataclass(frozen=True, slots=True)
class TailOptions:
    filter: Filter = Filter()
    json: bool = False
    from_beginning: bool = False
    limit: int | None = None
    """Stop after this many shown events (None: until interrupted)."""


def render(rec: Consumed, opts: TailOptions) -> tuple[str | None, str | None]:
    """(line for stdout, note for stderr) for one record; a record never raises."""
    if rec.value is None:
        return None, None  # a tombstone carries no event
    try:
        doc = orjson.loads(rec.value)
    except orjson.JSONDecodeError:
        return None, f"{rec.topic}[{rec.partition}]@{rec.offset}: not JSON, skipped"
    if not isinstance(doc, dict):
        return None, f"{rec.topic}[{rec.partition}]@{rec.offset}: not a JSON object, skipped"
    if not opts.filter.matches(doc):
        return None, None
    if opts.json:
        return rec.value.decode("utf-8", errors="replace"), None
    return format_event(doc), None


async def _open(cfg: KafkaConfig, topic: str, from_beginning: bool) -> ManualConsumer:
    consumer = ManualConsumer(cfg, topic, read_committed=True)
    await consumer.start()
    if from_beginning:
        await consumer.seek_to_beginning()
    else:
        for partition, offset in (await consumer.end_offsets()).items():
            consumer.seek(partition, offset)
    return consumer


async def tail(cfg: KafkaConfig, opts: TailOptions, out: TextIO = sys.stdout,
               err: TextIO = sys.stderr, stop: asyncio.Event | None = None,
               on_ready: Callable[[], None] | None = None) -> int:
    """Prints events until ``stop`` is set (SIGINT/SIGTERM when None) or ``limit`` is reached.

    Returns 0. Raises :class:`SinkError` when the deposits topic cannot be read; a missing
    withdrawals topic (no withdrawal slice deployed yet) is a note, not an error.
    """
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    consumers: list[ManualConsumer] = [await _open(cfg, cfg.topics.deposits, opts.from_beginning)]
    try:
        try:
            consumers.append(await _open(cfg, cfg.topics.withdrawals, opts.from_beginning))
        except SinkError as exc:
            if exc.kind is not ErrorKind.RETRIABLE:
                raise
            print(f"watcher tail: not reading {cfg.topics.withdrawals}: {exc}", file=err)
        if on_ready is not None:
            on_ready()
        shown = 0
        while not stop.is_set():
            for consumer in consumers:
                records = await consumer.fetch(timeout_ms=200)
                # Per partition in offset order; across partitions by broker timestamp.
                for rec in sorted(records, key=lambda r: (r.timestamp_ms, r.partition, r.offset)):
                    line, note = render(rec, opts)
                    if note is not None:
                        print(f"watcher tail: {note}", file=err)
                    if line is None:
                        continue
                    print(line, file=out, flush=True)
                    shown += 1
                    if opts.limit is not None and shown >= opts.limit:
                        return 0
        return 0
    finally:
        for consumer in consumers:
            with contextlib.suppress(Exception):
                await consumer.stop()
