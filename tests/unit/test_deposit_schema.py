"""The shipped deposit-event schema accepts every event the code builds and refuses what the
contract forbids (a reversal without its reason, a seen deposit with a block)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from watcher.core.deposits import DepositEvent, TrackedDeposit
from watcher.core.mempool import SeenDeposit, UnconfirmedEvent
from watcher.events import deposit_event_body, unconfirmed_event_body
from watcher.types import (
    Address,
    AssetSymbol,
    BlockHash,
    BlockRef,
    ChainId,
    DepositEventType,
    DepositId,
    RevertReason,
    Transfer,
    TxId,
)

DOC = json.loads((Path(__file__).resolve().parents[2] / "watcher" / "schemas" /
                  "deposit-event.v1.json").read_text())
jsonschema.Draft202012Validator.check_schema(DOC)
VALIDATOR = jsonschema.Draft202012Validator(DOC, format_checker=jsonschema.FormatChecker())

BTC = ChainId("btc")
TXID = TxId("ab" * 32)
T = Transfer(TXID, "vout:1", AssetSymbol("BTC"), None, Address("bc1qexample"), None, 12_345, 8)
DID = DepositId(f"btc:{TXID}:vout:1")
BLOCK = BlockRef(800_000, BlockHash("00" * 32), BlockHash("11" * 32), 1_700_000_000)
S, P, C, R = (DepositEventType.SEEN, DepositEventType.PENDING, DepositEventType.CONFIRMED,
              DepositEventType.REVERTED)


def block_body(type_: DepositEventType, previous: DepositEventType | None = None) -> dict[str, Any]:
    d = TrackedDeposit(DID, BLOCK, T, 3, "cust-1", previous)
    return deposit_event_body(BTC, DepositEvent(type_, d, 0 if type_ is R else 1, previous), 0.0)


def seen_body(type_: DepositEventType, reason: RevertReason | None = None) -> dict[str, Any]:
    ev = UnconfirmedEvent(type_, SeenDeposit(DID, T, 3, None), 4, True, reason)
    return unconfirmed_event_body(BTC, ev, 0.0)


GOOD = [
    ("pending", lambda: block_body(P)),
    ("confirmed", lambda: block_body(C)),
    ("reverted after pending: reorg", lambda: block_body(R, P)),
    ("reverted after confirmed: reorg", lambda: block_body(R, C)),
    ("seen", lambda: seen_body(S)),
    ("seen replaced", lambda: seen_body(R, RevertReason.REPLACED)),
    ("seen double-spent", lambda: seen_body(R, RevertReason.DOUBLE_SPENT)),
    ("seen dropped", lambda: seen_body(R, RevertReason.DROPPED)),
]


@pytest.mark.parametrize("build", [g[1] for g in GOOD], ids=[g[0] for g in GOOD])
def test_every_built_event_is_valid(build: Any) -> None:
    VALIDATOR.validate(build())


def test_block_path_reversal_says_reorg_and_seen_fields_are_null() -> None:
    assert block_body(R, C)["reason"] == "reorg"
    assert "reason" not in block_body(C)
    body = seen_body(S)
    assert (body["block_number"], body["block_hash"], body["confirmations"], body["rbf"]) == (
        None, None, 0, True)
    assert "block_timestamp" not in body and "reason" not in body


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


BAD = [
    ("reverted without reason", lambda: _without(block_body(R, P), "reason")),
    ("reverted without previous_type", lambda: _without(seen_body(R, RevertReason.DROPPED),
                                                         "previous_type")),
    ("unknown reason", lambda: {**block_body(R, P), "reason": "stolen"}),
    ("seen with a block hash", lambda: {**seen_body(S), "block_hash": "00" * 32}),
    ("seen with a block number", lambda: {**seen_body(S), "block_number": 5}),
    ("reversal of a seen deposit with a block", lambda: {**seen_body(R, RevertReason.REPLACED),
                                                         "block_hash": "00" * 32}),
    ("reversal of a seen deposit by reorg", lambda: {**seen_body(R, RevertReason.REPLACED),
                                                     "reason": "reorg"}),
    ("reorg of a block deposit without its block", lambda: {**block_body(R, C),
                                                            "block_hash": None}),
    ("rbf not a boolean", lambda: {**seen_body(S), "rbf": "yes"}),
]


@pytest.mark.parametrize("build", [b[1] for b in BAD], ids=[b[0] for b in BAD])
def test_forbidden_events_are_refused(build: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(build())
