"""Parsing and checking of EVM node answers: table-driven, plus answers recorded from anvil."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address

from chains.evm import parse
from chains.evm.adapter import EvmAddressCodec
from chains.evm.parse import TRANSFER_TOPIC, Assets, TokenMeta
from watcher.errors import InvalidAddress, NodeAnswerInvalid
from watcher.types import Address, AssetSymbol, BlockHash, BlockRef, Transfer, TxId

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evm"


def cs(address: str) -> str:
    return str(to_checksum_address(address))


def load(name: str) -> Any:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def key(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def h(n: int) -> str:
    return "0x" + f"{n:064x}"


def a(n: int) -> str:
    return "0x" + f"{n:040x}"


def word(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()


TOKEN = a(0xAB)
ASSETS = Assets(AssetSymbol("ETH"), 18, {TOKEN: TokenMeta(Address(to_checksum_address(TOKEN)),
                                                          AssetSymbol("USDC"), 6)})
W1, W2, OTHER = a(0x1001), a(0x1002), a(0x2002)
WATCHED = {key(W1), key(W2)}
BH = h(0xB10C)
REF = BlockRef(number=7, hash=BlockHash(BH), parent_hash=BlockHash(h(0xB10B)), timestamp=99)


def header(**over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"number": "0x7", "hash": BH, "parentHash": h(0xB10B),
                           "timestamp": "0x63"}
    obj.update(over)
    return obj


def tx(i: int, to: object, value: int | str = 1, **over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"hash": h(0x7000 + i), "blockHash": BH, "transactionIndex": hex(i),
                           "from": a(0xF00), "to": to, "input": "0x",
                           "value": hex(value) if isinstance(value, int) else value}
    obj.update(over)
    return obj


def block(*txs: object) -> dict[str, Any]:
    return {**header(), "transactions": list(txs)}


def log(index: int, tx_index: int, to: str, amount: int = 5, **over: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "address": TOKEN, "blockHash": BH, "logIndex": hex(index),
        "transactionIndex": hex(tx_index), "transactionHash": h(0x7000 + tx_index),
        "topics": [TRANSFER_TOPIC, word(a(0xF00)), word(to)],
        "data": "0x" + f"{amount:064x}", "removed": False,
    }
    obj.update(over)
    return obj


def scanned(*txs: dict[str, Any]) -> parse.ScannedBlock:
    return parse.scan_block(block(*txs), REF, WATCHED, ASSETS)


def summary(transfers: tuple[Transfer, ...] | list[Transfer]) -> list[tuple[str, str, str, int]]:
    return [(t.txid[-4:], t.locator, t.to_address, t.amount) for t in transfers]


# ------------------------------------------------------------------ scalars and headers


@pytest.mark.parametrize(("value", "expected"), [
    ("0x0", 0), ("0x1", 1), ("0xff", 255), ("0xFF", 255), ("0x" + "f" * 64, 2**256 - 1),
])
def test_quantity_ok(value: str, expected: int) -> None:
    assert parse.quantity(value, "x") == expected


@pytest.mark.parametrize("value", [
    None, 1, "", "0x", "ff", "0x 1", "0x1_0", "0xg", "0x" + "f" * 65, " 0x1", 1.0,
])
def test_quantity_rejects(value: object) -> None:
    with pytest.raises(NodeAnswerInvalid):
        parse.quantity(value, "x")


def test_header_ok_and_lowercases_hashes() -> None:
    ref = parse.parse_header(header(hash=BH.upper().replace("0X", "0x")), expect_hash=BH,
                             expect_number=7)
    assert ref == REF


@pytest.mark.parametrize(("obj", "kwargs"), [
    (None, {}),
    ([], {}),
    (header(number=None), {}),
    (header(number=7), {}),
    (header(hash=None), {}),
    (header(hash=BH[:-2]), {}),
    (header(hash=BH + "00"), {}),
    (header(parentHash="0x12"), {}),
    (header(timestamp=None), {}),
    (header(), {"expect_hash": h(0xDEAD)}),
    (header(), {"expect_number": 8}),
])
def test_header_rejects(obj: object, kwargs: dict[str, Any]) -> None:
    with pytest.raises(NodeAnswerInvalid):
        parse.parse_header(obj, **kwargs)


# ------------------------------------------------------------------ top-level transactions


@pytest.mark.parametrize(("txs", "expected"), [
    ([], []),
    ([tx(0, OTHER)], []),
    ([tx(0, None)], []),  # contract creation
    ([tx(0, W1, 0)], []),  # no value
    ([tx(0, W1, 10)], [("7000", "tx", W1, 10)]),
    ([tx(0, W1.upper().replace("0X", "0x"), 3)], [("7000", "tx", W1, 3)]),
    ([tx(0, OTHER), tx(1, W2, 2), tx(2, W1, 1)],
     [("7001", "tx", W2, 2), ("7002", "tx", W1, 1)]),
])
def test_native_candidates(txs: list[dict[str, Any]],
                           expected: list[tuple[str, str, str, int]]) -> None:
    s = scanned(*txs)
    found = [c.transfer for c in s.candidates]
    assert summary(found) == [(x, loc, cs(to), n) for x, loc, to, n in expected]
    for t in found:
        assert t.asset == "ETH" and t.decimals == 18 and t.token_contract is None
        assert t.from_address == cs(a(0xF00))
        assert isinstance(t.amount, int)


@pytest.mark.parametrize("bad", [
    block(tx(0, OTHER, blockHash=h(0xBAD))),  # a transaction of another block
    block(tx(0, W1, blockHash=h(0xBAD))),
    block("0x" + "ab" * 32),  # hashes only, not objects
    block(tx(0, W1, value="12")),
    block(tx(0, W1, transactionIndex="0x5")),
    block(tx(0, W1, **{"from": "0x12"})),
    block(tx(0, "0xzz")),
    block(tx(0, 5)),
    {**header(), "transactions": None},
    {**header(hash=h(0xBAD)), "transactions": []},
    {**header(number="0x8"), "transactions": []},
    {**header(parentHash=h(0xBAD)), "transactions": []},
    block(tx(0, W1), tx(1, W2, hash=h(0x7000))),  # one hash twice
])
def test_scan_block_rejects(bad: object) -> None:
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_block(bad, REF, WATCHED, ASSETS)


@pytest.mark.parametrize(("receipt", "expected"), [
    ({"transactionHash": h(0x7000), "blockHash": BH, "status": "0x1"}, True),
    ({"transactionHash": h(0x7000), "blockHash": BH, "status": "0x0"}, False),
])
def test_receipt_status(receipt: dict[str, Any], expected: bool) -> None:
    assert parse.receipt_succeeded(receipt, TxId(h(0x7000)), BlockHash(BH)) is expected


@pytest.mark.parametrize("receipt", [
    None,
    [],
    {"transactionHash": h(0x7000), "blockHash": h(0xBAD), "status": "0x1"},  # reorged
    {"transactionHash": h(0x7001), "blockHash": BH, "status": "0x1"},
    {"transactionHash": h(0x7000), "blockHash": BH},  # pre-Byzantium: no status
    {"transactionHash": h(0x7000), "blockHash": BH, "status": "0x2"},
])
def test_receipt_rejects(receipt: object) -> None:
    with pytest.raises(NodeAnswerInvalid):
        parse.receipt_succeeded(receipt, TxId(h(0x7000)), BlockHash(BH))


# ------------------------------------------------------------------ token logs

_TXS = [tx(0, OTHER), tx(1, OTHER), tx(2, OTHER)]


@pytest.mark.parametrize(("logs", "expected"), [
    ([], []),
    ([log(4, 1, W1, 5)], [("7001", "log:4", W1, 5)]),
    ([log(4, 1, OTHER, 5)], []),
    ([log(4, 1, W1, 0)], []),  # zero amount: address-poisoning spam
    ([log(4, 1, W1, address=a(0xCC))], []),  # not allow-listed
    ([log(4, 1, W1, address=TOKEN.upper().replace("0X", "0x"))], [("7001", "log:4", W1, 5)]),
    ([log(4, 1, W1, topics=[TRANSFER_TOPIC, word(a(0xF00)), word(W1), h(1)], data="0x")],
     []),  # ERC-721: four topics
    ([log(4, 1, W1, topics=[h(0x1234), word(a(0xF00)), word(W1)])], []),  # another event
    ([log(4, 1, W1, data="0x" + "00" * 31 + "05" + "00")], []),  # not 32 bytes of data
    ([log(4, 1, W1, data="0x05")], []),
    ([log(4, 1, W1, topics=[TRANSFER_TOPIC, word(a(0xF00)), "0x01" + word(W1)[4:]])], []),
    ([log(4, 1, W1, 2**256 - 1)], [("7001", "log:4", W1, 2**256 - 1)]),
    ([log(9, 2, W2, 1), log(3, 0, W1, 2), log(4, 0, OTHER, 3)],
     [("7000", "log:3", W1, 2), ("7002", "log:9", W2, 1)]),
])
def test_token_logs(logs: list[dict[str, Any]],
                    expected: list[tuple[str, str, str, int]]) -> None:
    s = scanned(*_TXS)
    parse.scan_logs(logs, s, WATCHED, ASSETS)
    got = s.transfers(set())
    assert summary(got) == [(x, loc, cs(to), n) for x, loc, to, n in expected]
    for t in got:
        assert t.asset == "USDC" and t.decimals == 6
        assert t.token_contract == cs(TOKEN)
        assert t.from_address == cs(a(0xF00))


@pytest.mark.parametrize("logs", [
    None,
    [None],
    [log(4, 1, W1, blockHash=h(0xBAD))],
    [log(4, 1, OTHER, blockHash=h(0xBAD))],  # checked even when it pays nobody watched
    [log(4, 1, W1, removed=True)],
    [log(4, 1, W1, transactionHash=h(0x7002))],  # not the tx at that index
    [log(4, 7, W1, transactionHash=h(0x7007))],  # index beyond the block
    [log(4, 1, W1), log(4, 2, W2)],  # one log index twice
    [log(4, 1, W1, logIndex=None)],
])
def test_token_logs_reject(logs: object) -> None:
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_logs(logs, scanned(*_TXS), WATCHED, ASSETS)


# ------------------------------------------------------------------ internal transfers


def frame(to: str, value: int = 0, kind: str = "CALL", calls: list[Any] | None = None,
          error: str | None = None, sender: str = a(0xC0)) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": kind, "from": sender, "to": to, "value": hex(value)}
    if calls is not None:
        obj["calls"] = calls
    if error is not None:
        obj["error"] = error
    return obj


def traced(top: dict[str, Any], i: int = 0) -> dict[str, Any]:
    return {"txHash": h(0x7000 + i), "result": top}


@pytest.mark.parametrize(("top", "expected"), [
    (frame(W1, 5), []),  # the top-level frame is the tx transfer, never repeated
    (frame(OTHER, 0, calls=[frame(W1, 3)]), [("trace:0", W1, 3)]),
    (frame(OTHER, 0, calls=[frame(OTHER), frame(OTHER), frame(OTHER, calls=[
        frame(OTHER), frame(W2, 4)])]), [("trace:2.1", W2, 4)]),
    (frame(OTHER, calls=[frame(OTHER, calls=[frame(OTHER), frame(OTHER), frame(OTHER, calls=[
        frame(OTHER), frame(W1, 1)])])]), [("trace:0.2.1", W1, 1)]),
    (frame(OTHER, calls=[frame(W1, 0)]), []),  # no value
    (frame(OTHER, calls=[frame(OTHER, 2)]), []),  # not watched
    (frame(OTHER, calls=[frame(W1, 2, error="execution reverted")]), []),
    (frame(OTHER, calls=[frame(OTHER, error="out of gas", calls=[frame(W1, 2)])]), []),
    (frame(OTHER, error="execution reverted", calls=[frame(W1, 2)]), []),  # tx failed
    (frame(OTHER, calls=[frame(W1, 2, kind="DELEGATECALL")]), []),
    (frame(OTHER, calls=[frame(W1, 2, kind="CALLCODE")]), []),
    (frame(OTHER, calls=[frame(W1, 2, kind="STATICCALL")]), []),
    (frame(OTHER, calls=[frame(W1, 2, kind="SELFDESTRUCT")]), [("trace:0", W1, 2)]),
    (frame(OTHER, calls=[frame(W1, 2, kind="CREATE")]), [("trace:0", W1, 2)]),
    (frame(OTHER, calls=[frame(W1, 2, kind="CREATE2")]), [("trace:0", W1, 2)]),
    (frame(OTHER, calls=[frame(W1, 1), frame(W1, 2), frame(W2, 3, calls=[frame(W1, 4)])]),
     [("trace:0", W1, 1), ("trace:1", W1, 2), ("trace:2", W2, 3), ("trace:2.0", W1, 4)]),
    (frame(OTHER, calls=[frame(OTHER, error="reverted"), frame(W1, 9)]), [("trace:1", W1, 9)]),
])
def test_internal_transfers(top: dict[str, Any], expected: list[tuple[str, str, int]]) -> None:
    s = scanned(tx(0, OTHER))
    parse.scan_traces([traced(top)], s, WATCHED, ASSETS)
    got = s.transfers(set())
    assert [(t.locator, t.to_address, t.amount) for t in got] == [
        (loc, cs(to), n) for loc, to, n in expected]
    for t in got:
        assert t.txid == h(0x7000) and t.asset == "ETH" and t.token_contract is None
        assert t.from_address == cs(a(0xC0))


def test_deep_call_tree_needs_no_recursion() -> None:
    top = frame(OTHER)
    node = top
    for _ in range(3000):
        child = frame(OTHER)
        node["calls"] = [child]
        node = child
    node["calls"] = [frame(W1, 1)]
    s = scanned(tx(0, OTHER))
    parse.scan_traces([traced(top)], s, WATCHED, ASSETS)
    (t,) = s.transfers(set())
    assert t.locator == "trace:" + ".".join(["0"] * 3001)


@pytest.mark.parametrize("traces", [
    None,
    [],  # one transaction, no trace
    [traced(frame(OTHER)), traced(frame(OTHER), 1)],
    [traced(frame(OTHER), 5)],  # trace of another transaction
    [{"txHash": h(0x7000), "error": "tracing failed"}],
    [traced(frame(OTHER, calls=[frame(W1, 2, kind="CALL") | {"value": "zz"}]))],
    [traced(frame(OTHER, calls={"0": frame(W1, 1)}))],  # type: ignore[arg-type]
    [traced(frame(OTHER, calls=["x"]))],
])
def test_traces_reject(traces: object) -> None:
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_traces(traces, scanned(tx(0, OTHER)), WATCHED, ASSETS)


def test_one_tx_paying_several_gives_several_transfers_in_order() -> None:
    s = scanned(tx(0, OTHER), tx(1, W1, 10))
    parse.scan_traces([traced(frame(OTHER)),
                       traced(frame(W1, 10, calls=[frame(W2, 4)]), 1)], s, WATCHED, ASSETS)
    parse.scan_logs([log(0, 1, W2, 6), log(1, 1, W1, 7)], s, WATCHED, ASSETS)
    assert summary(s.transfers({TxId(h(0x7001))})) == [
        ("7001", "tx", cs(W1), 10),
        ("7001", "trace:0", cs(W2), 4),
        ("7001", "log:0", cs(W2), 6),
        ("7001", "log:1", cs(W1), 7),
    ]
    # without a successful receipt the tx transfer is left out, the others stay
    assert [t.locator for t in s.transfers(set())] == ["trace:0", "log:0", "log:1"]


# ------------------------------------------------------------------ recorded from anvil


@pytest.fixture(scope="module")
def recorded() -> dict[str, Any]:
    return {name: load(name) for name in ("block", "logs", "trace", "receipts", "meta")}


def _recorded_setup(rec: dict[str, Any]) -> tuple[BlockRef, set[bytes], Assets]:
    meta = rec["meta"]
    ref = parse.parse_header(rec["block"], expect_hash=meta["block_hash"])
    watched = {key(meta["watched"]), key(meta["reverter"])}
    assets = Assets(AssetSymbol("ETH"), 18, {meta["payer"].lower(): TokenMeta(
        Address(to_checksum_address(meta["payer"])), AssetSymbol("TKN"), 6)})
    return ref, watched, assets


def test_recorded_block(recorded: dict[str, Any]) -> None:
    meta = recorded["meta"]
    ref, watched, assets = _recorded_setup(recorded)
    assert ref.number == meta["block_number"]
    s = parse.scan_block(recorded["block"], ref, watched, assets)
    parse.scan_logs(recorded["logs"], s, watched, assets)
    parse.scan_traces(recorded["trace"], s, watched, assets)
    txs = meta["txs"]
    # native candidates: the plain transfer and the one to the reverting contract
    assert sorted(c.transfer.txid for c in s.candidates) == sorted(
        [txs["eth_to_watched"], txs["reverted"]])
    succeeded = {c.transfer.txid for c in s.candidates
                 if parse.receipt_succeeded(recorded["receipts"][c.transfer.txid],
                                            c.transfer.txid, ref.hash)}
    assert succeeded == {txs["eth_to_watched"]}
    got = s.transfers(succeeded)
    w = cs(meta["watched"])
    assert [(t.txid, t.locator, t.asset, t.to_address, t.amount) for t in got] == [
        (txs["eth_to_watched"], "tx", "ETH", w, 10**18),
        (txs["payer"], "trace:1", "ETH", w, 7),  # trace:0 (to the reverter) failed
        (txs["payer"], "log:0", "TKN", w, 1000),  # log:1 is ERC-721-like: ignored
    ]
    by_locator = {t.locator: t for t in got}
    assert by_locator["tx"].from_address == cs(
        "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266")
    assert by_locator["trace:1"].from_address == cs(meta["payer"])
    assert by_locator["log:0"].token_contract == cs(meta["payer"])
    assert by_locator["log:0"].decimals == 6


def test_recorded_block_checked_against_another_hash(recorded: dict[str, Any]) -> None:
    ref, watched, assets = _recorded_setup(recorded)
    tampered = copy.deepcopy(recorded["block"])
    tampered["transactions"][1]["blockHash"] = h(0xBAD)
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_block(tampered, ref, watched, assets)
    other = BlockRef(ref.number, BlockHash(h(0xBAD)), ref.parent_hash)
    with pytest.raises(NodeAnswerInvalid):
        parse.scan_block(recorded["block"], other, watched, assets)


def test_recorded_nothing_watched(recorded: dict[str, Any]) -> None:
    ref, _, assets = _recorded_setup(recorded)
    s = parse.scan_block(recorded["block"], ref, set(), assets)
    parse.scan_logs(recorded["logs"], s, set(), assets)
    parse.scan_traces(recorded["trace"], s, set(), assets)
    assert s.transfers(set()) == ()


# ------------------------------------------------------------------ address codec

_MIXED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # the EIP-55 test vector


@pytest.mark.parametrize(("text", "canonical"), [
    (_MIXED, _MIXED),
    (_MIXED.lower(), _MIXED),
    ("0x" + _MIXED[2:].upper(), _MIXED),
    ("0x" + "0" * 40, "0x" + "0" * 40),
])
def test_codec_accepts(text: str, canonical: str) -> None:
    got, k = EvmAddressCodec().parse(text)
    assert got == canonical
    assert k == bytes.fromhex(canonical[2:]) and len(k) == 20


@pytest.mark.parametrize(("text", "reason"), [
    (_MIXED[:-1] + "D", "bad checksum"),
    ("0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "bad checksum"),
    (_MIXED[2:], "hex"),
    (_MIXED + "0", "hex"),
    (_MIXED[:-1], "hex"),
    ("0X" + _MIXED[2:], "hex"),
    ("0x" + "g" * 40, "hex"),
    ("", "hex"),
    (" " + _MIXED, "hex"),
])
def test_codec_rejects(text: str, reason: str) -> None:
    with pytest.raises(InvalidAddress, match=reason):
        EvmAddressCodec().parse(text)
