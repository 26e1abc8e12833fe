"""UTXO batching in the withdrawal runner, on the fake chain of test_utxo_withdrawals (the
book, coin selection, signing, intake and runner are the real ones)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from chains.bitcoin.block import parse_transaction
from chains.bitcoin.networks import network
from chains.bitcoin.tx import address_script
from tests.component.test_utxo_withdrawals import make_runner, raw_config, request, types_of
from tests.support.btc_wallet import regtest_payee
from tests.unit.test_withdrawal_runtime import FakeRequests, FakeSink
from watcher.config import BatchConfig, parse
from watcher.core.withdrawals import BroadcastOutcome, RequestId
from watcher.errors import ConfigError
from watcher.metrics import REGISTRY

REGTEST = network("regtest")
PAYEES = [regtest_payee(kind, "batch") for kind in ("p2wpkh", "p2tr", "p2pkh")]
AMOUNTS = [120_000, 35_000, 7_000]


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"chain": "btc"}) or 0.0


def outputs(raw: bytes) -> list[tuple[bytes, int]]:
    return [(o.script, o.value) for o in parse_transaction(raw).outputs(0)]


async def test_gathered_requests_are_paid_by_one_transaction_each_confirmed_once() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs, batch={"max_outputs": 5, "max_wait_blocks": 1})
    await r.start()
    node.fund(300_000, "batch")
    await r.step()
    for i, (p, a) in enumerate(zip(PAYEES, AMOUNTS, strict=True)):
        reqs.add(request(f"w-b{i}", a, to=p.address))
    await r.step()
    assert node.sent == []  # gathering: no block since they arrived
    node.mine()
    await r.step()
    assert len(node.sent) == 1
    outs = outputs(node.sent[0])
    assert outs[:3] == [(address_script(p.address, REGTEST), a) for p, a in zip(PAYEES, AMOUNTS, strict=True)]
    assert outs[3][0] == node.hot and len(outs) == 4
    fee = 300_000 - sum(v for _, v in outs)
    node.mine()
    node.mine()
    await r.step()
    txid = parse_transaction(node.sent[0]).txid(0)
    shares = []
    for i in range(3):
        evs = [e for e in sink.events() if e.get("request_id") == f"w-b{i}"]
        assert [e["type"] for e in evs] == ["withdrawal.accepted", "withdrawal.broadcast",
                                            "withdrawal.confirmed"]
        assert evs[1]["txid"] == evs[2]["txid"] == txid
        assert evs[1]["fee"] == evs[2]["fee"]
        shares.append(int(evs[2]["fee"]))
    assert sum(shares) == fee and max(shares) - min(shares) <= 1


async def test_a_full_batch_goes_at_once_and_the_rest_waits_for_company() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs, batch={"max_outputs": 2, "max_wait_blocks": 3})
    await r.start()
    node.fund(300_000, "full")
    await r.step()
    batches = sample("watcher_withdrawal_batches_total")
    batched = sample("watcher_withdrawal_batched_requests_total")
    for i, (p, a) in enumerate(zip(PAYEES, AMOUNTS, strict=True)):
        reqs.add(request(f"w-f{i}", a, to=p.address))
    await r.step()
    assert len(node.sent) == 1 and len(outputs(node.sent[0])) == 3  # two payments + change
    assert types_of(sink, "w-f2") == ["withdrawal.accepted"]
    # One payment of two requests bound; the third is held for company (and shown so).
    assert sample("watcher_withdrawal_batches_total") - batches == 1
    assert sample("watcher_withdrawal_batched_requests_total") - batched == 2
    assert sample("watcher_withdrawals_gathering") == 1


async def test_a_stuck_batch_is_bumped_on_the_same_inputs_and_outputs() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs, batch={"max_outputs": 3, "max_wait_blocks": 0})
    await r.start()
    node.fund(500_000, "stuck")
    await r.step()
    node.mine_rate = 3  # the floor's 1 sat/vB is never mined
    for i, (p, a) in enumerate(zip(PAYEES, AMOUNTS, strict=True)):
        reqs.add(request(f"w-s{i}", a, to=p.address))
    await r.step()
    assert len(node.sent) == 1
    first = parse_transaction(node.sent[0])
    for _ in range(8):
        node.mine()
        await r.step()
    accepted = [raw for raw, o in zip(node.sent, node.outcomes, strict=True) if o is BroadcastOutcome.OK]
    assert len(accepted) >= 2
    fees = []
    for raw in accepted:
        t = parse_transaction(raw)
        assert t.spends(0) == first.spends(0)
        assert t.outputs(0)[:3] == first.outputs(0)[:3]  # the same payments; only change shrinks
        fees.append(500_000 - sum(o.value for o in t.outputs(0)))
    for old, new in itertools.pairwise(fees):
        assert new >= old * 110 // 100 and new > old
    last = parse_transaction(accepted[-1]).txid(0)
    for i in range(3):
        types = types_of(sink, f"w-s{i}")
        assert types[:2] == ["withdrawal.accepted", "withdrawal.broadcast"]
        assert types.count("withdrawal.confirmed") == 1 and "withdrawal.replaced" in types
        confirmed = [e for e in sink.events() if e.get("request_id") == f"w-s{i}"
                     and e["type"] == "withdrawal.confirmed"]
        assert confirmed[0]["txid"] == last
    w = r.book.get(RequestId("w-s0"))
    assert w is None or w.batch == (RequestId("w-s0"), RequestId("w-s1"), RequestId("w-s2"))


def test_batch_settings() -> None:
    cfg = parse(raw_config(batch={"max_outputs": 4, "max_wait_blocks": 2}))
    assert cfg.withdrawals is not None
    assert cfg.withdrawals.chains["btc"].batch == BatchConfig(4, 2)  # type: ignore[index]
    off = parse(raw_config())
    assert off.withdrawals is not None and off.withdrawals.chains["btc"].batch is None  # type: ignore[index]
    assert parse(raw_config(batch={"enabled": False})).withdrawals.chains["btc"].batch is None  # type: ignore[union-attr,index]


@pytest.mark.parametrize(("batch", "key", "message"), [
    ({"max_outputs": 1}, "batch.max_outputs", ">= 2"),
    ({"max_outputs": 101}, "batch.max_outputs", "<= 100"),
    ({"max_wait_blocks": -1}, "batch.max_wait_blocks", ">= 0"),
    ({"max_wait_ms": 5}, "batch", "max_wait_ms"),
    ({"enabled": "yes"}, "batch.enabled", "true or false"),
])
def test_bad_batch_settings_name_the_key(batch: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse(raw_config(batch=batch))
    assert key in str(info.value)
