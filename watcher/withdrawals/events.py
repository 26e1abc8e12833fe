"""Withdrawal events as the contract's JSON records (schema ``withdrawal-event.v1.json``).

Keyed by ``request_id`` so every event of one request lands on one partition, in
order. ``event_id`` is derived from the fact alone (see
:attr:`watcher.core.withdrawals.WithdrawalEvent.event_id`); a rejection's from its
type, request id and the digest of what was refused.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from watcher.core.withdrawals import WithdrawalEvent, WithdrawalEventType
from watcher.events import SCHEMA_VERSION, rfc3339
from watcher.ports import OutRecord
from watcher.types import ChainId, EventId
from watcher.withdrawals.intake import Rejected


def withdrawal_event_body(chain: ChainId, ev: WithdrawalEvent, emitted_at: float,
                          null_nonce: bool = False) -> dict[str, Any]:
    """``null_nonce``: a UTXO chain's event, whose ``nonce`` is there and null (the
    contract's field for EVM only), not left out."""
    r = ev.request
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": ev.event_id,
        "type": ev.type.value,
        "chain": chain,
        "emitted_at": rfc3339(emitted_at),
        "request_id": r.request_id,
        "asset": r.asset,
        "token_contract": r.token_contract,
        "to_address": r.to_address,
        "amount": str(r.amount),
        "decimals": r.decimals,
    }
    optional: dict[str, Any] = {
        "txid": ev.txid, "replaces_txid": ev.replaces_txid, "nonce": ev.nonce,
        "fee": None if ev.fee is None else str(ev.fee), "block_number": ev.block_number,
        "block_hash": ev.block_hash, "confirmations": ev.confirmations, "reason": ev.reason,
        "message": ev.message,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if null_nonce:
        body["nonce"] = None
    return body


def withdrawal_record(topic: str, chain: ChainId, ev: WithdrawalEvent, emitted_at: float,
                      null_nonce: bool = False) -> OutRecord:
    body = withdrawal_event_body(chain, ev, emitted_at, null_nonce)
    return OutRecord(topic, ev.request.request_id.encode(), orjson.dumps(body))


def rejection_event_id(rej: Rejected) -> EventId:
    parts = [WithdrawalEventType.REJECTED.value, rej.request_id or "", rej.digest]
    return EventId(hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest())


def rejection_body(rej: Rejected, emitted_at: float) -> dict[str, Any]:
    """Fields the requester sent are echoed where they are well-formed, else null (a
    malformed request may lack any of them)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": rejection_event_id(rej),
        "type": WithdrawalEventType.REJECTED.value,
        "chain": rej.chain,
        "emitted_at": rfc3339(emitted_at),
        "request_id": rej.request_id,
        "asset": rej.asset,
        "to_address": rej.to_address,
        "amount": rej.amount,
        "decimals": rej.decimals,
        "reason": rej.reason.value,
        "message": rej.message,
    }


def rejection_record(topic: str, input_key: bytes | None, rej: Rejected, emitted_at: float) -> OutRecord:
    """Keyed by the request id, or by the input record's key when the request id is unusable."""
    key = rej.request_id.encode() if rej.request_id is not None else (input_key or b"")
    return OutRecord(topic, key, orjson.dumps(rejection_body(rej, emitted_at)))
