"""Bitcoin withdrawals end to end: a real btcd regtest of this module's own, real Kafka, the
watcher's App in this process.

The hot wallet is a P2WPKH address of a key only these tests know, funded by the test
wallet (tests/support/btc_wallet.py) before the App starts; the runner finds the coins by
scanning blocks from the chain's ``start_block`` (no node wallet). Payments are checked on
chain with ``getrawtransaction`` (btcd runs with ``--txindex``) and ``getblock``.

btcd runs with a relay fee of 2 sat/vB, ``--norelaypriority`` and
``--blockprioritysize=0``: a transaction paying less than the relay fee is accepted into
the mempool as a free transaction (no priority needed) but is never mined (btcd's block
template skips transactions below ``TxMinFreeFee`` once it sorts by fee, which it does
from the start with no priority area; mining/mining.go, NewBlockTemplate). A payment at
the watcher's fee floor of 1 sat/vB is therefore stuck, for real, until a replacement
raises the fee; one at a floor of 5 sat/vB is mined at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from chains.bitcoin.networks import network
from chains.bitcoin.tx import compressed_public_key, p2wpkh_address, p2wpkh_script
from tests.integration.test_withdrawals_e2e import REQUESTER_PUB, VALIDATOR, describe, signed_request
from tests.support.btc_e2e import CHAIN, btc_config, new_uid, own_btcd
from tests.support.btc_wallet import (
    COINBASE_MATURITY,
    RegtestWallet,
    regtest_payee,
    sats,
    segwit_address,
)
from tests.support.services import BtcdService, KafkaService, ServiceManager, devstack
from tests.support.solidity import Event, TopicReader, produce, scrape, wait_ready
from watcher.app import App
from watcher.config import WatcherConfig, parse
from watcher.kafka.client import ensure_topics
from watcher.withdrawals.signer import HotKeySigner

pytestmark = pytest.mark.integration

BTCD_POLICY = ("--minrelaytxfee=0.00002", "--norelaypriority", "--blockprioritysize=0",
               "--blockminsize=0", "--blockminweight=0")
HOT_KEY_ENV = "BTCWD_E2E_HOT_KEY"
STUCK_KEY = hashlib.sha256(b"btcwd e2e hot wallet stuck").hexdigest()
CONFIRMATIONS = 2
WAIT_S = 90.0
FUNDING = 3_000_000


@pytest.fixture(scope="module")
def node(services: ServiceManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BtcdService]:
    with own_btcd(services, tmp_path_factory.mktemp("btcd-withdrawals"), BTCD_POLICY) as n:
        yield n


@pytest.fixture(scope="module")
def wallet(node: BtcdService) -> RegtestWallet:
    return RegtestWallet(node)


def hot_wallet(key: str) -> tuple[bytes, str]:
    signer = HotKeySigner("test", bytes.fromhex(key))
    return (p2wpkh_script(compressed_public_key(signer.public_key)),
            p2wpkh_address(signer.public_key, network("regtest")))


@pytest.fixture
def coinbase_node(services: ServiceManager, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[BtcdService]:
    """A btcd that mines some of its blocks to the stuck test's hot wallet: its coins are
    coinbases, so btcd's fee estimator has seen no transaction and has no estimate (the
    watcher pays its floor), which a funding transaction would have given it."""
    script, address = hot_wallet(STUCK_KEY)
    with own_btcd(services, tmp_path_factory.mktemp("btcd-stuck"), (*BTCD_POLICY,
                                                                    f"--miningaddr={address}")) as n:
        # btcd picks one of its mining addresses at random per block: mine until one of the
        # hot wallet's coinbases is mature (100 confirmations).
        checked = 0
        while True:
            tip = int(n.rpc("getblockcount"))
            found = False
            for height in range(checked + 1, tip - COINBASE_MATURITY + 2):
                coinbase = n.rpc("getblock", n.rpc("getblockhash", height))["tx"][0]
                outs = n.rpc("getrawtransaction", coinbase, 1)["vout"]
                found = found or any(o["scriptPubKey"]["hex"] == script.hex() for o in outs)
                checked = height
            if found:
                break
            n.rpc("generate", 1)
        yield n


@dataclass
class Env:
    node: BtcdService
    cfg: WatcherConfig
    reader: TopicReader
    metrics: str
    hot_script: bytes
    hot_address: str
    funding: tuple[str, int]
    task: asyncio.Task[int]

    def alive(self) -> None:
        if self.task.done():
            exc = self.task.exception() if not self.task.cancelled() else None
            raise AssertionError(f"the watcher stopped by itself: {exc!r}") from exc

    async def rpc(self, method: str, *params: Any) -> Any:
        return await asyncio.to_thread(self.node.rpc, method, *params)

    async def mine(self, n: int = 1) -> None:
        await self.rpc("generate", n)

    async def request(self, *records: bytes) -> None:
        out = [(str(i).encode(), v) for i, v in enumerate(records)]
        await produce(self.cfg.kafka.bootstrap_servers, self.cfg.kafka.topics.withdrawal_requests, out)

    def of(self, rid: str) -> list[Event]:
        return [e for e in self.reader.events if e.get("request_id") == rid]

    async def until(self, rid: str, type_: str, timeout_s: float = WAIT_S) -> list[Event]:
        await self.reader.wait_for(lambda evs: any(e["type"] == type_ and e.get("request_id") == rid
                                                   for e in evs),
                                   f"{type_} of {rid}", timeout_s, describe=describe, alive=self.alive)
        return self.of(rid)

    async def tx(self, txid: str) -> dict[str, Any]:
        got: dict[str, Any] = await self.rpc("getrawtransaction", txid, 1)
        return got


async def miner(env: Env, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await env.mine(1)
        await asyncio.sleep(0.3)  # pacing a dev chain: one block per 0.3 s


def btc_body(rid: str, to: str, amount: int) -> dict[str, Any]:
    return {"request_id": rid, "chain": CHAIN, "asset": "BTC", "to_address": to, "amount": str(amount)}


@contextlib.asynccontextmanager
async def environment(kafka: KafkaService, node: BtcdService, wallet: RegtestWallet,
                      services: ServiceManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      *, key: str, min_fee_rate: int, stuck_blocks: int = 30,
                      fund: bool = True, batch: dict[str, Any] | None = None) -> AsyncIterator[Env]:
    hot_script, hot_address = hot_wallet(key)
    # Funded before the App starts: the runner finds the coin from the chain's start_block.
    funding_txid, start = "", 1
    if fund:
        funding_txid = await asyncio.to_thread(wallet.pay, [(hot_script, FUNDING)], fee=3_000)
        await asyncio.to_thread(node.rpc, "generate", 1)
        start = int(await asyncio.to_thread(node.rpc, "getblockcount"))
    uid = new_uid()
    port = services.free_port()
    raw = btc_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid, node=node,
                     secrets_dir=tmp_path, start_block=start, metrics_port=port, confirmations=1)
    raw["withdrawals"] = {
        "requesters": {"ledger": REQUESTER_PUB},
        "chains": {CHAIN: {
            "confirmations": CONFIRMATIONS, "stuck_blocks": stuck_blocks,
            "min_fee_rate": min_fee_rate, "max_fee_rate": 50, "input_confirmations": 1,
            "hot_key": {"env": HOT_KEY_ENV},
            "assets": {"BTC": {"per_request_limit": "2000000", "daily_limit": "10000000"}},
            **({} if batch is None else {"batch": batch}),
        }},
    }
    monkeypatch.setenv(HOT_KEY_ENV, key)
    cfg = parse(raw, base_dir=tmp_path)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(cfg.kafka.topics.withdrawal_requests, 1, 1)])
    finally:
        await admin.close()
    await ensure_topics(cfg.kafka)
    reader = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.withdrawals)
    await reader.start()
    stop = asyncio.Event()
    task = asyncio.create_task(App(cfg).run(stop))
    env = Env(node, cfg, reader, f"http://127.0.0.1:{port}", hot_script, hot_address,
              (funding_txid, 0), task)
    try:
        await wait_ready(env.metrics, env.alive)
        yield env
    finally:
        stop.set()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 20)
        await reader.stop()


def hot_key(seed: str) -> str:
    return hashlib.sha256(f"btcwd e2e hot wallet {seed}".encode()).hexdigest()


def paid(tx: dict[str, Any], script: bytes) -> list[int]:
    return [sats(o["value"]) for o in tx["vout"] if o["scriptPubKey"]["hex"] == script.hex()]


def spent(tx: dict[str, Any]) -> set[tuple[str, int]]:
    return {(i["txid"], int(i["vout"])) for i in tx["vin"]}


async def test_btc_withdrawal_pays_exactly_and_change_returns(
        kafka: KafkaService, node: BtcdService, wallet: RegtestWallet, services: ServiceManager,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with environment(kafka, node, wallet, services, tmp_path, monkeypatch, key=hot_key("pay"),
                           min_fee_rate=5) as env:
        stop = asyncio.Event()
        mining = asyncio.create_task(miner(env, stop))
        # The registry is the process's: other tests of this session may have counted before.
        confirmed_before = await scrape(env.metrics, "watcher_withdrawal_events_total",
                                        chain=CHAIN, type="withdrawal.confirmed") or 0.0
        try:
            payee = regtest_payee("p2tr", "btcwd pay")
            await env.request(signed_request(btc_body("w-btc-1", payee.address, 1_234_567)))
            evs = await env.until("w-btc-1", "withdrawal.confirmed")
            assert [e["type"] for e in evs] == ["withdrawal.accepted", "withdrawal.broadcast",
                                                "withdrawal.confirmed"], describe(evs)
            for e in evs:
                VALIDATOR.validate({k: v for k, v in e.items() if not k.startswith("_")})
                assert e["nonce"] is None and e["chain"] == CHAIN
            confirmed = evs[-1]
            assert confirmed["txid"] == evs[1]["txid"]
            assert confirmed["confirmations"] >= CONFIRMATIONS
            block = await env.rpc("getblock", confirmed["block_hash"])
            assert confirmed["txid"] in block["tx"] and block["height"] == confirmed["block_number"]
            tx = await env.tx(confirmed["txid"])
            assert paid(tx, payee.script) == [1_234_567]  # exactly the requested satoshis
            change = paid(tx, env.hot_script)
            assert spent(tx) == {env.funding}
            assert len(change) == 1 and FUNDING - 1_234_567 - change[0] == int(confirmed["fee"])
            # The node's estimate within the configured floor (5) and cap (50 sat/vB).
            assert 5 * tx["vsize"] <= int(confirmed["fee"]) <= 50 * (tx["vsize"] + 1)
            assert all(i["sequence"] == 0xFFFFFFFD for i in tx["vin"])  # RBF-signalling

            # A second payment spends the change (own change, spendable from 1 confirmation).
            payee2 = regtest_payee("p2pkh", "btcwd pay 2")
            await env.request(signed_request(btc_body("w-btc-2", payee2.address, 300_000)))
            evs2 = await env.until("w-btc-2", "withdrawal.confirmed")
            tx2 = await env.tx(evs2[-1]["txid"])
            change_n = next(o["n"] for o in tx["vout"]
                            if o["scriptPubKey"]["hex"] == env.hot_script.hex())
            assert spent(tx2) == {(confirmed["txid"], change_n)}
            assert paid(tx2, payee2.script) == [300_000]
            left = paid(tx2, env.hot_script)[0]
            assert await scrape(env.metrics, "watcher_withdrawal_events_total", chain=CHAIN,
                                type="withdrawal.confirmed") == confirmed_before + 2

            async def balance_is(value: int) -> bool:
                return await scrape(env.metrics, "watcher_hot_wallet_balance",
                                    chain=CHAIN, asset="BTC") == float(value)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while not await balance_is(left):
                env.alive()
                assert loop.time() < deadline, "hot-wallet balance gauge never showed the change"
                await asyncio.sleep(0.2)  # polling: a gauge has no event to wait on
        finally:
            stop.set()
            await mining


async def test_bad_btc_addresses_are_rejected_and_nothing_is_broadcast(
        kafka: KafkaService, node: BtcdService, wallet: RegtestWallet, services: ServiceManager,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with environment(kafka, node, wallet, services, tmp_path, monkeypatch, key=hot_key("reject"),
                           min_fee_rate=5) as env:
        good = regtest_payee("p2wpkh", "btcwd reject")
        mainnet = segwit_address("bc", 0, good.script[2:])  # the same program, mainnet HRP
        last = good.address[-1]
        bad_checksum = good.address[:-1] + ("q" if last != "q" else "p")
        await env.request(
            signed_request(btc_body("w-mainnet", mainnet, 1000)),
            signed_request(btc_body("w-checksum", bad_checksum, 1000)))
        for rid, words in (("w-mainnet", "hrp"), ("w-checksum", "checksum")):
            evs = await env.until(rid, "withdrawal.rejected")
            assert [e["type"] for e in evs] == ["withdrawal.rejected"], describe(evs)
            assert evs[0]["reason"] == "invalid_address" and words in evs[0]["message"]
            VALIDATOR.validate({k: v for k, v in evs[0].items() if not k.startswith("_")})
        # Nothing was signed: the coin is unspent, nothing of ours in the mempool, and no
        # event but the two rejections.
        await asyncio.sleep(1.0)  # one more watcher round, to catch a late broadcast
        assert await env.rpc("gettxout", env.funding[0], env.funding[1], True) is not None
        pool = await env.rpc("getrawmempool")
        for txid in pool:
            assert env.funding not in spent(await env.tx(txid))
        assert {e["type"] for e in env.reader.events} == {"withdrawal.rejected"}


async def test_stuck_btc_payment_is_bumped_by_replacement_on_the_same_inputs(
        kafka: KafkaService, coinbase_node: BtcdService, services: ServiceManager,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = coinbase_node
    async with environment(kafka, node, RegtestWallet(node), services, tmp_path, monkeypatch,
                           key=STUCK_KEY, min_fee_rate=1, stuck_blocks=2, fund=False) as env:
        payee = regtest_payee("p2wsh", "btcwd stuck")
        await env.request(signed_request(btc_body("w-stuck", payee.address, 777_777)))
        first = (await env.until("w-stuck", "withdrawal.broadcast"))[-1]
        raws: dict[str, dict[str, Any]] = {first["txid"]: await env.tx(first["txid"])}  # in the mempool
        assert first["txid"] in await env.rpc("getrawmempool")
        # Blocks are mined one at a time; each new transaction is read from the mempool
        # before the next block can make the watcher replace it.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_S * 2
        while not any(e["type"] == "withdrawal.confirmed" for e in env.of("w-stuck")):
            env.alive()
            assert loop.time() < deadline, describe(env.of("w-stuck"))
            await env.mine(1)
            await asyncio.sleep(0.6)  # a watcher round (poll 100 ms) or a few, per block
            await env.reader.read_to_end()
            for e in env.of("w-stuck"):
                if e["type"] == "withdrawal.replaced" and e["txid"] not in raws:
                    raws[e["txid"]] = await env.tx(e["txid"])
        evs = env.of("w-stuck")
        types = [e["type"] for e in evs]
        assert types[0] == "withdrawal.accepted" and types[1] == "withdrawal.broadcast", types
        assert types.count("withdrawal.confirmed") == 1 and types[-1] == "withdrawal.confirmed"
        replaced = [e for e in evs if e["type"] == "withdrawal.replaced"]
        assert replaced, describe(evs)
        chain_of = [first["txid"]]
        for r in replaced:
            assert r["replaces_txid"] == chain_of[-1]
            assert int(r["fee"]) > int(next(e["fee"] for e in evs if e.get("txid") == chain_of[-1]))
            chain_of.append(r["txid"])
        confirmed = evs[-1]
        assert confirmed["txid"] == chain_of[-1]
        for e in evs:
            VALIDATOR.validate({k: v for k, v in e.items() if not k.startswith("_")})
        # Every transaction of the request spends exactly the same inputs (one of the hot
        # wallet's coinbases); one of them is in a block.
        assert len({frozenset(spent(t)) for t in raws.values()}) == 1 and len(raws) == len(chain_of)
        mined = await env.tx(confirmed["txid"])
        assert mined.get("blockhash") == confirmed["block_hash"]
        assert paid(mined, payee.script) == [777_777]
        first_tx = raws[first["txid"]]
        assert int(first["fee"]) < 2 * first_tx["vsize"]  # below btcd's 2 sat/vB: stuck for real
        for txid in chain_of[:-1]:
            with pytest.raises(devstack().DevStackError, match="No information available"):
                await env.tx(txid)  # replaced: neither in the mempool nor in a block


async def test_a_long_witness_program_is_paid_on_chain(
        kafka: KafkaService, node: BtcdService, wallet: RegtestWallet, services: ServiceManager,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Witness v2 with a 40-byte program: valid text (BIP 350), so it must be paid, not wait."""
    async with environment(kafka, node, wallet, services, tmp_path, monkeypatch, key=hot_key("v2"),
                           min_fee_rate=5) as env:
        stop = asyncio.Event()
        mining = asyncio.create_task(miner(env, stop))
        try:
            program = bytes(range(40))
            to = segwit_address("bcrt", 2, program)
            await env.request(signed_request(btc_body("w-v2", to, 50_000)))
            evs = await env.until("w-v2", "withdrawal.confirmed")
            tx = await env.tx(evs[-1]["txid"])
            assert paid(tx, bytes.fromhex("5228") + program) == [50_000]
        finally:
            stop.set()
            await mining
