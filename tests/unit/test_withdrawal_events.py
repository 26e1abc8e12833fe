"""Withdrawal events as records: every type valid against the shipped schema, stable ids."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from watcher.core.withdrawals import Request, RequestId, WithdrawalEvent, WithdrawalEventType
from watcher.types import Address, AssetSymbol, BlockHash, ChainId, TxId
from watcher.withdrawals.events import rejection_record, withdrawal_event_body, withdrawal_record
from watcher.withdrawals.intake import Rejected, RejectReason

SCHEMAS = Path(__file__).resolve().parents[2] / "watcher" / "schemas"
ETH = ChainId("eth")
T = WithdrawalEventType
REQ = Request(RequestId("w-2026-0001"), AssetSymbol("USDC"),
              Address("0x5FbDB2315678afecb367f032d93F642f64180aa3"),
              Address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8"), 2_500_000, 6, "ab" * 32, 1_000)
TX1, TX2 = TxId("0x" + "11" * 32), TxId("0x" + "22" * 32)
EMITTED = 1_764_576_000.25  # 2025-12-01T08:00:00.250Z


def validator(name: str) -> jsonschema.Draft202012Validator:
    doc = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc, format_checker=jsonschema.FormatChecker())


EVENTS = [
    WithdrawalEvent(T.ACCEPTED, REQ),
    WithdrawalEvent(T.BROADCAST, REQ, txid=TX1, nonce=7, fee=2_100_000),
    WithdrawalEvent(T.REPLACED, REQ, txid=TX2, replaces_txid=TX1, nonce=7, fee=2_310_000),
    WithdrawalEvent(T.CONFIRMED, REQ, txid=TX2, nonce=7, fee=1_000, block_number=16,
                    block_hash=BlockHash("0x" + "aa" * 32), confirmations=12),
    WithdrawalEvent(T.FAILED, REQ, txid=TX2, nonce=7, fee=1_000, block_number=16,
                    block_hash=BlockHash("0x" + "aa" * 32), confirmations=12, reason="reverted",
                    message="the paying transaction reverted on chain"),
]


@pytest.mark.parametrize("ev", EVENTS, ids=lambda e: e.type.value)
def test_every_event_type_matches_the_schema(ev: WithdrawalEvent) -> None:
    record = withdrawal_record("payments.withdrawals", ETH, ev, EMITTED)
    assert record.key == b"w-2026-0001"
    body = orjson.loads(record.value or b"")
    validator("withdrawal-event.v1.json").validate(body)
    assert body["amount"] == "2500000" and body["decimals"] == 6
    assert body["emitted_at"] == "2025-12-01T08:00:00.250Z"


def test_confirmed_body_golden() -> None:
    # event_id: blake2b-128 of "withdrawal.confirmed|<request_id>|<digest>|<txid>|<block_hash>".
    body = withdrawal_event_body(ETH, EVENTS[3], EMITTED)
    assert body == {
        "schema_version": 1, "event_id": "dd42c7da94daa6022fd24c0eaac395a4", "type": "withdrawal.confirmed",
        "chain": "eth", "emitted_at": "2025-12-01T08:00:00.250Z", "request_id": "w-2026-0001",
        "asset": "USDC", "token_contract": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "to_address": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "amount": "2500000", "decimals": 6,
        "txid": TX2, "nonce": 7, "fee": "1000", "block_number": 16, "block_hash": "0x" + "aa" * 32,
        "confirmations": 12,
    }


def test_event_ids_are_derived_from_the_fact() -> None:
    ids = {e.event_id for e in EVENTS}
    assert len(ids) == len(EVENTS)
    again = WithdrawalEvent(T.BROADCAST, REQ, txid=TX1, nonce=7, fee=2_100_000)
    assert again.event_id == EVENTS[1].event_id
    other_block = WithdrawalEvent(T.CONFIRMED, REQ, txid=TX2, block_hash=BlockHash("0xbb"))
    assert other_block.event_id != EVENTS[3].event_id


@pytest.mark.parametrize("rej", [
    Rejected(RejectReason.LIMIT_EXCEEDED, "amount is above the per-request limit", "cd" * 32,
             request_id="w-9", chain="eth", asset="ETH", to_address=REQ.to_address, amount="5",
             decimals=18),
    Rejected(RejectReason.MALFORMED, "field chain is missing", "ef" * 32),
    Rejected(RejectReason.INVALID_AMOUNT, "amount must be a positive integer", "01" * 32,
             request_id="w-10", chain="eth", asset="ETH", to_address="x"),
], ids=lambda r: r.reason.value)
def test_rejections_match_the_schema_and_are_keyed(rej: Rejected) -> None:
    record = rejection_record("payments.withdrawals", b"input-key", rej, EMITTED)
    body = orjson.loads(record.value or b"")
    validator("withdrawal-event.v1.json").validate(body)
    assert body["reason"] == rej.reason.value and body["message"] == rej.message
    assert record.key == (rej.request_id.encode() if rej.request_id else b"input-key")


def test_schema_refuses_what_the_contract_forbids() -> None:
    v = validator("withdrawal-event.v1.json")
    good = withdrawal_event_body(ETH, EVENTS[2], EMITTED)
    assert v.is_valid(good)
    assert not v.is_valid({**good, "replaces_txid": None})           # replaced names what it replaces
    assert not v.is_valid({**good, "amount": "1.5"})
    assert not v.is_valid({**good, "request_id": None})              # only a rejection may lack it
    assert not v.is_valid({**withdrawal_event_body(ETH, EVENTS[4], EMITTED), "reason": "duplicate"})


def test_request_schema_accepts_the_contract_example() -> None:
    v = validator("withdrawal-request.v1.json")
    example = {"request_id": "w-2026-0001", "chain": "eth", "asset": "ETH",
               "to_address": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "amount": "1500000000000000000",
               "signature": "M6ptUoZdkljgQWaM+5GW9znQJA3NQcrRNLq25/NQQJ6M4RYiQYCUjBF8pCvTTv1WHbGf"
                            "RMjAviIdV3IkqyZyDg=="}
    assert v.is_valid(example)
    assert not v.is_valid({**example, "amount": "01"})
    assert not v.is_valid({**example, "request_id": "a b"})
