"""Table-driven tests of the canonical-chain window's decisions."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from watcher.core.window import (
    BeyondWindow,
    BrokenBranch,
    ChainWindow,
    Extend,
    NeedParent,
    Rewind,
    linked_prefix,
)
from watcher.types import BlockHash, BlockRef


def h(label: str) -> BlockHash:
    return BlockHash(f"0x{label}")


def chain(labels: str, start: int = 10, parent: str = "p") -> list[BlockRef]:
    """'abc' -> blocks a(10) <- b(11) <- c(12); the first one's parent is ``parent``."""
    out: list[BlockRef] = []
    prev = h(parent)
    for i, c in enumerate(labels):
        ref = BlockRef(start + i, h(c), prev)
        out.append(ref)
        prev = ref.hash
    return out


def fork(labels: str, parent: BlockRef) -> list[BlockRef]:
    return chain(labels, parent.number + 1, parent.hash[2:])


BASE = chain("abcde")  # a=10 .. e=14


@dataclass(frozen=True)
class Case:
    name: str
    branch: list[BlockRef]
    expect: type
    removed: str = ""
    finalized: int | None = None


CASES = [
    Case("extends tip", fork("f", BASE[-1]), Extend),
    Case("extends tip by several", fork("fgh", BASE[-1]), Extend),
    Case("replaces the tip", fork("x", BASE[3]), Rewind, removed="e"),
    Case("replaces two blocks and grows", fork("xyz", BASE[2]), Rewind, removed="de"),
    Case("fork at the bottom block", fork("xyzuvw", BASE[0]), Rewind, removed="bcde"),
    Case("unknown parent inside the window", chain("yz", 13, "q"), NeedParent),
    Case("unknown parent at the window bottom", chain("yz", 11, "q"), BeyondWindow),
    Case("unknown parent below the window", chain("yz", 9, "q"), BeyondWindow),
    Case("fork below finality", fork("xy", BASE[1]), BeyondWindow, finalized=12),
    Case("fork exactly at finalized block is fine", fork("xy", BASE[2]), Rewind, removed="de",
         finalized=12),
    Case("unknown parent at the finalized height", chain("yz", 13, "q"), BeyondWindow, finalized=12),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_decide(case: Case) -> None:
    w = ChainWindow(8, BASE, finalized_number=case.finalized)
    decision = w.decide(case.branch)
    assert type(decision) is case.expect
    if isinstance(decision, Rewind):
        assert "".join(r.hash[2:] for r in decision.removed) == case.removed
        assert decision.depth == len(case.removed)
        w.apply(decision)
        assert w.tip == case.branch[-1]
        assert all(r.hash not in w for r in decision.removed)
    if isinstance(decision, NeedParent):
        assert decision.parent_hash == h("q")
        assert decision.number == case.branch[0].number - 1


def test_empty_window_accepts_any_branch_as_seed() -> None:
    w = ChainWindow(4)
    d = w.decide(chain("abc"))
    assert isinstance(d, Extend)
    w.apply(d)
    assert w.tip is not None and w.tip.hash == h("c")


def test_prunes_to_size_and_reports_pruned() -> None:
    w = ChainWindow(3, chain("abc"))
    pruned = w.apply(Extend(tuple(fork("de", w.tip)))) if w.tip else ()
    assert [r.hash for r in pruned] == [h("a"), h("b")]
    assert [r.hash for r in w.blocks()] == [h("c"), h("d"), h("e")]
    assert h("a") not in w


@pytest.mark.parametrize(("name", "branch"), [
    ("gap in heights", [BlockRef(15, h("f"), h("e")), BlockRef(17, h("g"), h("f"))]),
    ("broken parent link", [BlockRef(15, h("f"), h("e")), BlockRef(16, h("g"), h("x"))]),
    ("child of tip at wrong height", [BlockRef(20, h("f"), h("e"))]),
    ("empty", []),
])
def test_rejects_branches_that_do_not_link(name: str, branch: list[BlockRef]) -> None:
    w = ChainWindow(8, BASE)
    with pytest.raises(BrokenBranch):
        w.decide(branch)


def test_linked_prefix_stops_at_first_break() -> None:
    good = fork("fg", BASE[-1])
    mixed = [*good, BlockRef(17, h("z"), h("other"))]
    assert linked_prefix(mixed) == good


def test_finality_only_moves_forward() -> None:
    w = ChainWindow(8, BASE, finalized_number=12)
    w.set_finalized(11)
    w.set_finalized(None)
    assert w.finalized_number == 12
    w.set_finalized(13)
    assert w.finalized_number == 13


def test_apply_rejects_a_decision_for_another_window() -> None:
    w = ChainWindow(8, BASE)
    other = ChainWindow(8, chain("vwxyz", parent="r"))
    d = other.decide(fork("q", other.blocks()[2]))
    assert isinstance(d, Rewind)
    with pytest.raises(BrokenBranch):
        w.apply(d)
