"""UTXO payments: sizes against known figures, selection, change, batching, bumps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from watcher.core.utxo import RBF_SEQUENCE, Payment, Plan, ScriptType, Utxo, bump, fee_rate, select, vsize

W, TR, PKH = ScriptType.P2WPKH, ScriptType.P2TR, ScriptType.P2PKH
A = Utxo("aa:0", 100_000, W)
B = Utxo("bb:1", 50_000, W)
C = Utxo("cc:0", 20_000, W)
WALLET = [C, A, B]


@pytest.mark.parametrize(("ins", "outs", "want"), [
    ([W], [W], 110),          # 1-in 1-out P2WPKH: 109.5 vB, rounded up
    ([W], [W, W], 141),       # 1-in 2-out P2WPKH: 140.5 vB
    ([PKH], [PKH, PKH], 226),  # the classic 226-byte legacy payment with change
    ([TR], [TR], 111),        # 1-in 1-out key-path Taproot
])
def test_vsize_matches_known_figures(ins: list[ScriptType], outs: list[ScriptType], want: int) -> None:
    assert vsize(ins, outs) == want


@pytest.mark.parametrize(("estimate", "want"), [(None, 2), (1, 2), (7, 7), (80, 50)])
def test_fee_rate_within_floor_and_cap(estimate: int | None, want: int) -> None:
    assert fee_rate(estimate, 2, 50) == want


def test_fee_rate_config_is_checked() -> None:
    with pytest.raises(ValueError, match="floor"):
        fee_rate(5, 10, 5)


@dataclass(frozen=True)
class SelectCase:
    name: str
    payments: tuple[Payment, ...]
    inputs: tuple[str, ...] | None
    change: int = 0
    fee: int = 0


def pay(amount: int, script: ScriptType = W, rid: str = "w-1") -> Payment:
    return Payment(rid, script, amount)


SELECT_CASES = [
    SelectCase("largest first, change back", (pay(60_000),), ("aa:0",), 38_590, 1_410),
    SelectCase("a second input when the first cannot pay the fee", (pay(99_000),), ("aa:0", "bb:1"),
               48_910, 2_090),
    SelectCase("change below dust goes to the fee", (pay(98_800),), ("aa:0",), 0, 1_200),
    SelectCase("batch of two payments", (pay(30_000), pay(20_000, TR, "w-2")), ("aa:0",), 48_160, 1_840),
    SelectCase("not enough funds", (pay(200_000),), None),
]


@pytest.mark.parametrize("c", SELECT_CASES, ids=lambda c: c.name)
def test_selection(c: SelectCase) -> None:
    plan = select(WALLET, c.payments, 10, W)
    if c.inputs is None:
        assert plan is None
        return
    assert plan is not None
    assert (plan.outpoints, plan.change, plan.fee, plan.sequence) == (c.inputs, c.change, c.fee, RBF_SEQUENCE)
    # Conservation: inputs = payments + change + fee, exactly.
    assert sum(u.value for u in plan.inputs) == sum(p.amount for p in plan.payments) + plan.change + plan.fee


def base_plan(amount: int) -> Plan:
    plan = select([A], (pay(amount),), 10, W)
    assert plan is not None
    return plan


@dataclass(frozen=True)
class BumpCase:
    name: str
    amount: int
    market: int
    cap: int
    change: int | None  # None: no bump possible
    fee: int = 0
    rate: int = 0


BUMP_CASES = [
    BumpCase("at least 10% more, paid by the change", 60_000, 5, 100, 38_449, 1_551, 11),
    BumpCase("the market above the minimum", 60_000, 30, 100, 35_770, 4_230, 30),
    BumpCase("cap below the minimum bump", 60_000, 5, 10, None),
    BumpCase("change falls to dust: dropped into the fee", 98_250, 1, 100, 0, 1_750, 15),
    BumpCase("no change to pay for it", 98_800, 1, 100, None),
]


@pytest.mark.parametrize("c", BUMP_CASES, ids=lambda c: c.name)
def test_bump_spends_the_same_inputs(c: BumpCase) -> None:
    old = base_plan(c.amount)
    new = bump(old, c.market, c.cap)
    if c.change is None:
        assert new is None
        return
    assert new is not None
    assert (new.change, new.fee, new.fee_rate) == (c.change, c.fee, c.rate)
    assert (new.inputs, new.payments) == (old.inputs, old.payments)
    assert new.fee >= old.fee + new.vsize  # BIP 125 rule 4 at 1 sat/vB incremental relay fee


def test_bad_payments_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        select(WALLET, (pay(0),), 10, W)
    with pytest.raises(ValueError, match="fee rate"):
        select(WALLET, (pay(1_000),), 0, W)
