"""Deposit events of a block range re-derived from the chain, and an audit of a topic's events.

Pure. :func:`rederive` runs the follower's own :class:`DepositTracker` over the
blocks of a range and evaluates it once against a reference tip (the node's
head for ``watcher rescan``, the processed height for ``watcher audit``): each
deposit gets the one event its confirmations call for *now* — ``confirmed``
when deep enough, else ``pending`` — with the event id the follower gives the
same fact. :func:`audit` compares the deposits a chain holds with the events a
topic holds for the same range.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from watcher.core.deposits import DepositEvent, DepositTracker, LabelOf, RequiredConfirmations
from watcher.core.window import check_links
from watcher.types import BlockContents, ChainId, DepositEventType


def rederive(chain: ChainId, contents: Sequence[BlockContents], reference_tip: int,
             required_for: RequiredConfirmations, label_of: LabelOf) -> list[DepositEvent]:
    """One event per deposit of ``contents`` (linked blocks, oldest first) as of ``reference_tip``.

    Raises :class:`watcher.core.window.BrokenBranch` when the blocks do not link and
    ``ValueError`` when a block lies above ``reference_tip``.
    """
    check_links([c.ref for c in contents])
    if contents and contents[-1].ref.number > reference_tip:
        raise ValueError(f"block {contents[-1].ref.number} is above the reference tip {reference_tip}")
    tracker = DepositTracker(chain, required_for)
    for c in contents:
        tracker.add_block(c, label_of)
    return tracker.evaluate(reference_tip)


class FindingKind(StrEnum):
    MISSING = "missing"
    """The chain holds the deposit; the topic has no live event of the type it calls for."""
    EXTRA = "extra"
    """The topic has a live (not reverted) deposit the chain does not hold in that block."""
    DIFFERENT = "different"
    """Both have it, but a field differs (amount, address, asset, token, decimals, block)."""


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    deposit_id: str
    block_hash: str
    block_number: int | None
    detail: str

    def line(self) -> str:
        return (f"{self.kind.value}: {self.deposit_id} block {self.block_number} "
                f"{self.block_hash}: {self.detail}")

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "deposit_id": self.deposit_id,
                "block_hash": self.block_hash, "block_number": self.block_number,
                "detail": self.detail}


_COMPARED = ("asset", "token_contract", "address", "amount", "decimals", "block_number")


def expected_fields(ev: DepositEvent) -> dict[str, Any]:
    """The fields of an event the audit compares, as the contract's JSON writes them."""
    t = ev.deposit.transfer
    return {"asset": t.asset, "token_contract": t.token_contract, "address": t.to_address,
            "amount": str(t.amount), "decimals": t.decimals,
            "block_number": ev.deposit.block.number}


def audit(expected: Iterable[DepositEvent], observed: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Findings between the chain's deposits (``expected``, from :func:`rederive`) and the
    topic's events (``observed``: decoded records already filtered to the chain and range).

    Per ``(deposit_id, block_hash)``: a ``deposit.reverted`` makes the topic's deposit not
    live. A live one the chain lacks is extra; a chain deposit without a live event is
    missing, and so is one the chain calls confirmed with only ``pending`` in the topic
    (``confirmed`` alone, without ``pending``, is allowed by the contract).
    """
    chain_side: dict[tuple[str, str], DepositEvent] = {
        (ev.deposit.deposit_id, ev.deposit.block.hash): ev for ev in expected}
    topic_side: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for doc in observed:
        topic_side.setdefault((str(doc.get("deposit_id")), str(doc.get("block_hash"))), []).append(doc)

    findings: list[Finding] = []
    for key, ev in chain_side.items():
        docs = topic_side.get(key, [])
        types = {d.get("type") for d in docs}
        number = ev.deposit.block.number
        if DepositEventType.REVERTED.value in types:
            findings.append(Finding(FindingKind.MISSING, key[0], key[1], number,
                                    "reverted in the topic but the block is canonical"))
            continue
        if not docs:
            findings.append(Finding(FindingKind.MISSING, key[0], key[1], number,
                                    f"no event; expected {ev.type.value}"))
            continue
        if ev.type is DepositEventType.CONFIRMED and DepositEventType.CONFIRMED.value not in types:
            findings.append(Finding(FindingKind.MISSING, key[0], key[1], number,
                                    f"{ev.confirmations} confirmations of {ev.deposit.required} "
                                    "required, but no deposit.confirmed"))
        want = expected_fields(ev)
        for doc in docs:
            diffs = [f"{f} {doc.get(f)!r} != chain {want[f]!r}" for f in _COMPARED
                     if doc.get(f) != want[f]]
            if diffs:
                findings.append(Finding(FindingKind.DIFFERENT, key[0], key[1], number,
                                        f"{doc.get('type')} event {doc.get('event_id')}: "
                                        + "; ".join(diffs)))
    for key, docs in topic_side.items():
        if key in chain_side:
            continue
        types = {d.get("type") for d in docs}
        if DepositEventType.REVERTED.value in types:
            continue
        at = docs[0].get("block_number")
        findings.append(Finding(FindingKind.EXTRA, key[0], key[1],
                                at if isinstance(at, int) else None,
                                f"{', '.join(sorted(str(t) for t in types))} in the topic, "
                                "not in the chain's canonical block"))
    findings.sort(key=lambda f: (f.block_number if f.block_number is not None else -1,
                                 f.deposit_id, f.kind.value))
    return findings
