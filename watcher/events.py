"""Deposit events as the contract's JSON records (schema ``deposit-event.v1.json``).

``event_id`` is derived from the fact alone (type, deposit id, block hash), so a
re-derivation after a crash or on another replica gives the same id. A fact
with no block (``deposit.seen`` and the reversal of a seen deposit) is keyed by
its mempool episode instead, so a deposit seen, dropped and seen again gets new
ids. Amounts are strings holding integers in base units, with ``decimals``
beside them. Every ``deposit.reverted`` says why (``reason``); a block-path
reversal is always a ``reorg``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from watcher.core.deposits import DepositEvent
from watcher.core.mempool import UnconfirmedEvent
from watcher.ports import OutRecord
from watcher.types import BlockHash, ChainId, DepositEventType, DepositId, EventId, RevertReason

SCHEMA_VERSION = 1


def event_id(type_: DepositEventType, did: DepositId, block_hash: BlockHash) -> EventId:
    digest = hashlib.blake2b(f"{type_.value}|{did}|{block_hash}".encode(), digest_size=16)
    return EventId(digest.hexdigest())


def unconfirmed_event_id(type_: DepositEventType, did: DepositId, episode: int) -> EventId:
    # "mempool:<n>" can never equal a block hash (hex), so no block-path id collides.
    digest = hashlib.blake2b(f"{type_.value}|{did}|mempool:{episode}".encode(), digest_size=16)
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
    if ev.type is DepositEventType.REVERTED:
        body["reason"] = RevertReason.REORG.value
    return body


def unconfirmed_event_body(chain: ChainId, ev: UnconfirmedEvent, emitted_at: float
                           ) -> dict[str, Any]:
    d = ev.deposit
    t = d.transfer
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": unconfirmed_event_id(ev.type, d.deposit_id, ev.episode),
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
        "block_number": None,
        "block_hash": None,
        "confirmations": 0,
        "required_confirmations": d.required,
        "rbf": ev.rbf,
    }
    if t.from_address is not None:
        body["from_address"] = t.from_address
    if d.label is not None:
        body["label"] = d.label
    if ev.previous_type is not None:
        body["previous_type"] = ev.previous_type.value
    if ev.reason is not None:
        body["reason"] = ev.reason.value
    return body


def deposit_record(topic: str, chain: ChainId, ev: DepositEvent, emitted_at: float) -> OutRecord:
    body = deposit_event_body(chain, ev, emitted_at)
    # Keyed by deposit_id: every event of one deposit lands on one partition, in order.
    return OutRecord(topic, ev.deposit.deposit_id.encode(), orjson.dumps(body))


def unconfirmed_record(topic: str, chain: ChainId, ev: UnconfirmedEvent,
                       emitted_at: float) -> OutRecord:
    body = unconfirmed_event_body(chain, ev, emitted_at)
    # Same key as the block-path events of the deposit: one partition, in order.
    return OutRecord(topic, ev.deposit.deposit_id.encode(), orjson.dumps(body))
