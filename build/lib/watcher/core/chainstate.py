"""One chain's whole durable state: the window and the deposits inside it.

Pure. :meth:`ChainState.apply` turns a window decision plus the fetched block
contents into deposit events; :meth:`snapshot` is what the runtime commits in
the same Kafka transaction as those events, so that a restart resumes exactly
where the last committed events left off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from watcher.core.deposits import (
    DepositEvent,
    DepositTracker,
    LabelOf,
    RequiredConfirmations,
    TrackedDeposit,
)
from watcher.core.window import BrokenBranch, ChainWindow, Extend, Rewind
from watcher.types import (
    Address,
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainId,
    DepositEventType,
    DepositId,
    Transfer,
    TxId,
)

SNAPSHOT_VERSION = 1


class SnapshotError(ValueError):
    """A checkpoint that cannot be read, or belongs to another chain."""


@dataclass(frozen=True, slots=True)
class Applied:
    events: tuple[DepositEvent, ...]
    reorg_depth: int
    pruned: tuple[BlockRef, ...]


class ChainState:
    def __init__(self, chain: ChainId, window_size: int,
                 required_for: RequiredConfirmations) -> None:
        self.chain = chain
        self.window = ChainWindow(window_size)
        self.tracker = DepositTracker(chain, required_for)

    @property
    def tip(self) -> BlockRef | None:
        return self.window.tip

    def apply(self, decision: Extend | Rewind, contents: Sequence[BlockContents],
              label_of: LabelOf) -> Applied:
        """Applies a decision of :meth:`ChainWindow.decide` with the contents of its new blocks."""
        if [c.ref for c in contents] != list(decision.added):
            raise BrokenBranch("block contents do not match the blocks being added")
        events: list[DepositEvent] = []
        depth = 0
        if isinstance(decision, Rewind):
            events.extend(self.tracker.revert(decision.removed))
            depth = decision.depth
        pruned = self.window.apply(decision)
        for c in contents:
            self.tracker.add_block(c, label_of)
        tip = self.window.tip
        assert tip is not None
        events.extend(self.tracker.evaluate(tip.number))
        self.tracker.prune(pruned)
        return Applied(tuple(events), depth, pruned)

    # ------------------------------------------------------------ persistence

    def snapshot(self) -> bytes:
        return orjson.dumps({
            "version": SNAPSHOT_VERSION,
            "chain": self.chain,
            "finalized": self.window.finalized_number,
            "window": [_ref_out(r) for r in self.window.blocks()],
            "deposits": [_deposit_out(d) for d in self.tracker.deposits()],
        })

    @classmethod
    def restore(cls, data: bytes, chain: ChainId, window_size: int,
                required_for: RequiredConfirmations) -> ChainState:
        try:
            raw = orjson.loads(data)
            if raw.get("version") != SNAPSHOT_VERSION:
                raise SnapshotError(f"checkpoint version {raw.get('version')!r} is not supported")
            if raw.get("chain") != chain:
                raise SnapshotError(f"checkpoint belongs to chain {raw.get('chain')!r}, not {chain!r}")
            state = cls(chain, window_size, required_for)
            blocks = [_ref_in(x) for x in raw["window"]]
            # A smaller configured window keeps the newest blocks; a larger one grows as we go.
            state.window = ChainWindow(window_size, blocks[-window_size:], raw["finalized"])
            state.tracker.restore(_deposit_in(x) for x in raw["deposits"])
        except SnapshotError:
            raise
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise SnapshotError(f"checkpoint of {chain} is unreadable: {exc!r}") from exc
        return state


def _ref_out(r: BlockRef) -> list[Any]:
    return [r.number, r.hash, r.parent_hash, r.timestamp]


def _ref_in(x: list[Any]) -> BlockRef:
    number, h, parent, ts = x
    return BlockRef(int(number), BlockHash(str(h)), BlockHash(str(parent)), int(ts))


def _deposit_out(d: TrackedDeposit) -> dict[str, Any]:
    t = d.transfer
    return {
        "id": d.deposit_id, "block": _ref_out(d.block), "required": d.required, "label": d.label,
        "announced": d.announced.value if d.announced else None,
        "t": [t.txid, t.locator, t.asset, t.token_contract, t.to_address, t.from_address,
              str(t.amount), t.decimals],
    }


def _deposit_in(x: dict[str, Any]) -> TrackedDeposit:
    txid, locator, asset, token, to, frm, amount, decimals = x["t"]
    transfer = Transfer(TxId(txid), str(locator), AssetSymbol(asset),
                        Address(token) if token else None, Address(to),
                        Address(frm) if frm else None, int(amount), int(decimals))
    announced = DepositEventType(x["announced"]) if x["announced"] else None
    return TrackedDeposit(DepositId(x["id"]), _ref_in(x["block"]), transfer, int(x["required"]),
                          x["label"], announced)
