"""Batched Bitcoin withdrawals end to end: real btcd regtest and Kafka, the App in this
process (the environment and the stuck setup of test_btc_withdrawals_e2e)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_btc_withdrawals_e2e import (
    STUCK_KEY,
    WAIT_S,
    btc_body,
    coinbase_node,
    environment,
    hot_key,
    miner,
    node,
    paid,
    spent,
    wallet,
)
from tests.integration.test_withdrawals_e2e import VALIDATOR, describe, signed_request
from tests.support.btc_wallet import RegtestWallet, regtest_payee
from tests.support.services import BtcdService, KafkaService, ServiceManager

pytestmark = pytest.mark.integration
__all__ = ["coinbase_node", "node", "wallet"]  # the fixtures, shared with the module above

KINDS = ("p2wpkh", "p2tr", "p2pkh")
AMOUNTS = (400_000, 250_000, 30_000)


async def test_batched_requests_are_one_transaction_paying_each_exactly(
        kafka: KafkaService, node: BtcdService, wallet: RegtestWallet, services: ServiceManager,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with environment(kafka, node, wallet, services, tmp_path, monkeypatch, key=hot_key("batch"),
                           min_fee_rate=5, batch={"max_outputs": 3, "max_wait_blocks": 5}) as env:
        stop = asyncio.Event()
        mining = asyncio.create_task(miner(env, stop))
        try:
            payees = [regtest_payee(k, "btcbatch e2e") for k in KINDS]
            rids = [f"w-batch-{i}" for i in range(3)]
            await env.request(*(signed_request(btc_body(r, p.address, a))
                                for r, p, a in zip(rids, payees, AMOUNTS, strict=True)))
            for r in rids:
                await env.until(r, "withdrawal.confirmed")
            txids = set()
            fees = 0
            for r in rids:
                evs = env.of(r)
                assert [e["type"] for e in evs] == ["withdrawal.accepted", "withdrawal.broadcast",
                                                    "withdrawal.confirmed"], describe(evs)
                for e in evs:
                    VALIDATOR.validate({k: v for k, v in e.items() if not k.startswith("_")})
                txids.add(evs[-1]["txid"])
                fees += int(evs[-1]["fee"])
            assert len(txids) == 1  # ONE transaction on chain for the three requests
            tx = await env.tx(txids.pop())
            for p, a in zip(payees, AMOUNTS, strict=True):
                assert paid(tx, p.script) == [a]
            assert spent(tx) == {env.funding}
            change = paid(tx, env.hot_script)
            assert len(change) == 1
            assert 3_000_000 - sum(AMOUNTS) - change[0] == fees  # the shares sum to the fee
        finally:
            stop.set()
            await mining


async def test_a_stuck_batch_is_bumped_on_the_same_inputs_and_confirms_once_each(
        kafka: KafkaService, coinbase_node: BtcdService, services: ServiceManager,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = coinbase_node
    async with environment(kafka, node, RegtestWallet(node), services, tmp_path, monkeypatch,
                           key=STUCK_KEY, min_fee_rate=1, stuck_blocks=2, fund=False,
                           batch={"max_outputs": 2, "max_wait_blocks": 5}) as env:
        payees = [regtest_payee(k, "btcbatch stuck") for k in ("p2wsh", "p2tr")]
        rids = ["w-bstuck-0", "w-bstuck-1"]
        await env.request(*(signed_request(btc_body(r, p.address, a))
                            for r, p, a in zip(rids, payees, (777_777, 111_111), strict=True)))
        first = (await env.until(rids[0], "withdrawal.broadcast"))[-1]
        raws: dict[str, dict[str, Any]] = {first["txid"]: await env.tx(first["txid"])}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S * 2
        while not all(any(e["type"] == "withdrawal.confirmed" for e in env.of(r)) for r in rids):
            env.alive()
            assert loop.time() < deadline, describe(env.of(rids[0]))
            await env.mine(1)
            await asyncio.sleep(0.6)  # a watcher round (poll 100 ms) or a few, per block
            await env.reader.read_to_end()
            for e in env.of(rids[0]):
                if e["type"] == "withdrawal.replaced" and e["txid"] not in raws:
                    raws[e["txid"]] = await env.tx(e["txid"])
        chains = []
        for r in rids:
            evs = env.of(r)
            types = [e["type"] for e in evs]
            assert types[:2] == ["withdrawal.accepted", "withdrawal.broadcast"], types
            assert types.count("withdrawal.confirmed") == 1 and "withdrawal.replaced" in types
            chains.append([e["txid"] for e in evs if e["type"] in ("withdrawal.broadcast",
                                                                   "withdrawal.replaced")])
        assert chains[0] == chains[1]  # every transaction pays both: the same txids, in step
        assert len(raws) == len(chains[0])
        assert len({frozenset(spent(t)) for t in raws.values()}) == 1  # the same inputs each time
        confirmed = env.of(rids[0])[-1]
        assert confirmed["txid"] == chains[0][-1] == env.of(rids[1])[-1]["txid"]
        mined = await env.tx(confirmed["txid"])
        assert mined.get("blockhash") == confirmed["block_hash"]
        assert paid(mined, payees[0].script) == [777_777] and paid(mined, payees[1].script) == [111_111]
