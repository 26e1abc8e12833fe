"""The crash test's oracle shown bad streams: each kind of wrong stream is caught.

A tiny chain: blocks 0-5 canonical; an ETH deposit mined in block 2, a token deposit
in block 3 (its Transfer log at block index 4), and a deposit seen in an orphaned block
2' that a reorg replaced. Events are written out by hand, as the watcher would publish
them, so the oracle is judged against literal streams, not against the watcher."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.oracle import check_stream
from tests.support.solidity import Event, Sent

H = {n: "0x" + f"{n:02x}" * 32 for n in range(6)}
ORPHAN = "0x" + "ee" * 32
TX_ETH, TX_TKN, TX_GONE, TX_NOISE = ("0x" + c * 64 for c in "abcd")
TOKEN = "0x" + "70" * 20
TO = "0x52908400098527886E0F7030069857D2E4169EE7"
REQUIRED = {"ETH": 3, "TKN": 2}
RECEIPTS: dict[str, dict[str, Any] | None] = {
    TX_ETH: {"blockHash": H[2], "blockNumber": "0x2", "logs": []},
    TX_TKN: {"blockHash": H[3], "blockNumber": "0x3",
             "logs": [{"address": TOKEN, "logIndex": "0x4"}]},
    TX_GONE: None,  # dropped by the reorg
}
DEPOSITS = [(Sent(TX_ETH, 2, H[2], {}), "ETH", TO, 10**18),
            (Sent(TX_TKN, 3, H[3], {}), "TKN", TO, 500),
            (Sent(TX_GONE, 2, ORPHAN, {}), "ETH", TO, 7)]


def ev(type_: str, txid: str, locator: str, number: int, block_hash: str, asset: str,
       amount: int, eid: str) -> Event:
    return {"event_id": eid, "type": type_, "deposit_id": f"eth:{txid}:{locator}",
            "txid": txid, "block_number": number, "block_hash": block_hash, "asset": asset,
            "amount": str(amount), "address": TO, "required_confirmations": REQUIRED[asset]}


GOOD: list[Event] = [
    ev("deposit.pending", TX_GONE, "tx", 2, ORPHAN, "ETH", 7, "e1"),
    ev("deposit.pending", TX_ETH, "tx", 2, H[2], "ETH", 10**18, "e2"),
    ev("deposit.reverted", TX_GONE, "tx", 2, ORPHAN, "ETH", 7, "e3"),
    ev("deposit.confirmed", TX_TKN, "log:4", 3, H[3], "TKN", 500, "e4"),
    ev("deposit.confirmed", TX_ETH, "tx", 2, H[2], "ETH", 10**18, "e5"),
]


def judge(events: list[Event], noise: tuple[str, ...] = (TX_NOISE,)) -> list[str]:
    return check_stream(events, H, 5, DEPOSITS, noise, RECEIPTS, REQUIRED)


def test_the_true_stream_passes() -> None:
    assert judge(GOOD) == []


@pytest.mark.parametrize(("name", "stream", "rules"), [
    ("a duplicate", [*GOOD, GOOD[4]], {"(a)", "(c)"}),
    ("a duplicate pending", [GOOD[1], *GOOD], {"(a)"}),
    ("a duplicate fact under another id", [*GOOD, {**GOOD[4], "event_id": "e9"}], {"(a)", "(c)"}),
    ("a missing confirmed", GOOD[:4], {"(c)", "(e)"}),
    ("an unreverted orphan", [GOOD[0], *GOOD[1:2], *GOOD[3:]], {"(d)"}),
    ("out of order", [GOOD[4], *GOOD[:4]], {"(b)"}),
    ("a confirmed deposit reverted", [*GOOD, ev("deposit.reverted", TX_ETH, "tx", 2, H[2], "ETH",
                                                 10**18, "e6")], {"(c)"}),
    ("a wrong amount", [*GOOD[:4], {**GOOD[4], "amount": "1"}], {"(e)"}),
    ("an invented deposit", [*GOOD, ev("deposit.confirmed", TX_NOISE, "tx", 1, H[1], "ETH", 1,
                                       "e7")], {"(e)", "noise"}),
])
def test_a_bad_stream_is_caught(name: str, stream: list[Event], rules: set[str]) -> None:
    problems = judge(stream)
    assert problems, f"{name}: the oracle saw nothing wrong"
    assert {p.split(" ", 1)[0] for p in problems} == rules, problems
