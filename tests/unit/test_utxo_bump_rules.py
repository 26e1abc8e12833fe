"""watcher.core.utxo: plan_for (the binding's inputs, signed for the first time) and the
BIP 125 rules a bump meets, table-driven with hand-computed golden values."""

from __future__ import annotations

import pytest

from watcher.core.utxo import Payment, Plan, ScriptType, Utxo, bump, plan_for, vsize

W = ScriptType.P2WPKH
COIN_A = Utxo("a" * 64 + ":0", 100_000, W)
COIN_B = Utxo("b" * 64 + ":1", 40_000, W)
PAY = Payment("r", ScriptType.P2TR, 60_000)


@pytest.mark.parametrize(("inputs", "rate", "change", "fee", "size"), [
    # 1 in, P2TR + P2WPKH change: 10.5 + 68 + 43 + 31 = 152.5 -> 153 vB
    ([COIN_A], 1, 100_000 - 60_000 - 153, 153, 153),
    ([COIN_A], 10, 100_000 - 60_000 - 1530, 1530, 153),
    # 2 in: 221 vB
    ([COIN_A, COIN_B], 5, 140_000 - 60_000 - 1105, 1105, 221),
])
def test_plan_for_spends_exactly_the_given_inputs(inputs: list[Utxo], rate: int, change: int,
                                                  fee: int, size: int) -> None:
    plan = plan_for(inputs, [PAY], rate, W)
    assert plan is not None
    assert plan.outpoints == tuple(sorted(u.outpoint for u in inputs))
    assert (plan.change, plan.fee, plan.vsize, plan.fee_rate) == (change, fee, size, rate)


def test_plan_for_without_enough_and_with_dust_change() -> None:
    assert plan_for([COIN_B], [PAY], 1, W) is None  # 40k cannot pay 60k
    # 60,300 in: change would be 300 - 153 < 294 dust, so it is fee (no change output).
    plan = plan_for([Utxo("c" * 64 + ":0", 60_300, W)], [PAY], 1, W)
    assert plan is not None and plan.change == 0 and plan.fee == 300
    with pytest.raises(ValueError, match="distinct"):
        plan_for([COIN_A, COIN_A], [PAY], 1, W)


@pytest.mark.parametrize(("rate", "market", "fee_after", "rate_after"), [
    (1, 1, 306, 2),        # +1 sat/vB of its size (153) beats +10% (169) and the rate bump (2*153)
    (10, 1, 1683, 11),     # +10% of 1530 = 1683 = 11 * 153: all three rules meet there
    (20, 1, 3366, 22),     # +10% rate (22) wins
    (10, 30, 4590, 30),    # the market is higher: its rate
])
def test_bump_raises_rate_and_absolute_fee(rate: int, market: int, fee_after: int,
                                           rate_after: int) -> None:
    plan = plan_for([COIN_A], [PAY], rate, W)
    assert plan is not None
    new = bump(plan, market, cap=100)
    assert new is not None
    assert new.inputs == plan.inputs and new.payments == plan.payments
    assert (new.fee, new.fee_rate) == (fee_after, rate_after)
    assert new.fee >= plan.fee * 110 // 100 and new.fee >= plan.fee + new.vsize
    assert new.fee_rate >= -(-plan.fee_rate * 110 // 100)


def test_bump_refuses_past_the_cap_and_when_only_change_cannot_pay() -> None:
    plan = plan_for([COIN_A], [PAY], 50, W)
    assert plan is not None and bump(plan, 1, cap=54) is None  # 55 sat/vB needed
    tight = Plan((COIN_A,), (Payment("r", ScriptType.P2TR, 99_500),), W, 0, 500, 3,
                 vsize([W], [ScriptType.P2TR]))
    assert bump(tight, 1, cap=100) is None  # no change to take the bump from
