"""End to end on Bitcoin: a real btcd (regtest, this module's own), real Kafka, the
watcher's App in this process, transactions built and signed by the test.

Deposits are read back as a downstream consumer would: ``read_committed``, from the
beginning of the test's own topic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.btc_e2e import CHAIN, btc_config, check_stream, new_uid, own_btcd, running
from tests.support.btc_wallet import Payee, RegtestWallet, regtest_payee
from tests.support.services import BtcdService, KafkaService, ServiceManager
from tests.support.solidity import Event, produce, registration, scrape, summary
from watcher.config import WatcherConfig, parse
from watcher.kafka.client import ensure_topics

pytestmark = pytest.mark.integration

KINDS = ("p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr")


@pytest.fixture(scope="module")
def node(services: ServiceManager, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[BtcdService]:
    with own_btcd(services, tmp_path_factory.mktemp("btcd-e2e")) as n:
        yield n


@pytest.fixture(scope="module")
def wallet(node: BtcdService) -> RegtestWallet:
    return RegtestWallet(node)


async def make_cfg(kafka: KafkaService, services: ServiceManager, node: BtcdService,
                   tmp_path: Path, confirmations: Any, **kw: Any) -> WatcherConfig:
    uid = new_uid()
    raw = btc_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid, node=node,
                     secrets_dir=tmp_path, start_block=int(node.rpc("getblockcount")),
                     metrics_port=services.free_port(), confirmations=confirmations, **kw)
    cfg = parse(raw, base_dir=tmp_path, environ={})
    await ensure_topics(cfg.kafka)
    return cfg


async def register(cfg: WatcherConfig, *payees: tuple[Payee, str | None]) -> None:
    await produce(cfg.kafka.bootstrap_servers, cfg.kafka.topics.address_registrations,
                  [registration(CHAIN, p.address, label) for p, label in payees])


def did(txid: str, vout: int) -> str:
    return f"{CHAIN}:{txid}:vout:{vout}"


def of(events: list[Event], deposit_id: str) -> list[Event]:
    return [e for e in events if e["deposit_id"] == deposit_id]


async def test_deposits_of_every_script_type(kafka: KafkaService, services: ServiceManager,
                                             node: BtcdService, wallet: RegtestWallet,
                                             tmp_path: Path) -> None:
    """Five script types, three watched outputs in one transaction: pending then confirmed
    with exact satoshis, addresses as registered, labels; unwatched and dust give nothing."""
    uid = new_uid()
    # The metric is process-wide: other in-process tests of chain btc count into it too.
    from watcher.metrics import REGISTRY
    dust_before = REGISTRY.get_sample_value("watcher_dust_outputs_ignored_total",
                                            {"chain": CHAIN}) or 0.0
    payees = {k: regtest_payee(k, f"{uid}-single") for k in KINDS}
    trio = [regtest_payee(k, f"{uid}-trio") for k in ("p2tr", "p2sh", "p2wpkh")]
    stranger = regtest_payee("p2wpkh", f"{uid}-stranger")
    # Two watched outputs (one, dust, to a watched address) and one unwatched in one tx.
    cfg = await make_cfg(kafka, services, node, tmp_path,
                         [{"below": 100_000, "required": 2}, {"required": 3}])
    await register(cfg, *((p, f"cust-{k}") for k, p in payees.items()),
                   *((p, None) for p in trio))

    async with running(cfg) as run:
        await run.wait_watched(*(p.address for p in [*payees.values(), *trio]))
        amounts = {k: 10_000 + 1_111 * i for i, k in enumerate(KINDS)}  # all below 100_000
        single = wallet.pay([*((payees[k].script, amounts[k]) for k in KINDS),
                             (stranger.script, 77_777), (payees["p2wpkh"].script, 545)])
        three = wallet.pay([(trio[0].script, 123_456_789), (trio[1].script, 100_000),
                            (trio[2].script, 99_999)])
        (b1,) = node.rpc("generate", 1)

        expected: dict[str, dict[str, Any]] = {}
        for n, k in enumerate(KINDS):
            expected[did(single, n)] = {"address": payees[k].address, "amount": amounts[k],
                                        "required": 2, "label": f"cust-{k}", "txid": single}
        for n, (p, amount, req) in enumerate(zip(trio, (123_456_789, 100_000, 99_999),
                                                 (3, 3, 2), strict=True)):
            expected[did(three, n)] = {"address": p.address, "amount": amount,
                                       "required": req, "label": None, "txid": three}

        height = int(node.rpc("getblockcount"))
        for deposit_id, want in expected.items():
            ev = await run.wait_event("deposit.pending", deposit_id)
            got = {"address": ev["address"], "amount": int(ev["amount"]),
                   "required": ev["required_confirmations"], "label": ev.get("label"),
                   "txid": ev["txid"]}
            assert got == want, deposit_id
            assert (ev["amount"], ev["asset"], ev["decimals"], ev["token_contract"]) == (
                str(want["amount"]), "BTC", 8, None)
            assert (ev["block_hash"], ev["block_number"], ev["confirmations"]) == (
                b1, height, 1)

        node.rpc("generate", 1)
        for deposit_id, want in expected.items():
            if want["required"] == 2:
                ev = await run.wait_event("deposit.confirmed", deposit_id)
                assert (ev["confirmations"], ev["block_hash"]) == (2, b1)
        node.rpc("generate", 1)
        for deposit_id, want in expected.items():
            if want["required"] == 3:
                ev = await run.wait_event("deposit.confirmed", deposit_id)
                assert (ev["confirmations"], ev["block_hash"]) == (3, b1)
        await run.wait_processed(node)
        assert await scrape(run.metrics, "watcher_dust_outputs_ignored_total",
                            chain=CHAIN) == dust_before + 1

        events = run.reader.events
        check_stream(events, run.reader.keys)
        assert {e["deposit_id"] for e in events} == set(expected), summary(events)
        # The unwatched output (vout 5) and the dust one (vout 6) of the first transaction.
        assert not of(events, did(single, 5)) and not of(events, did(single, 6))
        assert all(e["address"] != stranger.address for e in events)
        assert [e["type"] for e in events].count("deposit.confirmed") == len(expected)


async def test_reorg_reverts_and_a_re_mined_deposit_starts_a_new_lifecycle(
        kafka: KafkaService, services: ServiceManager, node: BtcdService,
        wallet: RegtestWallet, tmp_path: Path) -> None:
    """One confirmation suffices (threshold lowered): a deposit confirmed in a block that
    ``invalidateblock`` removes, replaced (RBF) by a transaction paying elsewhere on the
    longer branch, is reverted after credit; one re-mined on the new branch is reverted in
    the old block and confirmed anew in the new one."""
    uid = new_uid()
    alice = regtest_payee("p2wpkh", f"{uid}-alice")
    bob = regtest_payee("p2tr", f"{uid}-bob")
    elsewhere = regtest_payee("p2wpkh", f"{uid}-elsewhere")
    cfg = await make_cfg(kafka, services, node, tmp_path, 1)
    await register(cfg, (alice, "alice"), (bob, "bob"))

    async with running(cfg) as run:
        await run.wait_watched(alice.address, bob.address)

        # 1. Confirmed, then its block is invalidated and the payment replaced.
        paying = wallet.build([(alice.script, 250_000)], rbf=True)
        wallet.send(paying)
        (b1,) = node.rpc("generate", 1)
        confirmed = await run.wait_event("deposit.confirmed", did(paying.txid, 0), b1)
        assert confirmed["amount"] == "250000" and confirmed["confirmations"] == 1
        node.rpc("invalidateblock", b1)
        replacement = wallet.build([(elsewhere.script, 240_000)], coin=paying.inputs[0][0],
                                   fee=30_000, rbf=True)
        wallet.send(replacement, replaces=paying)
        node.rpc("generate", 2)
        reverted = await run.wait_event("deposit.reverted", did(paying.txid, 0), b1)
        assert reverted["previous_type"] == "deposit.confirmed"
        assert reverted["amount"] == "250000" and reverted["address"] == alice.address
        await run.wait_processed(node)
        assert not [e for e in of(run.reader.events, did(paying.txid, 0))
                    if e["block_hash"] != b1]

        # 2. Confirmed, invalidated, re-mined in another block: a new lifecycle.
        second = wallet.pay([(bob.script, 1_000_000)])
        (b2,) = node.rpc("generate", 1)
        await run.wait_event("deposit.confirmed", did(second, 0), b2)
        node.rpc("invalidateblock", b2)
        wallet.pay([(elsewhere.script, 5_000)])  # so the new block differs from the old
        new_blocks = node.rpc("generate", 2)
        assert second in node.rpc("getblock", new_blocks[0], 1)["tx"]
        await run.wait_event("deposit.reverted", did(second, 0), b2)
        again = await run.wait_event("deposit.confirmed", did(second, 0), new_blocks[0])
        assert again["amount"] == "1000000" and again["address"] == bob.address
        await run.wait_processed(node)

        events = run.reader.events
        check_stream(events, run.reader.keys)
        assert [(e["type"], e["block_hash"]) for e in of(events, did(second, 0))] == [
            ("deposit.confirmed", b2), ("deposit.reverted", b2),
            ("deposit.confirmed", new_blocks[0])]
        assert not of(events, did(replacement.txid, 0))


async def test_mempool_seen_replaced_and_a_replacement_paying_another_watched_address(
        kafka: KafkaService, services: ServiceManager, node: BtcdService,
        wallet: RegtestWallet, tmp_path: Path) -> None:
    """Mempool watching on: a seen deposit replaced (RBF) by a payment elsewhere is reverted
    (``replaced``); one replaced by a payment to another watched address gives that address
    its own deposit, seen, then pending and confirmed when mined."""
    uid = new_uid()
    alice = regtest_payee("p2wpkh", f"{uid}-alice")
    bob = regtest_payee("p2sh", f"{uid}-bob")
    elsewhere = regtest_payee("p2tr", f"{uid}-elsewhere")
    cfg = await make_cfg(kafka, services, node, tmp_path, 2,
                         mempool={"enabled": True, "poll_interval_ms": 100,
                                  "drop_after_s": 600})
    await register(cfg, (alice, "alice"), (bob, "bob"))

    async with running(cfg) as run:
        await run.wait_watched(alice.address, bob.address)

        first = wallet.build([(alice.script, 300_000)], rbf=True)
        wallet.send(first)
        seen = await run.wait_event("deposit.seen", did(first.txid, 0))
        assert (seen["amount"], seen["address"], seen["rbf"], seen["label"]) == (
            "300000", alice.address, True, "alice")
        assert (seen["block_hash"], seen["block_number"]) == (None, None)
        away = wallet.build([(elsewhere.script, 290_000)], coin=first.inputs[0][0],
                            fee=20_000, rbf=True)
        wallet.send(away, replaces=first)
        reverted = await run.wait_event("deposit.reverted", did(first.txid, 0))
        assert (reverted["reason"], reverted["previous_type"]) == ("replaced", "deposit.seen")

        second = wallet.build([(alice.script, 400_000)], rbf=True)
        wallet.send(second)
        await run.wait_event("deposit.seen", did(second.txid, 0))
        to_bob = wallet.build([(bob.script, 390_000)], coin=second.inputs[0][0], fee=20_000,
                              rbf=False)
        wallet.send(to_bob, replaces=second)
        gone = await run.wait_event("deposit.reverted", did(second.txid, 0))
        assert gone["reason"] == "replaced"
        bob_seen = await run.wait_event("deposit.seen", did(to_bob.txid, 0))
        assert (bob_seen["amount"], bob_seen["address"], bob_seen["rbf"]) == (
            "390000", bob.address, False)

        (mined,) = node.rpc("generate", 1)
        pending = await run.wait_event("deposit.pending", did(to_bob.txid, 0), mined)
        assert pending["amount"] == "390000"
        node.rpc("generate", 1)
        await run.wait_event("deposit.confirmed", did(to_bob.txid, 0), mined)
        await run.wait_processed(node)

        events = run.reader.events
        check_stream(events, run.reader.keys)
        assert not of(events, did(away.txid, 0))
        assert [e["type"] for e in of(events, did(first.txid, 0))] == [
            "deposit.seen", "deposit.reverted"]
        assert [e["type"] for e in of(events, did(to_bob.txid, 0))] == [
            "deposit.seen", "deposit.pending", "deposit.confirmed"]
