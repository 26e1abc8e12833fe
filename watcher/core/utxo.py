"""UTXO payments, pure: coin selection, change, fee rate, and fee bumps on the same inputs.

Sizes are counted in weight units (integers; vsize = ceil(weight / 4)) and fees in
satoshi; fee rates are whole sat/vB. Every plan signals replaceability (BIP 125:
each input's sequence is ``RBF_SEQUENCE``) so that a stuck payment can be bumped by
a replacement. A bump spends *exactly* the same inputs and pays exactly the same
outputs (the binding of :mod:`watcher.core.withdrawals`); only the change shrinks.
When the change cannot pay for the bump, there is no bump: the payment is sent again
unchanged, never re-funded with other inputs (that would be a second payment able to
confirm beside the first).

A plan may carry several payments (batching); the state machine binds each request to
the plan's whole input set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from watcher.core.withdrawals import BUMP_PERCENT

RBF_SEQUENCE = 0xFFFFFFFD
"""Below 0xfffffffe: the transaction signals replaceability (BIP 125)."""


class ScriptType(StrEnum):
    P2PKH = "p2pkh"
    P2SH_P2WPKH = "p2sh-p2wpkh"
    P2WPKH = "p2wpkh"
    P2TR = "p2tr"
    P2SH = "p2sh"
    P2WSH = "p2wsh"
    WITNESS = "witness"
    """Any other witness program (v1..v16, 2..40 bytes, BIP 350), sized as its 40-byte bound."""


# Weight of one input spending the type (outpoint 36 + sequence 4 + script length and
# scriptSig, x4; plus the witness), with a 72-byte DER signature at the high end.
INPUT_WEIGHT: dict[ScriptType, int] = {
    ScriptType.P2PKH: 592,        # 148 vB: scriptSig 107 (sig 72 + pubkey 33 + 2 pushes)
    ScriptType.P2SH_P2WPKH: 364,  # 91 vB: scriptSig 23, witness 108
    ScriptType.P2WPKH: 272,       # 68 vB: empty scriptSig, witness 108 (count 1 + 1+72 + 1+33)
    ScriptType.P2TR: 230,         # 57.5 vB: witness 66 (count 1 + 1+64 Schnorr)
}
# Output bytes (value 8 + script length 1 + script), x4.
OUTPUT_WEIGHT: dict[ScriptType, int] = {
    ScriptType.P2PKH: 34 * 4,
    ScriptType.P2SH: 32 * 4,
    ScriptType.P2SH_P2WPKH: 32 * 4,
    ScriptType.P2WPKH: 31 * 4,
    ScriptType.P2WSH: 43 * 4,
    ScriptType.P2TR: 43 * 4,
    ScriptType.WITNESS: 51 * 4,   # script OP_n + push + 40-byte program: 42 bytes at most
}
# Bitcoin Core's dust limits at its default 3 sat/vB dust relay fee.
DUST: dict[ScriptType, int] = {
    ScriptType.P2PKH: 546, ScriptType.P2SH: 540, ScriptType.P2SH_P2WPKH: 540,
    ScriptType.P2WPKH: 294, ScriptType.P2WSH: 330, ScriptType.P2TR: 330,
    # Core: (output bytes + 67 to spend it) x 3 sat/vB; the 40-byte program's 51 bytes bound it.
    ScriptType.WITNESS: 354,
}
_BASE_WEIGHT = 10 * 4  # version 4, input count 1, output count 1, locktime 4
_SEGWIT_MARKER_WEIGHT = 2


@dataclass(frozen=True, slots=True)
class Utxo:
    outpoint: str
    """``<txid>:<vout>``."""
    value: int
    script: ScriptType


@dataclass(frozen=True, slots=True)
class Payment:
    request_id: str
    script: ScriptType
    """The recipient's output type, from its address."""
    amount: int


@dataclass(frozen=True, slots=True)
class Plan:
    inputs: tuple[Utxo, ...]
    """Sorted by outpoint: the binding's order."""
    payments: tuple[Payment, ...]
    change_script: ScriptType
    change: int
    """0: no change output (what is left over is fee)."""
    fee: int
    fee_rate: int
    vsize: int
    sequence: int = RBF_SEQUENCE

    @property
    def outpoints(self) -> tuple[str, ...]:
        return tuple(u.outpoint for u in self.inputs)


def weight(inputs: Sequence[ScriptType], outputs: Sequence[ScriptType]) -> int:
    if not inputs:
        raise ValueError("a transaction needs inputs")
    segwit = any(s is not ScriptType.P2PKH for s in inputs)
    for s in inputs:
        if s not in INPUT_WEIGHT:
            raise ValueError(f"cannot spend {s} outputs")
    return (_BASE_WEIGHT + (_SEGWIT_MARKER_WEIGHT if segwit else 0) + sum(INPUT_WEIGHT[s] for s in inputs)
            + sum(OUTPUT_WEIGHT[s] for s in outputs))


def vsize(inputs: Sequence[ScriptType], outputs: Sequence[ScriptType]) -> int:
    return -(-weight(inputs, outputs) // 4)


def fee_rate(estimate: int | None, floor: int, cap: int) -> int:
    """The node's estimate (sat/vB) within the configured floor and cap; the floor when the
    node has no estimate (a stuck payment is bumped later)."""
    if not 1 <= floor <= cap:
        raise ValueError("need 1 <= floor <= cap")
    if estimate is None:
        return floor
    return min(max(estimate, floor), cap)


def select(utxos: Sequence[Utxo], payments: Sequence[Payment], rate: int,
           change_script: ScriptType) -> Plan | None:
    """Largest-first selection from the spendable ``utxos`` (those bound to no request),
    with change back to the hot wallet unless it would be dust. None: not enough funds."""
    if not payments or any(p.amount <= 0 for p in payments):
        raise ValueError("payments must be positive")
    if rate < 1:
        raise ValueError("fee rate must be >= 1 sat/vB")
    spendable = sorted((u for u in utxos if u.script in INPUT_WEIGHT), key=lambda u: (-u.value, u.outpoint))
    need = sum(p.amount for p in payments)
    outs = [p.script for p in payments]
    chosen: list[Utxo] = []
    for u in spendable:
        chosen.append(u)
        plan = _plan(chosen, payments, outs, need, rate, change_script)
        if plan is not None:
            return plan
    return None


def plan_for(inputs: Sequence[Utxo], payments: Sequence[Payment], rate: int,
             change_script: ScriptType) -> Plan | None:
    """The plan spending exactly ``inputs`` at ``rate`` (the binding's inputs, signed for
    the first time); None when they cannot pay it at that rate."""
    if not inputs or len({u.outpoint for u in inputs}) != len(inputs):
        raise ValueError("inputs must be distinct and at least one")
    if not payments or any(p.amount <= 0 for p in payments) or rate < 1:
        raise ValueError("payments must be positive and the rate >= 1 sat/vB")
    return _plan(list(inputs), payments, [p.script for p in payments],
                 sum(p.amount for p in payments), rate, change_script)


def _plan(chosen: list[Utxo], payments: Sequence[Payment], outs: list[ScriptType], need: int, rate: int,
          change_script: ScriptType) -> Plan | None:
    total = sum(u.value for u in chosen)
    ins = [u.script for u in chosen]
    inputs = tuple(sorted(chosen, key=lambda u: u.outpoint))
    with_change = vsize(ins, [*outs, change_script])
    change = total - need - with_change * rate
    if change >= DUST[change_script]:
        return Plan(inputs, tuple(payments), change_script, change, with_change * rate, rate, with_change)
    without = vsize(ins, outs)
    left = total - need
    if left >= without * rate:
        return Plan(inputs, tuple(payments), change_script, 0, left, rate, without)
    return None


def bump(plan: Plan, market_rate: int, cap: int, incremental_relay: int = 1) -> Plan | None:
    """A replacement of ``plan`` spending the same inputs and paying the same outputs.

    Its rate is at least ``BUMP_PERCENT`` above the old one (and at least the market's),
    its fee at least ``BUMP_PERCENT`` above the old fee and at least the old fee plus
    ``incremental_relay`` sat/vB of its own size (BIP 125 rules 3 and 4), all within
    ``cap``. Only the change pays for it; None when it cannot.
    """
    min_rate = max(market_rate, -(-plan.fee_rate * (100 + BUMP_PERCENT) // 100), plan.fee_rate + 1)
    if min_rate > cap:
        return None
    total = sum(u.value for u in plan.inputs)
    need = sum(p.amount for p in plan.payments)
    ins = [u.script for u in plan.inputs]
    outs = [p.script for p in plan.payments]
    for with_change in (True, False):
        if with_change and plan.change == 0:
            continue
        size = vsize(ins, [*outs, plan.change_script] if with_change else outs)
        fee = max(size * min_rate, plan.fee + incremental_relay * size,
                  -(-plan.fee * (100 + BUMP_PERCENT) // 100))
        change = total - need - fee
        if with_change and change >= DUST[plan.change_script]:
            return Plan(plan.inputs, plan.payments, plan.change_script, change, fee, -(-fee // size), size)
        if not with_change and change >= 0 and -(-(total - need) // size) <= cap:
            left = total - need
            return Plan(plan.inputs, plan.payments, plan.change_script, 0, left, left // size, size)
    return None
