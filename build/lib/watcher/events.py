"""Deposit events as the contract's JSON records (schema ``deposit-event.v1.json``).

``event_id`` is derived from the fact alone (type, deposit id, block hash), so a
re-derivation after a crash or on another replica gives the same id. Amounts
are strings holding integers in base units, with ``decimals`` beside them.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from watcher.core.deposits import DepositEvent
from watcher.ports import OutRecord
from watcher.types import BlockHash, ChainId, DepositEventType, DepositId, EventId

SCHEMA_VERSION = 1


def event_id(type_: DepositEventType, did: DepositId, block_hash: BlockHash) -> EventId:
    digest = hashlib.blake2b(f"{type_.value}|{did}|{block_hash}".encode(), digest_size=16)
    return EventId(digest.hexdigest())


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def deposit_event_body(chain: ChainId, ev: DepositEvent, emitted_at: float) -> dict[str, Any]:
    d = ev.deposit
    t = d.transfer
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id(ev.type, d.deposit_id, d.block.hash),
        "type": ev.type.value,
        "chain": chain,
        "emitted_at": rfc3339(emitted_at),
        "deposit_id": d.deposit_id,
        "asset": t.asset,
        "token_contract": t.token_contract,
        "address": t.to_address,
        "amount": str(t.amount),
        "decimals": t.decimals,
        "txid": t.txid,
        "block_number": d.block.number,
        "block_hash": d.block.hash,
        "block_timestamp": d.block.timestamp,
        "confirmations": ev.confirmations,
        "required_confirmations": d.required,
    }
    if t.from_address is not None:
        body["from_address"] = t.from_address
    if d.label is not None:
        body["label"] = d.label
    if ev.previous_type is not None:
        body["previous_type"] = ev.previous_type.value
    return body


def deposit_record(topic: str, chain: ChainId, ev: DepositEvent, emitted_at: float) -> OutRecord:
    body = deposit_event_body(chain, ev, emitted_at)
    # Keyed by deposit_id: every event of one deposit lands on one partition, in order.
    return OutRecord(topic, ev.deposit.deposit_id.encode(), orjson.dumps(body))
