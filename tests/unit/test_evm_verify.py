"""Checks of EVM answers against the block's bloom and transaction list, on a recorded block.

The golden values are anvil's: ``tests/fixtures/evm`` holds block 3 of the scenario as the
node answered it (its ``logsBloom`` and each receipt's), so the bloom function is checked
against a node's own computation, never against itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from chains.evm import parse, verify
from watcher.errors import AnswerCheck, NodeAnswerInvalid
from watcher.types import BlockHash

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evm"
BLOCK: dict[str, Any] = json.loads((FIXTURES / "block.json").read_text())
RECEIPTS: dict[str, Any] = json.loads((FIXTURES / "receipts.json").read_text())
META: dict[str, Any] = json.loads((FIXTURES / "meta.json").read_text())
BH = BlockHash(BLOCK["hash"])
TOKEN = META["payer"]  # the ERC-20 contract that emitted the block's Transfer logs
STRANGER = "0x" + "22" * 20


def receipts_in_order() -> list[Any]:
    return [RECEIPTS[tx["hash"]] for tx in BLOCK["transactions"]]


def pairs(logs: list[Any]) -> list[tuple[bytes, list[bytes]]]:
    return [(bytes.fromhex(x["address"][2:]), [bytes.fromhex(t[2:]) for t in x["topics"]])
            for x in logs]


def test_bloom_of_a_receipts_logs_is_the_nodes_bloom() -> None:
    with_logs = [r for r in RECEIPTS.values() if r["logs"]]
    assert with_logs  # the fixture has a receipt with token logs
    for receipt in RECEIPTS.values():
        assert verify.bloom_of(pairs(receipt["logs"])) == int(receipt["logsBloom"], 16)
    all_logs = [x for r in receipts_in_order() for x in r["logs"]]
    assert verify.bloom_of(pairs(all_logs)) == int(BLOCK["logsBloom"], 16)


def test_known_bloom_bits_of_the_transfer_topic() -> None:
    # Yellow Paper bloom: bits from the first three byte pairs of keccak(topic), mod 2048.
    # keccak256 of the 32 topic bytes begins ad a3 89 e1 fc 24, so the bits are, by hand,
    # 0xada3 % 2048 = 1443, 0x89e1 % 2048 = 481 and 0xfc24 % 2048 = 1060.
    topic = bytes.fromhex(parse.TRANSFER_TOPIC[2:])
    assert verify.bloom_bits(topic) == (1443, 481, 1060)


def test_bloom_may_match_only_with_topic_and_an_allow_listed_contract() -> None:
    bloom = int(BLOCK["logsBloom"], 16)
    assert verify.LogFilter.of([TOKEN], parse.TRANSFER_TOPIC).bloom_may_match(bloom)
    assert not verify.LogFilter.of([STRANGER], parse.TRANSFER_TOPIC).bloom_may_match(bloom)
    assert not verify.LogFilter.of([TOKEN], parse.TRANSFER_TOPIC).bloom_may_match(0)


def test_empty_logs_are_doubted_only_where_the_bloom_says_maybe() -> None:
    f = verify.LogFilter.of([TOKEN], parse.TRANSFER_TOPIC)
    bloom = int(BLOCK["logsBloom"], 16)
    token_logs = [x for r in receipts_in_order() for x in r["logs"]]
    assert verify.check_logs_answer([], bloom, f) is False       # dropped: not believed
    assert verify.check_logs_answer(token_logs, bloom, f) is True
    assert verify.check_logs_answer([], 0, f) is True            # the bloom says "no"
    other = verify.LogFilter.of([STRANGER], parse.TRANSFER_TOPIC)
    assert verify.check_logs_answer([], bloom, other) is True


def test_receipts_of_the_block_give_its_logs() -> None:
    logs = verify.logs_of_receipts(receipts_in_order(), BLOCK["transactions"], BH,
                                   int(BLOCK["logsBloom"], 16))
    assert len(logs) == sum(len(r["logs"]) for r in RECEIPTS.values()) == 2
    assert {x["address"] for x in logs} == {TOKEN}


def _drop_a_log(rs: list[Any]) -> list[Any]:
    # The four-topic log: its token id topic is set by no other log, so the bloom shows it.
    # (Dropping a log whose every item another log also sets cannot show in any bloom.)
    for r in rs:
        if r["logs"]:
            r["logs"] = r["logs"][:1]
    return rs


def _other_block(rs: list[Any]) -> list[Any]:
    rs[0]["blockHash"] = "0x" + "ee" * 32
    return rs


def _other_index(rs: list[Any]) -> list[Any]:
    rs[1]["transactionIndex"] = "0x7"
    return rs


@pytest.mark.parametrize(("name", "mangle", "check"), [
    ("a log dropped", _drop_a_log, AnswerCheck.LOGS),
    ("a receipt missing", lambda rs: rs[:-1], AnswerCheck.RECEIPTS),
    ("shuffled", lambda rs: rs[::-1], AnswerCheck.RECEIPTS),
    ("a receipt of another block", _other_block, AnswerCheck.RECEIPTS),
    ("a receipt at another index", _other_index, AnswerCheck.RECEIPTS),
    ("null for a receipt", lambda rs: [None, *rs[1:]], AnswerCheck.RECEIPTS),
    ("not a list", lambda rs: {"receipts": rs}, AnswerCheck.RECEIPTS),
    ("a malformed log", lambda rs: [{**r, "logs": [{"address": 5}]} if r["logs"] else r
                                    for r in rs], AnswerCheck.RECEIPTS),
])
def test_receipts_that_are_not_the_blocks_are_rejected(name: str, mangle: Any,
                                                       check: AnswerCheck) -> None:
    rs = mangle(copy.deepcopy(receipts_in_order()))
    with pytest.raises(NodeAnswerInvalid) as info:
        verify.logs_of_receipts(rs, BLOCK["transactions"], BH, int(BLOCK["logsBloom"], 16))
    assert info.value.check is check


def test_parse_bloom_names_the_field() -> None:
    assert verify.parse_bloom(BLOCK["logsBloom"], "block.logsBloom") == int(BLOCK["logsBloom"], 16)
    with pytest.raises(NodeAnswerInvalid, match=r"block\.logsBloom"):
        verify.parse_bloom("0x00", "block.logsBloom")
    with pytest.raises(NodeAnswerInvalid, match=r"block\.logsBloom"):
        verify.parse_bloom(None, "block.logsBloom")
