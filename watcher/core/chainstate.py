"""One chain's whole durable state: the window, the deposits inside it, and the
unconfirmed (mempool) deposits of a UTXO chain.

Pure. :meth:`ChainState.apply` turns a window decision plus the fetched block
contents into deposit events; :meth:`ChainState.observe_mempool` turns a mempool
poll into ``seen``/``reverted`` events; :meth:`snapshot` is what the runtime
commits in the same Kafka transaction as those events, so that a restart
resumes exactly where the last committed events left off.

Snapshot version 1 gained an optional ``mempool`` key (written only when there
is mempool state): older version-1 snapshots restore with an empty mempool, and
EVM snapshots are byte-for-byte what they were.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
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
from watcher.core.mempool import (
    MempoolChange,
    MempoolTracker,
    SeenDeposit,
    SeenTx,
    UnconfirmedEvent,
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
    Outpoint,
    Transfer,
    TxId,
)

SNAPSHOT_VERSION = 1
DEFAULT_MEMPOOL_DROP_AFTER_S = 3600.0
"""How long a seen transaction may be gone from the mempool, not mined, before it is
``dropped``: far above a block interval, so a transaction gone because it was just
mined is never called dropped."""


class SnapshotError(ValueError):
    """A checkpoint that cannot be read, or belongs to another chain."""


@dataclass(frozen=True, slots=True)
class Applied:
    events: tuple[DepositEvent, ...]
    reorg_depth: int
    pruned: tuple[BlockRef, ...]
    unconfirmed: tuple[UnconfirmedEvent, ...] = ()
    """Seen deposits double-spent by the new blocks (publish after ``events``)."""
    mined: int = 0
    """Seen deposits the new blocks mined: they left the mempool state."""


@dataclass(frozen=True, slots=True)
class Observed:
    events: tuple[UnconfirmedEvent, ...]
    snapshot: bytes | None
    """The state after the poll, to commit in the same transaction as ``events``; None
    when the poll changed nothing (no event, no timer started or stopped)."""


class ChainState:
    def __init__(self, chain: ChainId, window_size: int,
                 required_for: RequiredConfirmations, *,
                 mempool_drop_after_s: float = DEFAULT_MEMPOOL_DROP_AFTER_S) -> None:
        self.chain = chain
        self.window = ChainWindow(window_size)
        self.tracker = DepositTracker(chain, required_for)
        self.mempool = MempoolTracker(chain, required_for, mempool_drop_after_s)

    @property
    def tip(self) -> BlockRef | None:
        return self.window.tip

    def apply(self, decision: Extend | Rewind, contents: Sequence[BlockContents],
              label_of: LabelOf, agreed: Collection[BlockHash] | None = None) -> Applied:
        """Applies a decision of :meth:`ChainWindow.decide` with the contents of its new blocks.

        ``agreed``: block hashes a confirmation quorum agreed on (see
        :meth:`DepositTracker.evaluate`); None when no quorum is configured."""
        if [c.ref for c in contents] != list(decision.added):
            raise BrokenBranch("block contents do not match the blocks being added")
        events: list[DepositEvent] = []
        depth = 0
        if isinstance(decision, Rewind):
            events.extend(self.tracker.revert(decision.removed))
            depth = decision.depth
        pruned = self.window.apply(decision)
        unconfirmed: list[UnconfirmedEvent] = []
        mined = 0
        for c in contents:
            self.tracker.add_block(c, label_of)
            if len(self.mempool):
                doubled, n = self.mempool.connect(c.spends, (t.txid for t in c.transfers))
                unconfirmed.extend(doubled)
                mined += n
        tip = self.window.tip
        assert tip is not None
        events.extend(self.tracker.evaluate(tip.number, agreed))
        self.tracker.prune(pruned)
        return Applied(tuple(events), depth, pruned, tuple(unconfirmed), mined)

    def observe_mempool(self, change: MempoolChange, now: float,
                        label_of: LabelOf) -> Observed:
        """Applies one mempool poll; returns its events and the snapshot to commit with them.

        Drops are decided only when the poll was taken at the tip this state has
        processed; a transaction the window already holds in a block is never seen.
        """
        tip = self.window.tip
        caught_up = tip is not None and change.tip == tip.hash
        in_blocks = {d.transfer.txid for d in self.tracker.deposits()}
        before = self.mempool.mutations
        events = self.mempool.observe(change, now, label_of, caught_up=caught_up,
                                      in_blocks=in_blocks)
        changed = self.mempool.mutations != before
        return Observed(tuple(events), self.snapshot() if changed else None)

    def due_after(self, decision: Extend | Rewind | None, contents: Sequence[BlockContents],
                  required_for: RequiredConfirmations) -> list[BlockRef]:
        """Blocks whose deposits would be deep enough to confirm once ``decision`` (None: the
        window as it is) is applied with ``contents``: what to ask a quorum before applying."""
        tip = decision.added[-1] if decision is not None and decision.added else self.tip
        if tip is None:
            return []
        removed = {r.hash for r in decision.removed} if isinstance(decision, Rewind) else set()
        due = [b for b in self.tracker.due(tip.number) if b.hash not in removed]
        for c in contents:
            if any(tip.number - c.ref.number + 1 >= required_for(t.asset, t.amount)
                   for t in c.transfers):
                due.append(c.ref)
        return due

    def reevaluate(self, agreed: Collection[BlockHash] | None) -> list[DepositEvent]:
        """Deposits that a quorum now agrees on, at the unchanged tip."""
        tip = self.tip
        return [] if tip is None else self.tracker.evaluate(tip.number, agreed)

    # ------------------------------------------------------------ persistence

    def snapshot(self) -> bytes:
        out: dict[str, Any] = {
            "version": SNAPSHOT_VERSION,
            "chain": self.chain,
            "finalized": self.window.finalized_number,
            "window": [_ref_out(r) for r in self.window.blocks()],
            "deposits": [_deposit_out(d) for d in self.tracker.deposits()],
        }
        if len(self.mempool) or self.mempool.next_episode:
            out["mempool"] = {"next_episode": self.mempool.next_episode,
                              "txs": [_seen_tx_out(t) for t in self.mempool.txs()]}
        return orjson.dumps(out)

    @classmethod
    def restore(cls, data: bytes, chain: ChainId, window_size: int,
                required_for: RequiredConfirmations, *,
                mempool_drop_after_s: float = DEFAULT_MEMPOOL_DROP_AFTER_S) -> ChainState:
        try:
            raw = orjson.loads(data)
            if raw.get("version") != SNAPSHOT_VERSION:
                raise SnapshotError(f"checkpoint version {raw.get('version')!r} is not supported")
            if raw.get("chain") != chain:
                raise SnapshotError(f"checkpoint belongs to chain {raw.get('chain')!r}, not {chain!r}")
            state = cls(chain, window_size, required_for,
                        mempool_drop_after_s=mempool_drop_after_s)
            blocks = [_ref_in(x) for x in raw["window"]]
            # A smaller configured window keeps the newest blocks; a larger one grows as we go.
            state.window = ChainWindow(window_size, blocks[-window_size:], raw["finalized"])
            state.tracker.restore(_deposit_in(x) for x in raw["deposits"])
            mp = raw.get("mempool")
            if mp is not None:
                state.mempool.restore([_seen_tx_in(x) for x in mp["txs"]],
                                      _int(mp["next_episode"], "mempool.next_episode"))
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


def _transfer_out(t: Transfer) -> list[Any]:
    return [t.txid, t.locator, t.asset, t.token_contract, t.to_address, t.from_address,
            str(t.amount), t.decimals]


def _transfer_in(x: list[Any]) -> Transfer:
    txid, locator, asset, token, to, frm, amount, decimals = x
    return Transfer(TxId(txid), str(locator), AssetSymbol(asset),
                    Address(token) if token else None, Address(to),
                    Address(frm) if frm else None, int(amount), int(decimals))


def _deposit_out(d: TrackedDeposit) -> dict[str, Any]:
    return {
        "id": d.deposit_id, "block": _ref_out(d.block), "required": d.required, "label": d.label,
        "announced": d.announced.value if d.announced else None,
        "t": _transfer_out(d.transfer),
    }


def _int(v: Any, field: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise SnapshotError(f"checkpoint field {field} is not a non-negative integer: {v!r}")
    return v


def _seen_tx_out(t: SeenTx) -> dict[str, Any]:
    return {
        "txid": t.txid, "episode": t.episode, "rbf": t.rbf, "gone_since": t.gone_since,
        "spends": [[o.txid, o.vout] for o in t.spends],
        "deposits": [{"id": d.deposit_id, "required": d.required, "label": d.label,
                      "t": _transfer_out(d.transfer)} for d in t.deposits],
    }


def _seen_tx_in(x: dict[str, Any]) -> SeenTx:
    gone = x["gone_since"]
    if not isinstance(x["rbf"], bool):
        raise SnapshotError(f"checkpoint field mempool.rbf is not a boolean: {x['rbf']!r}")
    return SeenTx(
        TxId(str(x["txid"])), _int(x["episode"], "mempool.episode"), x["rbf"],
        tuple(Outpoint(TxId(str(o[0])), _int(o[1], "mempool.spends.vout")) for o in x["spends"]),
        tuple(SeenDeposit(DepositId(d["id"]), _transfer_in(d["t"]), int(d["required"]), d["label"])
              for d in x["deposits"]),
        None if gone is None else float(gone))


def _deposit_in(x: dict[str, Any]) -> TrackedDeposit:
    transfer = _transfer_in(x["t"])
    announced = DepositEventType(x["announced"]) if x["announced"] else None
    return TrackedDeposit(DepositId(x["id"]), _ref_in(x["block"]), transfer, int(x["required"]),
                          x["label"], announced)
