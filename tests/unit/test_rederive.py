"""Re-derivation of a range and the audit comparison, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chainsim import addr, transfer
from watcher.core.deposits import DepositEvent
from watcher.core.rederive import FindingKind, audit, rederive
from watcher.core.window import BrokenBranch
from watcher.events import deposit_event_body
from watcher.types import AssetSymbol, BlockContents, BlockHash, BlockRef, ChainId, DepositEventType

ETH = ChainId("eth")
ALICE, BOB = addr(0xA11CE), addr(0xB0B)


def required(asset: AssetSymbol, amount: int) -> int:
    return 3


def ref(n: int) -> BlockRef:
    return BlockRef(n, BlockHash(f"0x{n:02x}"), BlockHash(f"0x{n - 1:02x}"), 1_700_000_000 + n)


def blocks() -> list[BlockContents]:
    return [BlockContents(ref(10), (transfer("0xt1", ALICE, 5),)),
            BlockContents(ref(11), ()),
            BlockContents(ref(12), (transfer("0xt2", BOB, 7), transfer("0xt3", ALICE, 9, locator="log:4")))]


def events(tip: int) -> list[DepositEvent]:
    return rederive(ETH, blocks(), tip, required, lambda t: None)


def test_types_are_as_of_the_reference_tip() -> None:
    got = [(e.type, e.deposit.deposit_id, e.confirmations) for e in events(13)]
    assert got == [(DepositEventType.CONFIRMED, "eth:0xt1:tx", 4),
                   (DepositEventType.PENDING, "eth:0xt2:tx", 2),
                   (DepositEventType.PENDING, "eth:0xt3:log:4", 2)]


def test_event_ids_are_the_followers_for_the_same_fact() -> None:
    body = deposit_event_body(ETH, events(13)[0], 0.0)
    # blake2b-128 of "deposit.confirmed|eth:0xt1:tx|0x0a", computed independently.
    assert body["event_id"] == "cc70b4c976a91aae6ef33485bce80357"


def test_unlinked_blocks_and_blocks_above_the_tip_are_refused() -> None:
    with pytest.raises(BrokenBranch):
        rederive(ETH, [blocks()[0], blocks()[2]], 20, required, lambda t: None)
    with pytest.raises(ValueError, match="above the reference tip"):
        rederive(ETH, blocks(), 11, required, lambda t: None)


def topic(tip: int) -> list[dict[str, Any]]:
    return [deposit_event_body(ETH, e, 0.0) for e in events(tip)]


def edit(docs: list[dict[str, Any]], i: int, **changes: Any) -> list[dict[str, Any]]:
    out = [dict(d) for d in docs]
    out[i].update(changes)
    return out


CASES: list[tuple[str, list[dict[str, Any]], list[tuple[FindingKind, str]]]] = [
    ("clean", topic(13), []),
    ("one deleted", topic(13)[1:], [(FindingKind.MISSING, "eth:0xt1:tx")]),
    ("confirmed alone without pending is fine", topic(13), []),
    ("only pending of a deposit deep enough", edit(topic(13), 0, type="deposit.pending"),
     [(FindingKind.MISSING, "eth:0xt1:tx")]),
    ("pending and confirmed both present", edit(topic(13), 0, type="deposit.pending")[:1] + topic(13),
     []),
    ("an added deposit", [*topic(13), edit(topic(13), 0, deposit_id="eth:0xfake:tx")[0]],
     [(FindingKind.EXTRA, "eth:0xfake:tx")]),
    ("an added deposit that was reverted is not live",
     [*topic(13), edit(topic(13), 0, deposit_id="eth:0xold:tx")[0],
      edit(topic(13), 0, deposit_id="eth:0xold:tx", type="deposit.reverted")[0]], []),
    ("the same deposit under another block hash",
     [*topic(13), edit(topic(13), 1, block_hash="0xother")[1]],
     [(FindingKind.EXTRA, "eth:0xt2:tx")]),
    ("reverted although canonical", [*topic(13), edit(topic(13), 1, type="deposit.reverted")[1]],
     [(FindingKind.MISSING, "eth:0xt2:tx")]),
    ("another amount", edit(topic(13), 2, amount="10"), [(FindingKind.DIFFERENT, "eth:0xt3:log:4")]),
    ("another address", edit(topic(13), 0, address=BOB), [(FindingKind.DIFFERENT, "eth:0xt1:tx")]),
]


@pytest.mark.parametrize(("name", "observed", "expect"), CASES, ids=[c[0] for c in CASES])
def test_audit(name: str, observed: list[dict[str, Any]], expect: list[tuple[FindingKind, str]]) -> None:
    findings = audit(events(13), observed)
    assert [(f.kind, f.deposit_id) for f in findings] == expect
    for f in findings:
        assert f.deposit_id in f.line() and f.kind.value in f.line()


def test_different_names_the_field() -> None:
    (f,) = audit(events(13), edit(topic(13), 2, amount="10"))
    assert "amount '10' != chain '9'" in f.detail
