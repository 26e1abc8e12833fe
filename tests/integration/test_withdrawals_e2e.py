"""Withdrawals end to end on EVM: real anvil, real Kafka, the watcher's App in this process.

Requests are signed with the Ed25519 key of seed 00..1f (docs/withdrawals.md) and
produced to the requests topic; events are read back ``read_committed`` as the ledger
would; payments are checked on chain (balances, the hot wallet's nonce, anvil's txpool).
A background task mines a block every 0.2 s (anvil automines only blocks with a
transaction, and confirmations need more blocks).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from eth_keys.datatypes import PrivateKey
from eth_utils.address import to_checksum_address
from nacl.signing import SigningKey
from web3.contract import AsyncContract

from tests.support.kafka import read_all
from tests.support.services import AnvilFactory, KafkaService, ServiceManager
from tests.support.solidity import (
    Chain,
    Event,
    TopicReader,
    new_address,
    produce,
    scrape,
    wait_ready,
    watcher_config,
)
from watcher.app import App
from watcher.config import WatcherConfig, parse
from watcher.kafka.client import CHECKPOINT_PARTITION, checkpoint_topic, ensure_topics
from watcher.kafka.settled import settled_topic
from watcher.kafka.sink import read_last

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "watcher" / "schemas" /
                     "withdrawal-event.v1.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
REQUESTER = SigningKey(bytes(range(32)))
REQUESTER_PUB = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="  # golden, docs/withdrawals.md
OTHER_REQUESTER = SigningKey(bytes(range(1, 33)))
HOT_KEY = hashlib.sha256(b"wdrt e2e hot wallet").hexdigest()
HOT_KEY_ENV = "WDRT_E2E_HOT_KEY"
HOT_ADDRESS = to_checksum_address(PrivateKey(bytes.fromhex(HOT_KEY)).public_key.to_checksum_address())
ETH = 10**18
WAIT_S = 60.0
CONFIRMATIONS = 3
STUCK_BLOCKS = 3


def canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def signed_request(body: dict[str, Any], key: SigningKey = REQUESTER) -> bytes:
    sig = base64.b64encode(key.sign(canonical(body)).signature).decode()
    return json.dumps({**body, "signature": sig}).encode()


def withdrawals_section(stuck_blocks: int = STUCK_BLOCKS) -> dict[str, Any]:
    """The ``withdrawals`` part of the test config: the golden requester key, the hot key
    from an environment variable, ETH and TKN allow-listed."""
    return {
        "requesters": {"ledger": REQUESTER_PUB},
        "chains": {"eth": {
            "confirmations": CONFIRMATIONS, "stuck_blocks": stuck_blocks,
            "max_fee_per_gas": "300000000000", "max_priority_fee_per_gas": "3000000000",
            "hot_key": {"env": HOT_KEY_ENV},
            "assets": {"ETH": {"per_request_limit": str(5 * ETH), "daily_limit": str(12 * ETH),
                               "low_balance": str(ETH)},
                       "TKN": {"per_request_limit": "100000000", "daily_limit": "1000000000"}},
        }},
    }


@dataclass
class Env:
    chain: Chain
    token: AsyncContract
    cfg: WatcherConfig
    reader: TopicReader
    dead: TopicReader
    metrics: str
    mining: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[int] | None = None

    @property
    def bootstrap(self) -> str:
        return self.cfg.kafka.bootstrap_servers

    def alive(self) -> None:
        task = self.task
        if task is not None and task.done():
            exc = task.exception() if not task.cancelled() else None
            raise AssertionError(f"the watcher stopped by itself: {exc!r}") from exc

    async def request(self, *records: bytes, key: bytes | None = None) -> None:
        out = []
        for value in records:
            try:
                rid = json.loads(value).get("request_id")
            except (ValueError, AttributeError):
                rid = None
            out.append((key or (rid.encode() if isinstance(rid, str) else b"x"), value))
        await produce(self.bootstrap, self.cfg.kafka.topics.withdrawal_requests, out)

    async def events_of(self, rid: str, *, until: str, timeout_s: float = WAIT_S) -> list[Event]:
        def mine(evs: list[Event]) -> list[Event]:
            return [e for e in evs if e.get("request_id") == rid]
        await self.reader.wait_for(lambda evs: any(e["type"] == until for e in mine(evs)),
                                   f"{until} of {rid}", timeout_s, describe=describe,
                                   alive=self.alive)
        return mine(self.reader.events)

    async def nonce(self, tag: str = "latest") -> int:
        return int(await self.chain.rpc("eth_getTransactionCount", HOT_ADDRESS, tag), 16)

    async def pool_from_hot(self) -> list[Any]:
        content = await self.chain.rpc("txpool_content")
        found: list[Any] = []
        for section in ("pending", "queued"):
            for sender, txs in (content.get(section) or {}).items():
                if sender.lower() == HOT_ADDRESS.lower():
                    found.extend(txs.values())
        return found


async def read_last_value(cfg: WatcherConfig, name: str) -> bytes | None:
    record = await read_last(cfg.kafka, checkpoint_topic(cfg.kafka.topics, "eth"),
                             CHECKPOINT_PARTITION, name.encode())
    return record.value if record is not None else None


def describe(events: list[Event]) -> str:
    return "\n".join(f"  {e.get('type')} {e.get('request_id')} {e.get('reason', '')} "
                     f"{e.get('txid', '')}" for e in events[-40:]) or "  (nothing)"


async def miner(env: Env) -> None:
    while True:
        await env.mining.wait()
        with contextlib.suppress(Exception):
            await env.chain.mine(1)
        await asyncio.sleep(0.2)  # pacing a dev chain: one block per 0.2 s


@contextlib.asynccontextmanager
async def environment(kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    anvil = anvil_factory()
    chain = Chain(anvil.url)
    await chain.setup()
    token = await chain.deploy("TestToken", "Test Token", "TKN", 6)
    await chain.send_eth(HOT_ADDRESS, 100 * ETH)
    await chain.mint(token, HOT_ADDRESS, 10**12)
    uid = uuid.uuid4().hex[:10]
    port = services.free_port()
    raw = watcher_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid,
                         endpoints=[("anvil", anvil.url)], start_block=await chain.height(),
                         metrics_port=port,
                         tokens=[{"contract": str(token.address), "symbol": "TKN", "decimals": 6}],
                         confirmations={"ETH": 2, "TKN": 2})
    raw["withdrawals"] = withdrawals_section()
    monkeypatch.setenv(HOT_KEY_ENV, HOT_KEY)
    cfg = parse(raw, base_dir=tmp_path)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:  # three partitions, before ensure_topics would create it with the broker's default
        await admin.create_topics([NewTopic(cfg.kafka.topics.withdrawal_requests, 3, 1)])
    finally:
        await admin.close()
    await ensure_topics(cfg.kafka)
    reader = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.withdrawals)
    dead = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.dead_letter)
    await reader.start()
    await dead.start()
    env = Env(chain, token, cfg, reader, dead, f"http://127.0.0.1:{port}")
    env.mining.set()
    mining = asyncio.create_task(miner(env))
    stop = asyncio.Event()
    env.task = asyncio.create_task(App(cfg).run(stop))
    try:
        await wait_ready(env.metrics, env.alive)
        yield env
    finally:
        stop.set()
        mining.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(env.task, 20)
        await reader.stop()
        await dead.stop()


@pytest.fixture
async def env(kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    async with environment(kafka, anvil_factory, services, tmp_path, monkeypatch) as e:
        yield e


def body(rid: str, asset: str, to: str, amount: str, chain: str = "eth") -> dict[str, Any]:
    return {"request_id": rid, "chain": chain, "asset": asset, "to_address": to, "amount": amount}


async def test_eth_and_token_withdrawals_pay_exactly_and_confirm(env: Env) -> None:
    alice, bob = new_address("wdrt alice"), new_address("wdrt bob")
    await env.request(signed_request(body("w-eth-1", "ETH", alice, str(3 * ETH // 2))),
                      signed_request(body("w-tkn-1", "TKN", bob, "12345678")))
    eth = await env.events_of("w-eth-1", until="withdrawal.confirmed")
    tkn = await env.events_of("w-tkn-1", until="withdrawal.confirmed")
    for evs in (eth, tkn):
        assert [e["type"] for e in evs] == ["withdrawal.accepted", "withdrawal.broadcast",
                                            "withdrawal.confirmed"], describe(evs)
        for e in evs:
            VALIDATOR.validate({k: v for k, v in e.items() if not k.startswith("_")})
        assert evs[1]["txid"] == evs[2]["txid"]
        assert evs[2]["confirmations"] >= CONFIRMATIONS
        receipt = await env.chain.receipt(evs[2]["txid"])
        assert receipt is not None and receipt["status"] == "0x1"
        assert receipt["blockHash"].lower() == evs[2]["block_hash"]
        assert int(evs[2]["fee"]) == int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)
    # Exactly the requested amounts, to the requested addresses.
    assert await env.chain.w3.eth.get_balance(alice) == 3 * ETH // 2
    assert await env.token.functions.balanceOf(bob).call() == 12345678
    assert await env.token.functions.balanceOf(alice).call() == 0
    assert sorted([eth[2]["nonce"], tkn[2]["nonce"]]) == [0, 1]
    assert await env.nonce() == 2
    assert await scrape(env.metrics, "watcher_withdrawal_events_total", chain="eth",
                        type="withdrawal.confirmed") == 2
    assert await scrape(env.metrics, "watcher_hot_wallet_low_threshold", chain="eth",
                        asset="ETH") == float(ETH)


async def test_rejections_repeats_and_dead_letters_are_never_paid(env: Env) -> None:
    carol = new_address("wdrt carol")
    good = signed_request(body("w-ok", "ETH", carol, "1000"))
    unsigned = json.loads(signed_request(body("w-badsig", "ETH", carol, "1000"),
                                         OTHER_REQUESTER))
    bad_checksum = carol[:2] + carol[2:].swapcase() if carol[2:] != carol[2:].swapcase() else carol
    cases = {
        "w-malformed": ("malformed", json.dumps({"request_id": "w-malformed", "chain": "eth"}).encode()),
        "w-badsig": ("bad_signature", json.dumps(unsigned).encode()),
        "w-ok-dup": None,
        "w-chain": ("unknown_chain", signed_request(body("w-chain", "ETH", carol, "1", chain="tron"))),
        "w-asset": ("unknown_asset", signed_request(body("w-asset", "DOGE", carol, "1"))),
        "w-addr": ("invalid_address", signed_request(body("w-addr", "ETH", bad_checksum, "1"))),
        "w-amount": ("invalid_amount", signed_request(body("w-amount", "ETH", carol, "01"))),
        "w-limit": ("limit_exceeded", signed_request(body("w-limit", "ETH", carol, str(5 * ETH + 1)))),
    }
    # The rolling limit: 12 ETH a day; two of 5 ETH pass, the third does not: the last by
    # the records' own (timestamp, partition), whatever order the partitions are read in.
    day1 = signed_request(body("w-day-1", "ETH", carol, str(5 * ETH)))
    day2 = signed_request(body("w-day-2", "ETH", carol, str(5 * ETH)))
    day3 = signed_request(body("w-day-3", "ETH", carol, str(5 * ETH)))
    dup = signed_request(body("w-ok", "ETH", carol, "2000"))  # same id, other content
    await env.request(good)
    await env.events_of("w-ok", until="withdrawal.accepted")
    records = [v for c in cases.values() if c is not None for v in (c[1],)]
    await env.request(*records, dup, good, b"\xff not json", day1, day2, day3)
    await env.events_of("w-ok", until="withdrawal.confirmed")

    def day_settled(evs: list[Event]) -> bool:
        done = {e["request_id"] for e in evs if e["type"] in ("withdrawal.confirmed",
                                                               "withdrawal.rejected")}
        return {"w-day-1", "w-day-2", "w-day-3"} <= done
    await env.reader.wait_for(day_settled, "the three 5 ETH requests settled", WAIT_S,
                              describe=describe, alive=env.alive)
    evs = await env.reader.read_to_end()
    rejected = {e["request_id"]: e for e in evs if e["type"] == "withdrawal.rejected"}
    for rid, case in cases.items():
        if case is None:
            continue
        reason, _ = case
        if reason == "malformed":
            assert any(e["reason"] == "malformed" for e in rejected.values()), describe(evs)
            continue
        assert rejected[rid]["reason"] == reason, describe(evs)
        assert rejected[rid]["message"]
    assert rejected["w-ok"]["reason"] == "duplicate"
    day_refused = [rid for rid in ("w-day-1", "w-day-2", "w-day-3") if rid in rejected]
    assert len(day_refused) == 1, describe(evs)
    requests = [r for r in await read_all(env.cfg.kafka, env.cfg.kafka.topics.withdrawal_requests)
                if r.key in (b"w-day-1", b"w-day-2", b"w-day-3")]
    last = max(requests, key=lambda r: (r.timestamp_ms, r.partition))
    assert day_refused == [(last.key or b"").decode()], [(r.key, r.timestamp_ms, r.partition)
                                                         for r in requests]
    assert rejected[day_refused[0]]["reason"] == "limit_exceeded"
    assert "rolling 24-hour limit" in rejected[day_refused[0]]["message"]
    for e in evs:
        VALIDATOR.validate({k: v for k, v in e.items() if not k.startswith("_")})
    # The exact repeat added nothing: one accepted, one broadcast, one confirmed for w-ok.
    ok_types = [e["type"] for e in evs if e["request_id"] == "w-ok"]
    assert ok_types.count("withdrawal.accepted") == 1 and ok_types.count("withdrawal.confirmed") == 1
    # Only the three valid requests were ever signed: nonces 0..2, nothing else in the pool.
    assert await env.nonce("pending") == 3
    assert await env.pool_from_hot() == []
    assert await env.chain.w3.eth.get_balance(carol) == 1000 + 10 * ETH
    letters = await env.dead.wait_for(lambda d: len(d) >= 1, "the dead letter", WAIT_S)
    assert letters[0]["source_topic"] == env.cfg.kafka.topics.withdrawal_requests
    assert letters[0]["value_encoding"] == "base64"
    # Refusals after authentication are settled records on the chain's compacted topic
    # (the duplicate rule's memory), not digests in the live checkpoint.
    settled = {(r.key or b"").decode(): json.loads(r.value or b"") for r in await read_all(
        env.cfg.kafka, settled_topic(env.cfg.kafka.topics.checkpoints, "eth"))}
    for rid in ("w-asset", "w-addr", "w-amount", "w-limit", day_refused[0]):
        assert settled[rid]["outcome"] == "rejected" and settled[rid]["chain"] == "eth", settled
    assert "w-badsig" not in settled and "w-chain" not in settled  # never authenticated/claimed
    checkpoint = json.loads(await read_last_value(env.cfg, "withdrawals") or b"")
    assert checkpoint["version"] == 2 and "digests" not in checkpoint["book"]


async def test_stuck_payment_is_replaced_and_confirms_once(env: Env) -> None:
    dave = new_address("wdrt dave")
    env.mining.clear()
    await asyncio.sleep(0.5)  # let a block in progress finish
    await env.chain.rpc("evm_setAutomine", False)
    await env.request(signed_request(body("w-stuck", "ETH", dave, str(ETH))))
    first = (await env.events_of("w-stuck", until="withdrawal.broadcast"))[-1]
    # Blocks whose base fee is above the payment's fee cap: it cannot be mined.
    await env.chain.rpc("anvil_setNextBlockBaseFeePerGas", hex(100 * 10**9))
    for _ in range(STUCK_BLOCKS + 1):
        await env.chain.mine(1)
        await asyncio.sleep(0.3)  # one block per watcher round, so the stuck rule sees them
    assert await env.chain.receipt(first["txid"]) is None
    replaced = (await env.events_of("w-stuck", until="withdrawal.replaced"))[-1]
    assert replaced["replaces_txid"] == first["txid"]
    assert replaced["nonce"] == first["nonce"]
    assert int(replaced["fee"]) > int(first["fee"])
    await env.chain.rpc("evm_setAutomine", True)
    env.mining.set()
    evs = await env.events_of("w-stuck", until="withdrawal.confirmed")
    types = [e["type"] for e in evs]
    assert types[0] == "withdrawal.accepted" and types[1] == "withdrawal.broadcast"
    assert types.count("withdrawal.confirmed") == 1 and "withdrawal.replaced" in types
    confirmed = evs[-1]
    assert confirmed["txid"] in {e["txid"] for e in evs if e["type"] in ("withdrawal.broadcast",
                                                                          "withdrawal.replaced")}
    assert await env.chain.w3.eth.get_balance(dave) == ETH  # paid once
    assert await env.nonce() == 1
