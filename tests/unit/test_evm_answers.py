"""The typed (msgspec) decoding of block answers accepts and refuses exactly what the dict
path does, and finds the same transfers: each case goes through both."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from chains.evm import answers, parse
from tests.unit.test_evm_parse import (
    ASSETS,
    BH,
    OTHER,
    REF,
    W1,
    W2,
    WATCHED,
    _recorded_setup,
    block,
    cs,
    h,
    header,
    load,
    log,
    tx,
)
from watcher.errors import AnswerCheck, NodeAnswerInvalid


def both(obj: object, ref: Any = REF, watched: Any = WATCHED, assets: Any = ASSETS
         ) -> tuple[parse.ScannedBlock, parse.ScannedBlock]:
    return (parse.scan_block(obj, ref, watched, assets),
            parse.scan_block_json(orjson.dumps(obj), ref, watched, assets))


def found(s: parse.ScannedBlock) -> list[tuple[int, str, str, str | None, int]]:
    return [(c.tx_index, c.transfer.txid, c.transfer.to_address, c.transfer.from_address,
             c.transfer.amount) for c in s.candidates]


@pytest.mark.parametrize(("txs", "expected"), [
    ([], []),
    ([tx(0, OTHER)], []),
    ([tx(0, None)], []),
    ([tx(0, W1, 0)], []),
    ([{k: v for k, v in tx(0, W1).items() if k != "to"}], []),  # no "to": a creation
    ([tx(0, W1, 10)], [(0, h(0x7000), cs(W1), cs("0x" + "0" * 37 + "f00"), 10)]),
    ([tx(0, OTHER), tx(1, W2, 2), tx(2, W1.upper().replace("0X", "0x"), 1)],
     [(1, h(0x7001), cs(W2), cs("0x" + "0" * 37 + "f00"), 2),
      (2, h(0x7002), cs(W1), cs("0x" + "0" * 37 + "f00"), 1)]),
    # fields the scan does not read may be anything, on both paths
    ([tx(0, W1, 4, input=5, accessList={"x": [1]}, v=None)],
     [(0, h(0x7000), cs(W1), cs("0x" + "0" * 37 + "f00"), 4)]),
])
def test_same_candidates(txs: list[dict[str, Any]],
                         expected: list[tuple[int, str, str, str | None, int]]) -> None:
    by_dict, by_view = both(block(*txs))
    assert found(by_dict) == found(by_view) == expected
    assert by_view.ref == REF and by_view.logs_bloom == by_dict.logs_bloom


@pytest.mark.parametrize("bad", [
    block(tx(0, OTHER, blockHash=h(0xBAD))),
    block(tx(0, W1, blockHash=h(0xBAD))),
    block("0x" + "ab" * 32),
    block(tx(0, W1, value="12")),
    block({**tx(0, W1), "value": None}),
    block({**tx(0, W1), "value": [1]}),
    block(tx(0, W1, transactionIndex="0x5")),
    block(tx(0, W1, **{"from": "0x12"})),
    block(tx(0, "0xzz")),
    block(tx(0, 5)),
    block({k: v for k, v in tx(0, OTHER).items() if k != "blockHash"}),
    {**header(), "transactions": None},
    header(),
    {**header(hash=h(0xBAD)), "transactions": []},
    {**header(number="0x8"), "transactions": []},
    {**header(number=8), "transactions": []},
    {**header(parentHash=h(0xBAD)), "transactions": []},
    block(tx(0, W1), tx(1, W2, hash=h(0x7000))),
    [block()],
    "block",
])
def test_same_refusals(bad: object) -> None:
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_block(bad, REF, WATCHED, ASSETS)
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_block_json(orjson.dumps(bad), REF, WATCHED, ASSETS)


def test_null_and_not_json_are_refused() -> None:
    with pytest.raises(NodeAnswerInvalid) as info:
        parse.scan_block_json(b"null", REF, WATCHED, ASSETS)
    assert info.value.check is AnswerCheck.NULL_BLOCK
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_block_json(b'{"number": "0x7", ', REF, WATCHED, ASSETS)


def test_logs_checked_against_typed_transactions() -> None:
    """Token logs name their transaction by index and hash: checked against the views too."""
    raw = orjson.dumps(block(tx(0, OTHER), tx(1, OTHER)))
    s = parse.scan_block_json(raw, REF, WATCHED, ASSETS)
    parse.scan_logs([log(0, 1, W1, 9)], s, WATCHED, ASSETS)
    assert [(t.txid, t.locator, t.amount) for t in s.transfers(set())] == [
        (h(0x7001), "log:0", 9)]
    for wrong in (log(1, 2, W1), log(1, 0, W1, transactionHash=h(0x7001))):
        s = parse.scan_block_json(raw, REF, WATCHED, ASSETS)
        with pytest.raises(NodeAnswerInvalid):
            parse.scan_logs([wrong], s, WATCHED, ASSETS)


def test_header_views() -> None:
    view = answers.header(orjson.dumps({**header(), "logsBloom": "0x00", "extra": [1, 2]}))
    assert parse.parse_header(view, expect_hash=BH, expect_number=7) == REF
    assert answers.header(b"null") is None
    with pytest.raises(NodeAnswerInvalid):
        parse.parse_header(answers.header(orjson.dumps(header(hash="0x12"))))


def test_recorded_anvil_block_both_ways() -> None:
    rec = {name: load(name) for name in ("block", "logs", "meta")}
    ref, watched, assets = _recorded_setup(rec)
    by_dict, by_view = both(rec["block"], ref, watched, assets)
    assert found(by_dict) == found(by_view)
    assert len(found(by_view)) == 2  # the plain transfer and the one to the reverter
    for s in (by_dict, by_view):
        parse.scan_logs(copy.deepcopy(rec["logs"]), s, watched, assets)
    assert by_dict.found == by_view.found and len(by_view.found) == 1
    assert [answers.tx_hash_of(t) for t in by_view.txs] == [t["hash"] for t in rec["block"]
                                                            ["transactions"]]


def test_contents_batch_in_one_pass_equals_the_two_pass_decoding() -> None:
    """A contents batch decoded with its results in the envelope's pass gives the views and
    lists the two-pass decoding gives; an answer of the wrong shape is refused."""
    from chains.evm.rpc import EvmRpcClient
    from watcher.config import Endpoint

    rec = {name: load(name) for name in ("block", "logs", "meta")}
    ref, watched, assets = _recorded_setup(rec)
    raw = orjson.dumps([{"jsonrpc": "2.0", "id": 8, "result": rec["logs"]},
                        {"jsonrpc": "2.0", "id": 7, "result": rec["block"]}])
    client = EvmRpcClient("t", Endpoint("e", "http://127.0.0.1:1"), chain_id=1, timeout_s=1)
    one = client._raw_replies(200, raw, 7, 2, contents=True)
    two = client._raw_replies(200, raw, 7, 2)
    assert type(one[0]) is answers.BlockView and one[1] == answers.generic(two[1]) == rec["logs"]
    scans = [parse.scan_block_json(r[0], ref, watched, assets) for r in (one, two)]
    for s, r in zip(scans, (one, two), strict=True):
        parse.scan_logs(answers.generic(r[1]), s, watched, assets)
    assert found(scans[0]) == found(scans[1]) and scans[0].found == scans[1].found
    swapped = client._raw_replies(200, orjson.dumps([
        {"jsonrpc": "2.0", "id": 7, "result": rec["logs"]},
        {"jsonrpc": "2.0", "id": 8, "result": rec["block"]}]), 7, 2, contents=True)
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_block_json(swapped[0], ref, watched, assets)  # logs where a block should be
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_logs(answers.generic(swapped[1]), scans[0], watched, assets)
    with pytest.raises(NodeAnswerInvalid) as info:
        client._raw_replies(200, orjson.dumps([{"jsonrpc": "2.0", "id": 7, "result": "0x12"},
                                               {"jsonrpc": "2.0", "id": 8, "result": []}]),
                            7, 2, contents=True)
    assert info.value.check is AnswerCheck.BATCH
