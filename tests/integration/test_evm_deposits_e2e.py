"""End to end on EVM: a real anvil, real Kafka, the watcher's App run in this process.

Every test gets its own anvil (reorgs must not disturb other tests), its own topics
and transactional id prefix, and its own metrics port. Deposits are read back as a
downstream consumer would: ``read_committed``, from the beginning of the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from eth_utils.address import to_checksum_address
from web3.contract import AsyncContract

from tests.support.services import AnvilFactory, AnvilService, KafkaService, ServiceManager
from tests.support.solidity import (
    Chain,
    Event,
    Sent,
    TopicReader,
    http_get,
    log_index_of,
    new_address,
    produce,
    registration,
    scrape,
    summary,
    watcher_config,
)
from watcher.app import App
from watcher.config import WatcherConfig, parse
from watcher.events import event_id
from watcher.kafka.client import ensure_topics
from watcher.types import BlockHash, DepositEventType, DepositId

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "watcher" / "schemas" /
                     "deposit-event.v1.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
ORDER = {"deposit.pending": 0, "deposit.confirmed": 1, "deposit.reverted": 2}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
ETH = 10**18
WAIT_S = 30.0


# ---------------------------------------------------------------- the environment


@dataclass
class Env:
    anvil: AnvilService
    chain: Chain
    token: AsyncContract
    other_token: AsyncContract
    nft: AsyncContract
    forwarder: AsyncContract
    forwarder2: AsyncContract
    cfg: WatcherConfig
    reader: TopicReader
    metrics: str
    uid: str
    app: App | None = None
    task: asyncio.Task[int] | None = None

    @property
    def bootstrap(self) -> str:
        return self.cfg.kafka.bootstrap_servers

    def alive(self) -> None:
        """Raises if the in-process watcher has stopped on its own."""
        task = self.task
        if task is not None and task.done():
            exc = task.exception() if not task.cancelled() else None
            raise AssertionError(f"the watcher stopped by itself: "
                                 f"{task.result() if exc is None else repr(exc)}") from exc

    async def wait(self, predicate: Callable[[list[Event]], bool], what: str,
                   timeout_s: float = WAIT_S) -> list[Event]:
        return await self.reader.wait_for(predicate, what, timeout_s, alive=self.alive)

    async def wait_event(self, type_: str, did: str, block_hash: str | None = None,
                         timeout_s: float = WAIT_S) -> Event:
        def pick(events: list[Event]) -> list[Event]:
            return [e for e in events if e["type"] == type_ and e["deposit_id"] == did
                    and (block_hash is None or e["block_hash"] == block_hash)]
        await self.wait(lambda evs: bool(pick(evs)),
                        f"{type_} of {did}" + (f" in block {block_hash}" if block_hash else ""),
                        timeout_s)
        return pick(self.reader.events)[0]

    async def register(self, *entries: tuple[str, str | None]) -> None:
        await produce(self.bootstrap, self.cfg.kafka.topics.address_registrations,
                      [registration("eth", addr, label) for addr, label in entries])

    async def wait_watched(self, address: str) -> None:
        assert self.app is not None
        key = bytes.fromhex(address[2:])
        await poll_until(lambda: key in self.app.indexes["eth"] if self.app else False,
                         f"{address} to be in the watcher's index", alive=self.alive)

    async def wait_processed(self, timeout_s: float = WAIT_S) -> int:
        """Until the watcher has committed anvil's current tip (by hash); returns its height."""
        assert self.app is not None
        follower = self.app.followers["eth"]

        async def done() -> bool:
            height = await self.chain.height()
            state = follower.state
            tip = state.tip if state is not None else None
            return (tip is not None and tip.number == height and
                    tip.hash == await self.chain.block_hash_at(height))
        await poll_until_async(done, "the watcher to commit anvil's tip", timeout_s,
                               alive=self.alive)
        return await self.chain.height()


async def poll_until(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S,
                     alive: Callable[[], None] | None = None) -> None:
    async def acheck() -> bool:
        return check()
    await poll_until_async(acheck, what, timeout_s, alive)


async def poll_until_async(check: Callable[[], Awaitable[bool]], what: str,
                           timeout_s: float = WAIT_S,
                           alive: Callable[[], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await check():
        if alive is not None:
            alive()
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)  # polling: these states have no event to wait on


def token_entry(contract: AsyncContract, symbol: str, decimals: int) -> dict[str, Any]:
    return {"contract": str(contract.address), "symbol": symbol, "decimals": decimals}


async def make_env(kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
                   tmp_path: Path, *, confirmations: dict[str, int],
                   endpoints: Callable[[AnvilService], Awaitable[Sequence[tuple[str, str]]]]
                   | None = None,
                   file_entries: Sequence[tuple[str, str | None]] = ()) -> Env:
    anvil = anvil_factory()
    chain = Chain(anvil.url)
    await chain.setup()
    token = await chain.deploy("TestToken", "Test Token", "TKN", 6)
    other = await chain.deploy("TestToken", "Other Token", "OTH", 6)
    nft = await chain.deploy("NftLike")
    forwarder = await chain.deploy("Forwarder")
    forwarder2 = await chain.deploy("Forwarder")
    await chain.mint(token, chain.payer, 10**15)
    await chain.mint(token, str(forwarder.address), 10**15)
    await chain.mint(other, chain.payer, 10**15)

    uid = uuid.uuid4().hex[:10]
    addresses_file = None
    if file_entries:
        path = tmp_path / f"addresses-{uid}.yaml"
        path.write_text(yaml.safe_dump({"eth": [{"address": a, "label": label} if label else a
                                                for a, label in file_entries]}))
        addresses_file = str(path)
    port = services.free_port()
    raw = watcher_config(
        bootstrap_servers=kafka.bootstrap_servers, uid=uid,
        endpoints=await endpoints(anvil) if endpoints else [("anvil", anvil.url)],
        start_block=await chain.height(), metrics_port=port,
        # The ERC-721-shaped contract is allow-listed on purpose: its four-topic Transfer
        # must still be ignored. The other ERC-20 is not allow-listed.
        tokens=[token_entry(token, "TKN", 6), token_entry(nft, "NFT", 0)],
        confirmations=confirmations, addresses_file=addresses_file)
    cfg = parse(raw, base_dir=tmp_path)
    await ensure_topics(cfg.kafka)
    reader = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.deposits)
    await reader.start()
    return Env(anvil, chain, token, other, nft, forwarder, forwarder2, cfg, reader,
               f"http://127.0.0.1:{port}", uid)


@contextlib.asynccontextmanager
async def running(env: Env) -> AsyncIterator[App]:
    """The App in a task until the block ends; it must be ready within 60 s and stop in 20."""
    app = App(env.cfg)
    stop = asyncio.Event()
    env.app, env.task = app, asyncio.create_task(app.run(stop), name=f"app-{env.uid}")

    async def ready() -> bool:
        try:
            status, _ = await http_get(f"{env.metrics}/readyz", 2.0)
        except (OSError, TimeoutError):  # not listening yet
            return False
        return status == 200
    failed = False
    try:
        await poll_until_async(ready, "/readyz to answer 200", 60.0, alive=env.alive)
        yield app
    except BaseException:
        failed = True
        raise
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(env.task), 20.0)
        except TimeoutError:
            env.task.cancel()
            with contextlib.suppress(BaseException):
                await env.task
            if not failed:
                raise AssertionError("App.run did not return within 20 s of the stop event "
                                     "being set") from None
        except Exception:
            if not failed:
                raise
        finally:
            await env.reader.stop()


@pytest.fixture
def env_factory(kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
                tmp_path: Path) -> Callable[..., Awaitable[Env]]:
    async def build(**kwargs: Any) -> Env:
        return await make_env(kafka, anvil_factory, services, tmp_path, **kwargs)
    return build


# ---------------------------------------------------------------- checks


def did_of(sent: Sent, locator: str) -> str:
    return f"eth:{sent.txid}:{locator}"


def check_stream(events: Sequence[Event], keys: Sequence[bytes | None]) -> None:
    """Contract rules over the whole committed stream: schema, ids, keys, order, partition."""
    assert len(keys) == len(events)
    seen_ids: set[str] = set()
    per_fact: dict[tuple[str, str], list[str]] = defaultdict(list)
    partition_of: dict[str, int] = {}
    for ev, key in zip(events, keys, strict=True):
        body = {k: v for k, v in ev.items() if not k.startswith("_")}
        errors = sorted(VALIDATOR.iter_errors(body), key=str)
        assert not errors, f"event does not match deposit-event.v1.json: {errors[0]}\n{body}"
        assert ev["schema_version"] == 1 and ev["chain"] == "eth"
        assert RFC3339_Z.match(ev["emitted_at"]), ev["emitted_at"]
        assert key == ev["deposit_id"].encode(), f"record key {key!r} is not the deposit_id"
        assert ev["event_id"] not in seen_ids, f"duplicate event_id {ev['event_id']}: {ev}"
        seen_ids.add(ev["event_id"])
        assert ev["event_id"] == event_id(DepositEventType(ev["type"]), DepositId(ev["deposit_id"]),
                                          BlockHash(ev["block_hash"])), \
            f"event_id is not derived from (type, deposit_id, block_hash): {ev}"
        assert partition_of.setdefault(ev["deposit_id"], ev["_partition"]) == ev["_partition"], \
            f"events of {ev['deposit_id']} on two partitions"
        per_fact[(ev["deposit_id"], ev["block_hash"])].append(ev["type"])
    for (did, bh), types in per_fact.items():
        assert types == sorted(types, key=ORDER.__getitem__) and len(set(types)) == len(types), \
            f"{did} in {bh}: events {types} are not at most one each in pending<confirmed<reverted"


def check_deposit(ev: Event, *, type_: str, sent: Sent, locator: str, asset: str,
                  token_contract: str | None, address: str, amount: int, decimals: int,
                  required: int, label: str | None) -> None:
    expected = {
        "type": type_, "deposit_id": did_of(sent, locator), "asset": asset,
        "token_contract": token_contract, "address": to_checksum_address(address),
        "amount": str(amount), "decimals": decimals, "txid": sent.txid,
        "block_number": sent.block_number, "block_hash": sent.block_hash,
        "required_confirmations": required, "label": label,
    }
    got = {k: ev.get(k) for k in expected}
    assert got == expected, f"event differs:\n got      {got}\n expected {expected}"
    if type_ == "deposit.pending":
        assert ev["confirmations"] == 1, f"pending seen at the tip has 1 confirmation: {ev}"
    elif type_ == "deposit.confirmed":
        assert ev["confirmations"] >= required, ev


# ---------------------------------------------------------------- 1. the lifecycle


async def test_deposits_pending_then_confirmed(env_factory: Callable[..., Awaitable[Env]]) -> None:
    """ETH, the allow-listed token, internal ETH (trace 0 and 0.0) and native+token in one tx
    reach registered (before and after start) and file-listed addresses as pending, then
    confirmed; unwatched addresses, a token that is not allow-listed, an ERC-721-shaped
    Transfer and a zero-amount transfer give nothing."""
    uid = uuid.uuid4().hex
    alice, bob, carol = (new_address(f"{uid}-{n}") for n in ("alice", "bob", "carol"))
    stranger = new_address(f"{uid}-stranger")
    env = await env_factory(confirmations={"ETH": 3, "TKN": 2}, file_entries=[(carol, "carol")])
    await env.register((alice, "alice"))  # before the start
    c, tkn = env.chain, str(env.token.address)
    rules = {"ETH": 3, "TKN": 2}

    async with running(env):
        await env.register((bob, "bob"))  # after the start
        await env.wait_watched(bob)

        cases: list[dict[str, Any]] = []

        async def expect(sent: Sent, locator: str, asset: str, address: str, amount: int,
                         label: str | None) -> None:
            case = {"sent": sent, "locator": locator, "asset": asset,
                    "token_contract": tkn if asset == "TKN" else None, "address": address,
                    "amount": amount, "decimals": 6 if asset == "TKN" else 18,
                    "required": rules[asset], "label": label}
            cases.append(case)

        s = await c.send_eth(alice, 3 * ETH // 2)
        await expect(s, "tx", "ETH", alice, 3 * ETH // 2, "alice")
        await env.wait_event("deposit.pending", did_of(s, "tx"))

        s = await c.token_transfer(env.token, bob, 1_234_567)
        await expect(s, f"log:{log_index_of(s, tkn)}", "TKN", bob, 1_234_567, "bob")
        await env.wait_event("deposit.pending", did_of(s, f"log:{log_index_of(s, tkn)}"))

        s = await c.forward(env.forwarder, carol, 777)
        await expect(s, "trace:0", "ETH", carol, 777, "carol")
        await env.wait_event("deposit.pending", did_of(s, "trace:0"))

        s = await c.forward_via(env.forwarder, env.forwarder2, alice, 888)
        await expect(s, "trace:0.0", "ETH", alice, 888, "alice")
        await env.wait_event("deposit.pending", did_of(s, "trace:0.0"))

        both = await c.forward_with_token(env.forwarder, bob, 999, env.token, 4242)
        both_log = f"log:{log_index_of(both, tkn)}"
        await expect(both, "trace:0", "ETH", bob, 999, "bob")
        await expect(both, both_log, "TKN", bob, 4242, "bob")
        await env.wait_event("deposit.pending", did_of(both, "trace:0"))
        await env.wait_event("deposit.pending", did_of(both, both_log))

        # Nothing of these may appear.
        ignored = [
            await c.send_eth(stranger, ETH),
            await c.token_transfer(env.token, stranger, 500),
            await c.token_transfer(env.other_token, alice, 600),  # not allow-listed
            await c.call(env.nft, "mint", alice, 7),  # four topics
            await c.token_transfer(env.token, alice, 0),  # zero amount
            await c.forward(env.forwarder, stranger, 5),
        ]
        await c.mine(3)
        for case in cases:
            await env.wait_event("deposit.confirmed", did_of(case["sent"], case["locator"]))
        await env.wait_processed()
        events = await env.reader.read_to_end()

    check_stream(events, env.reader.keys)
    for case in cases:
        did = did_of(case["sent"], case["locator"])
        mine = [e for e in events if e["deposit_id"] == did]
        assert [e["type"] for e in mine] == ["deposit.pending", "deposit.confirmed"], \
            f"{did}: {summary(mine)}"
        for ev in mine:
            check_deposit(ev, type_=ev["type"], sent=case["sent"], locator=case["locator"],
                          asset=case["asset"], token_contract=case["token_contract"],
                          address=case["address"], amount=case["amount"],
                          decimals=case["decimals"], required=case["required"],
                          label=case["label"])
    assert mine[0]["from_address"] == to_checksum_address(str(env.forwarder.address)), \
        "the token transfer of the forwarder comes from the forwarder"
    expected_ids = {did_of(cs["sent"], cs["locator"]) for cs in cases}
    unexpected = [e for e in events if e["deposit_id"] not in expected_ids]
    assert not unexpected, f"deposits that must be ignored were published:\n{summary(unexpected)}"
    ignored_txids = {s.txid for s in ignored}
    assert not [e for e in events if e["txid"] in ignored_txids]


# ---------------------------------------------------------------- 2. reorgs


async def test_reorgs_revert_and_remine(env_factory: Callable[..., Awaitable[Env]]) -> None:
    """A reorg removing a pending deposit's block reverts it, and the re-mined transaction
    starts a new lifecycle under the new block hash; a reorg deeper than the confirmations
    reverts a confirmed deposit (previous_type confirmed, alert metric +1); a dropped
    transaction is reverted and nothing more."""
    uid = uuid.uuid4().hex
    alice = new_address(f"{uid}-alice")
    env = await env_factory(confirmations={"ETH": 3, "TKN": 2})
    await env.register((alice, "alice"))
    c, tkn = env.chain, str(env.token.address)
    metric = "watcher_deposits_reverted_after_confirmation_total"

    async with running(env):
        # a) pending, reorged out, re-mined one block lower
        await c.mine(2)
        s = await c.send_eth(alice, 2 * ETH)
        did = did_of(s, "tx")
        await env.wait_event("deposit.pending", did, s.block_hash)
        raw = await c.raw_transaction(s.txid)
        await c.reorg(2, [(raw, 0)])
        moved = await c.wait_mined(s.txid)
        assert moved.block_number == s.block_number - 1 and moved.block_hash != s.block_hash
        rev = await env.wait_event("deposit.reverted", did, s.block_hash)
        assert rev["previous_type"] == "deposit.pending", rev
        check_deposit(rev, type_="deposit.reverted", sent=s, locator="tx", asset="ETH",
                      token_contract=None, address=alice, amount=2 * ETH, decimals=18,
                      required=3, label="alice")
        again = await env.wait_event("deposit.pending", did, moved.block_hash)
        assert again["confirmations"] == 2 and again["block_number"] == moved.block_number
        await c.mine(2)
        conf = await env.wait_event("deposit.confirmed", did, moved.block_hash)
        check_deposit(conf, type_="deposit.confirmed", sent=moved, locator="tx", asset="ETH",
                      token_contract=None, address=alice, amount=2 * ETH, decimals=18,
                      required=3, label="alice")

        # b) confirmed (token: 2), then a reorg of depth 3 > 2
        await c.mine(3)
        t = await c.token_transfer(env.token, alice, 31_337)
        tdid = did_of(t, f"log:{log_index_of(t, tkn)}")
        await env.wait_event("deposit.pending", tdid, t.block_hash)
        await c.mine(1)
        await env.wait_event("deposit.confirmed", tdid, t.block_hash)
        before = await scrape(env.metrics, metric, chain="eth") or 0.0
        raw = await c.raw_transaction(t.txid)
        await c.reorg(3, [(raw, 0)])
        t2 = await c.wait_mined(t.txid)
        assert t2.block_hash != t.block_hash
        rev = await env.wait_event("deposit.reverted", tdid, t.block_hash)
        assert rev["previous_type"] == "deposit.confirmed", rev
        t2did = did_of(t2, f"log:{log_index_of(t2, tkn)}")
        # three confirmations at once on the new branch: confirmed without pending
        new = await env.wait_event("deposit.confirmed", t2did, t2.block_hash)
        assert new["amount"] == "31337" and new["token_contract"] == tkn

        async def counted() -> bool:
            return (await scrape(env.metrics, metric, chain="eth") or 0.0) == before + 1
        await poll_until_async(counted, f"{metric} to grow by one (from {before})",
                               alive=env.alive)

        # c) dropped by the reorg, never re-mined
        await c.mine(3)
        d = await c.send_eth(alice, 12345)
        ddid = did_of(d, "tx")
        await env.wait_event("deposit.pending", ddid, d.block_hash)
        await c.reorg(1, [])
        assert await c.receipt(d.txid) is None, "anvil_reorg without txs drops them"
        rev = await env.wait_event("deposit.reverted", ddid, d.block_hash)
        assert rev["previous_type"] == "deposit.pending"
        await c.mine(4)
        await env.wait_processed()
        events = await env.reader.read_to_end()

    check_stream(events, env.reader.keys)
    by_fact = [(e["type"], e["block_hash"]) for e in events if e["deposit_id"] == did]
    assert by_fact == [("deposit.pending", s.block_hash), ("deposit.reverted", s.block_hash),
                       ("deposit.pending", moved.block_hash),
                       ("deposit.confirmed", moved.block_hash)], summary(events)
    assert [e["type"] for e in events if e["deposit_id"] == ddid] == [
        "deposit.pending", "deposit.reverted"], summary(events)
    stale = [e for e in events if e["type"] == "deposit.confirmed"
             and e["block_hash"] in {s.block_hash, d.block_hash}]
    assert not stale, f"confirmed in a block that left the chain:\n{summary(stale)}"


# ---------------------------------------------------------------- 3. two endpoints


class TcpProxy:
    """Forwards loopback TCP connections to ``target_port``; stop() cuts them all at once."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.requests = 0
        self.contents_requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if upstream:
                    self.requests += data.count(b"POST ")
                    self.contents_requests += data.count(b"eth_getBlockByHash")
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer, True),
                             self._pipe(up_reader, writer, False))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()


async def test_second_endpoint_takes_over(env_factory: Callable[..., Awaitable[Env]]) -> None:
    """Endpoint A (a proxy to anvil) dies mid-run; B (anvil itself) carries on: every
    deposit before and after is confirmed exactly once and /readyz never stops saying 200."""
    uid = uuid.uuid4().hex
    alice = new_address(f"{uid}-alice")
    proxies: list[TcpProxy] = []

    async def endpoints(anvil: AnvilService) -> list[tuple[str, str]]:
        proxy = TcpProxy(anvil.port)
        await proxy.start()
        proxies.append(proxy)
        return [("proxy", f"http://127.0.0.1:{proxy.port}"), ("direct", anvil.url)]

    env = await env_factory(confirmations={"ETH": 3, "TKN": 2}, endpoints=endpoints)
    (proxy,) = proxies
    await env.register((alice, None))
    c = env.chain
    readyz: list[int] = []

    async def watch_readyz() -> None:
        while True:
            try:
                status, _ = await http_get(f"{env.metrics}/readyz", 2.0)
            except (OSError, TimeoutError):
                status = -1
            readyz.append(status)
            await asyncio.sleep(0.1)

    sent: list[Sent] = []
    async with running(env):
        sampler = asyncio.create_task(watch_readyz())
        try:
            for i in range(3):
                s = await c.send_eth(alice, 1000 + i)
                sent.append(s)
                await env.wait_event("deposit.pending", did_of(s, "tx"))
            in_sync = await scrape(env.metrics, "watcher_endpoint_in_sync", chain="eth",
                                   endpoint="proxy")
            assert in_sync == 1, f"endpoint A should be in sync before it dies, got {in_sync}"
            assert proxy.contents_requests > 0, "endpoint A (first, in sync) served no blocks"
            await proxy.stop()
            for i in range(3):
                s = await c.send_eth(alice, 2000 + i)
                sent.append(s)
                await env.wait_event("deposit.pending", did_of(s, "tx"))
            await c.mine(3)
            for s in sent:
                await env.wait_event("deposit.confirmed", did_of(s, "tx"))
            await env.wait_processed()
            events = await env.reader.read_to_end()
            out = await scrape(env.metrics, "watcher_endpoint_in_sync", chain="eth",
                               endpoint="proxy")
            assert out == 0, f"the dead endpoint A is still reported in sync ({out})"
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            await proxy.stop()

    check_stream(events, env.reader.keys)
    for s in sent:
        types = [e["type"] for e in events if e["deposit_id"] == did_of(s, "tx")]
        assert types == ["deposit.pending", "deposit.confirmed"], f"{s.txid}: {types}"
    assert len(events) == 2 * len(sent), summary(events)
    bad = [st for st in readyz if st != 200]
    assert readyz and not bad, f"/readyz answered {bad} during the failover ({len(readyz)} probes)"


# ---------------------------------------------------------------- 4. health and metrics


async def test_ready_and_processed_height(env_factory: Callable[..., Awaitable[Env]]) -> None:
    """/healthz and /readyz answer 200 while following; watcher_processed_height{chain="eth"}
    equals anvil's height after catching up, twice (so a stale value cannot pass)."""
    env = await env_factory(confirmations={"ETH": 3, "TKN": 2})
    async with running(env) as app:
        for blocks in (7, 11):
            await env.chain.mine(blocks)
            height = await env.wait_processed()

            async def at_height(h: int = height) -> bool:
                return await scrape(env.metrics, "watcher_processed_height", chain="eth") == h
            await poll_until_async(at_height, f"watcher_processed_height == {height}",
                                   alive=env.alive)
            assert app.followers["eth"].status.processed_height == height
            for path in ("/healthz", "/readyz"):
                status, body = await http_get(f"{env.metrics}{path}")
                assert status == 200, f"{path} answered {status}: {body}"
            _, body = await http_get(f"{env.metrics}/readyz")
            assert json.loads(body) == {"ready": True, "reasons": [],
                                        "endpoints": {"eth": {"anvil": "alive"}}}
