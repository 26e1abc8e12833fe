"""``watcher tail``'s lines and filters, from records shaped like the contract's events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from watcher.kafka.client import Consumed
from watcher.tail import Filter, TailOptions, format_amount, format_event, render

DEPOSIT: dict[str, Any] = {
    "schema_version": 1, "event_id": "e1", "type": "deposit.confirmed", "chain": "eth",
    "emitted_at": "2026-12-01T08:00:00.000Z", "deposit_id": "eth:0xaa:tx", "asset": "ETH",
    "token_contract": None, "address": "0xAbCdEF0000000000000000000000000000000001",
    "amount": "1500000000000000000", "decimals": 18, "txid": "0xaa", "block_number": 120,
    "block_hash": "0x1234567890abcdef", "confirmations": 12, "required_confirmations": 12,
    "label": "cust-7",
}
WITHDRAWAL: dict[str, Any] = {
    "schema_version": 1, "event_id": "w1", "type": "withdrawal.rejected", "chain": "btc",
    "emitted_at": "2026-12-01T08:00:01.000Z", "request_id": "w-1", "asset": "BTC",
    "to_address": "bcrt1qxyz", "amount": "250000", "decimals": 8, "reason": "limit_exceeded",
    "message": "over the daily limit",
}


@pytest.mark.parametrize(("amount", "decimals", "text"), [
    ("1500000000000000000", 18, "1.5"),
    ("1", 18, "0.000000000000000001"),
    ("1000000", 6, "1"),
    ("0", 8, "0"),
    ("123456789012345678901234567890", 18, "123456789012.34567890123456789"),
    ("42", 0, "42"),
    ("-250000", 8, "-0.0025"),
    ("not-a-number", 8, "not-a-number"),
])
def test_format_amount_exact(amount: str, decimals: int, text: str) -> None:
    assert format_amount(amount, decimals) == text


def test_deposit_line() -> None:
    assert format_event(DEPOSIT) == (
        "2026-12-01T08:00:00.000Z eth deposit.confirmed     1.5 ETH to "
        "0xAbCdEF0000000000000000000000000000000001 [cust-7] block 120 (0x12345678…) conf 12/12 "
        "id eth:0xaa:tx")


def test_reversal_after_credit_says_so() -> None:
    line = format_event({**DEPOSIT, "type": "deposit.reverted", "previous_type": "deposit.confirmed",
                         "reason": "reorg"})
    assert "deposit.reverted" in line and "was deposit.confirmed reason reorg" in line


def test_withdrawal_line() -> None:
    assert format_event(WITHDRAWAL) == (
        "2026-12-01T08:00:01.000Z btc withdrawal.rejected   w-1 0.0025 BTC to bcrt1qxyz "
        "reason limit_exceeded: over the daily limit")


@pytest.mark.parametrize(("flt", "deposit", "withdrawal"), [
    (Filter(), True, True),
    (Filter(chains=frozenset({"eth"})), True, False),
    (Filter(types=frozenset({"deposit"})), True, False),
    (Filter(types=frozenset({"deposit.pending"})), False, False),
    (Filter(types=frozenset({"withdrawal.rejected", "deposit.confirmed"})), True, True),
    (Filter(types=frozenset({"deposit.conf"})), False, False),
    (Filter(address="0xabcdef0000000000000000000000000000000001"), True, False),
    (Filter(address="BCRT1QXYZ"), False, True),
])
def test_filters(flt: Filter, deposit: bool, withdrawal: bool) -> None:
    assert (flt.matches(DEPOSIT), flt.matches(WITHDRAWAL)) == (deposit, withdrawal)


def _rec(value: bytes | None) -> Consumed:
    return Consumed("payments.deposits", 0, 7, b"k", value, 0, ())


def test_render_never_raises_on_bad_records() -> None:
    opts = TailOptions()
    assert render(_rec(b"{nope"), opts) == (None, "payments.deposits[0]@7: not JSON, skipped")
    assert render(_rec(b"[1, 2]"), opts) == (None, "payments.deposits[0]@7: not a JSON object, skipped")
    assert render(_rec(None), opts) == (None, None)
    assert render(_rec(b'{"type": 5, "amount": null, "decimals": "x"}'), opts)[0] is not None


def test_json_mode_prints_the_raw_value() -> None:
    raw = orjson.dumps(DEPOSIT)
    assert render(_rec(raw), TailOptions(json=True)) == (raw.decode(), None)
