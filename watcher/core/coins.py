"""The hot wallet's coins on a UTXO chain, from the watcher's own block scan: pure state.

No node wallet is asked (btcd has none; Bitcoin Core's is not used). Each canonical block
the withdrawal runtime scans brings the hot-wallet outputs it creates and the hot-wallet
outpoints its inputs consume; :class:`HotCoins` applies them and keeps, per block, what
it changed, so a block that leaves the canonical chain is undone exactly (its outputs
vanish, the coins it spent come back), the way :meth:`WithdrawalBook.blocks_removed`
takes back an EVM inclusion.

Guarantees:

* **Canonical only.** A coin is in the set iff a scanned canonical block created it and
  no later scanned canonical block spent it.
* **Spendable is a rule, not a guess.** :meth:`HotCoins.spendable` offers a coin only at
  ``confirmations`` or deeper (the hot wallet's own change from its first confirmation
  when ``own_change`` is on; coinbase outputs only once mature), and never one that a
  request's binding holds.
* **Undo is bounded.** Undo records are kept for the blocks a reorg can still remove
  (:meth:`HotCoins.prune`); the snapshot holds the coins and those records.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from watcher.core.utxo import ScriptType, Utxo
from watcher.types import BlockHash

COINBASE_MATURITY = 100
"""Bitcoin's (and Litecoin's) consensus ``COINBASE_MATURITY``: the default of
:attr:`CoinRules.coinbase_maturity`; each network's own is in ``chains.bitcoin.networks``."""
SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class HotOutput:
    """An output paying the hot wallet, as a block shows it."""

    outpoint: str
    """``<txid>:<vout>``: the key of :class:`watcher.core.withdrawals.InputsBinding`."""
    value: int
    change: bool = False
    """Created by a transaction that spends hot-wallet coins: the wallet's own change."""
    coinbase: bool = False

    def __post_init__(self) -> None:
        txid, sep, vout = self.outpoint.partition(":")
        if not sep or len(txid) != 64 or not vout.isdigit() or self.value <= 0:
            raise ValueError("a hot output is <64-hex txid>:<vout> with a positive value")


@dataclass(frozen=True, slots=True)
class Coin:
    output: HotOutput
    height: int


@dataclass(frozen=True, slots=True)
class CoinRules:
    confirmations: int
    """Confirmations of a received output before it may be spent (>= 1)."""
    own_change: bool
    """The hot wallet's own change may be spent from its first confirmation."""
    coinbase_maturity: int = COINBASE_MATURITY
    """Confirmations a coinbase output needs before a node accepts a spend of it (the
    chain's consensus rule: 100 on Bitcoin and Litecoin, 240 on Dogecoin)."""

    def __post_init__(self) -> None:
        if self.confirmations < 1:
            raise ValueError("confirmations must be >= 1")
        if self.coinbase_maturity < 1:
            raise ValueError("coinbase_maturity must be >= 1")


@dataclass(frozen=True, slots=True)
class _Undo:
    number: int
    created: tuple[str, ...]
    spent: tuple[Coin, ...]


class HotCoins:
    """The unspent hot-wallet outputs of the canonical chain as far as it was scanned."""

    def __init__(self) -> None:
        self._coins: dict[str, Coin] = {}
        self._undo: dict[BlockHash, _Undo] = {}

    # ------------------------------------------------------------ reading

    def outpoints(self) -> frozenset[str]:
        return frozenset(self._coins)

    def value_of(self, outpoint: str) -> int | None:
        c = self._coins.get(outpoint)
        return None if c is None else c.output.value

    def balance(self) -> int:
        """Satoshis of every unspent hot-wallet output in a scanned canonical block."""
        return sum(c.output.value for c in self._coins.values())

    def spendable(self, tip: int, rules: CoinRules, bound: Collection[str]) -> list[Utxo]:
        """Coins coin selection may use now: deep enough per ``rules``, mature, and held by
        no binding (``bound``: outpoints, without the ``in:`` prefix)."""
        out: list[Utxo] = []
        for op, c in self._coins.items():
            if op in bound:
                continue
            depth = tip - c.height + 1
            need = rules.confirmations
            if c.output.change and rules.own_change:
                need = 1
            if c.output.coinbase:
                need = max(need, rules.coinbase_maturity)
            if depth >= need:
                out.append(Utxo(op, c.output.value, ScriptType.P2WPKH))
        return sorted(out, key=lambda u: u.outpoint)

    # ------------------------------------------------------------ observations

    def block_added(self, number: int, block_hash: BlockHash, created: Sequence[HotOutput],
                    spent: Iterable[str]) -> None:
        """A canonical block: its hot outputs join, then the coins its inputs consume leave
        (an output created and spent in the same block comes and goes). Outpoints that are
        not coins of the set (other wallets' inputs) are ignored."""
        if block_hash in self._undo:
            return  # scanned already: applying it twice would drop a coin twice
        added: list[str] = []
        for o in created:
            if o.outpoint not in self._coins:
                self._coins[o.outpoint] = Coin(o, number)
                added.append(o.outpoint)
        gone: list[Coin] = []
        for op in spent:
            c = self._coins.pop(op, None)
            if c is not None:
                gone.append(c)
        self._undo[block_hash] = _Undo(number, tuple(added), tuple(gone))

    def blocks_removed(self, hashes: Iterable[BlockHash]) -> None:
        """Blocks left the canonical chain: undone newest first."""
        undos = sorted(((self._undo.pop(h), h) for h in set(hashes) if h in self._undo),
                       key=lambda x: -x[0].number)
        for u, _ in undos:
            # The block's spends come back first, then its outputs go: an output it created
            # and spent itself ends up gone, as before the block.
            for c in u.spent:
                self._coins[c.output.outpoint] = c
            for op in u.created:
                self._coins.pop(op, None)

    def prune(self, below: int) -> None:
        """Forgets the undo records of blocks below ``below`` (no reorg reaches them)."""
        for h in [h for h, u in self._undo.items() if u.number < below]:
            del self._undo[h]

    # ------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        def coin(c: Coin) -> list[Any]:
            o = c.output
            return [o.outpoint, str(o.value), o.change, o.coinbase, c.height]
        return {
            "version": SNAPSHOT_VERSION,
            "coins": [coin(c) for _, c in sorted(self._coins.items())],
            "undo": [[h, u.number, list(u.created), [coin(c) for c in u.spent]]
                     for h, u in sorted(self._undo.items(), key=lambda x: x[1].number)],
        }

    @classmethod
    def restore(cls, raw: Any) -> HotCoins:
        """The set from :meth:`snapshot`; ValueError naming what is wrong."""
        out = cls()
        if raw is None:
            return out
        try:
            if raw.get("version") != SNAPSHOT_VERSION:
                raise ValueError(f"hot coins snapshot version {raw.get('version')!r} is not supported")

            def coin(x: list[Any]) -> Coin:
                op, value, change, coinbase, height = x
                return Coin(HotOutput(str(op), int(value), bool(change), bool(coinbase)), int(height))
            for x in raw["coins"]:
                c = coin(x)
                out._coins[c.output.outpoint] = c
            for h, number, created, spent in raw["undo"]:
                out._undo[BlockHash(str(h))] = _Undo(int(number), tuple(str(o) for o in created),
                                                     tuple(coin(c) for c in spent))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"hot coins snapshot is unreadable: {exc!r}") from exc
        return out
