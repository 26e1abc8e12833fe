"""The withdrawal runner with fakes: routing, commit-before-broadcast, retries, restarts.

The node, the sink and the requests topic are fakes (in memory); the book, intake,
signing and the runner are the real ones.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest
from eth_keys.datatypes import PrivateKey
from nacl.signing import SigningKey

from chains.evm.tx import txid_of
from watcher.config import parse
from watcher.core.withdrawals import BroadcastOutcome, Spend
from watcher.errors import ChainError, ErrorKind, SinkError
from watcher.kafka.client import Consumed
from watcher.ports import HotBlock, OutRecord
from watcher.types import Address, BlockHash, ChainHead, ChainId, TxId
from watcher.withdrawals.policy import intake_policy
from watcher.withdrawals.runtime import CHECKPOINT_NAME, RunnerTopics, WithdrawalRunner, route
from watcher.withdrawals.signer import HotKeySigner

REQUESTER = SigningKey(bytes(range(32)))
HOT_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
HOT_ADDRESS = PrivateKey(HOT_KEY).public_key.to_checksum_address()
TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def raw_config() -> dict[str, Any]:
    chain = {"family": "evm", "chain_id": 31337, "endpoints": [{"name": "n", "url": "http://127.0.0.1:1"}],
             "native_asset": {"symbol": "ETH", "decimals": 18}, "confirmations": {"ETH": 2},
             "finality": {"mode": "depth", "depth": 5}, "reorg_window": 16}
    return {
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "transactional_id_prefix": "t"},
        "chains": {"eth": chain, "arb": {**chain, "chain_id": 42161}},
        "withdrawals": {
            "requesters": {"ledger": base64.b64encode(bytes(REQUESTER.verify_key)).decode()},
            "chains": {name: {"confirmations": 2, "stuck_blocks": 3, "max_fee_per_gas": "100000000000",
                              "max_priority_fee_per_gas": "2000000000", "hot_key": {"env": "X"},
                              "assets": {"ETH": {"per_request_limit": "5000",
                                                 "daily_limit": "100000"}}}
                       for name in ("eth", "arb")},
        },
    }


def request(rid: str, amount: str = "1000", chain: str = "eth") -> bytes:
    body = {"request_id": rid, "chain": chain, "asset": "ETH", "to_address": TO, "amount": amount}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({**body, "signature": base64.b64encode(REQUESTER.sign(canonical).signature)
                       .decode()}).encode()


def h(n: int, fork: str = "a") -> BlockHash:
    return BlockHash("0x" + f"{fork}{n:063x}"[-64:])


class FakeNode:
    def __init__(self) -> None:
        self.height = 10
        self.blocks: dict[int, HotBlock] = {n: HotBlock(n, h(n), h(n - 1), ()) for n in range(11)}
        self.sent: list[bytes] = []
        self.fail_fees = 0
        self.on_send: Any = None
        self.pool: list[bytes] = []
        self.native = 10**18

    def mine(self, include: bool = True) -> None:
        n = self.height + 1
        spends: list[Spend] = []
        if include:
            for raw in self.pool:
                nonce = len([b for b in self.blocks.values() for _ in b.spends])
                spends.append(Spend(f"nonce:{nonce}", txid_of(raw), fee_paid=21000))
            self.pool = []
        self.blocks[n] = HotBlock(n, h(n), h(n - 1), tuple(spends))
        self.height = n

    async def head(self) -> ChainHead:
        return ChainHead(self.height, self.blocks[self.height].hash)

    async def block(self, number: int) -> HotBlock | None:
        return self.blocks.get(number)

    async def send_raw(self, raw: bytes, txid: TxId) -> BroadcastOutcome:
        if self.on_send is not None:
            self.on_send(raw)
        self.sent.append(raw)
        if raw not in self.pool:
            self.pool.append(raw)
        return BroadcastOutcome.OK

    async def nonce_counts(self) -> tuple[int, int]:
        mined = sum(len(b.spends) for b in self.blocks.values())
        return mined, mined + len(self.pool)

    async def balances(self, tokens: Sequence[Address]) -> tuple[int, dict[Address, int]]:
        return self.native, {}

    async def fee_quote(self) -> tuple[int, int]:
        if self.fail_fees:
            self.fail_fees -= 1
            raise ChainError(ErrorKind.RETRIABLE, "node away")
        return 10**9, 10**9


class FakeSink:
    def __init__(self) -> None:
        self.commits: list[tuple[list[OutRecord], bytes]] = []
        self.fail_next = False

    async def start(self) -> None:
        pass

    async def load_checkpoint(self, name: str) -> bytes | None:
        assert name == CHECKPOINT_NAME
        return self.commits[-1][1] if self.commits else None

    async def commit(self, records: Sequence[OutRecord], checkpoint_name: str, checkpoint: bytes) -> None:
        if self.fail_next:
            self.fail_next = False
            raise SinkError(ErrorKind.RETRIABLE, "broker away")
        self.commits.append((list(records), checkpoint))

    async def stop(self) -> None:
        pass

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for recs, _ in self.commits for r in recs
                if r.value and r.topic == "out"]

    def settled(self) -> dict[bytes, bytes | None]:
        return {r.key: r.value for recs, _ in self.commits for r in recs if r.topic == SETTLED}


SETTLED = "cp.settled"


class FakeSettled:
    """The settled-records topic: what the sink committed to it."""

    topic = SETTLED

    def __init__(self, sink: FakeSink) -> None:
        self.sink = sink
        self.ensured = 0

    async def ensure(self) -> None:
        self.ensured += 1

    async def batches(self) -> AsyncIterator[list[tuple[bytes | None, bytes | None]]]:
        yield list(self.sink.settled().items())


class FakeRequests:
    def __init__(self) -> None:
        self.records: list[Consumed] = []
        self.position = 0

    def add(self, value: bytes | None, partition: int = 0, ts: int = 1_700_000_000_000) -> None:
        offset = sum(1 for r in self.records if r.partition == partition)
        self.records.append(Consumed("req", partition, offset, b"k", value, ts, ()))

    async def start(self, partitions: Sequence[int] | None = None) -> list[int]:
        return [0, 1]

    async def seek_to_beginning(self) -> None:
        self.position = 0

    def seek(self, partition: int, offset: int) -> None:
        # One cursor over the list: enough for these tests, which seek to what was committed.
        done = [i for i, r in enumerate(self.records) if r.partition == partition and r.offset < offset]
        self.position = max(self.position, max(done, default=-1) + 1)

    async def fetch(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        out = self.records[self.position:self.position + (max_records or len(self.records))]
        self.position += len(out)
        return out

    async def behind(self) -> frozenset[int]:
        return frozenset(r.partition for r in self.records[self.position:])

    async def stop(self) -> None:
        pass


class DeadLetters:
    def __init__(self) -> None:
        self.written: list[tuple[int, int, str]] = []

    async def write(self, *, source: str, source_topic: str, partition: int, offset: int,
                    key: bytes | None, value: bytes | None, error: str) -> None:
        self.written.append((partition, offset, error))


def runner(chain: str, node: FakeNode, sink: FakeSink, reqs: FakeRequests,
           dead: DeadLetters | None = None, daily_limit: str = "100000",
           clock: Any = None) -> WithdrawalRunner:
    raw = raw_config()
    for c in raw["withdrawals"]["chains"].values():
        c["assets"]["ETH"]["daily_limit"] = daily_limit
    cfg = parse(raw)
    assert cfg.withdrawals is not None
    from chains.evm.adapter import EvmAddressCodec

    codecs = {ChainId("eth"): EvmAddressCodec(), ChainId("arb"): EvmAddressCodec()}
    policy = intake_policy(cfg.withdrawals, cfg.chains, codecs)
    return WithdrawalRunner(chain=cfg.chains[ChainId(chain)], cw=cfg.withdrawals.chains[ChainId(chain)],
                            policy=policy, primary=ChainId("arb"), topics=RunnerTopics("req", "out"),
                            signer=HotKeySigner("t", HOT_KEY), node=node, sink=sink, requests=reqs,
                            dead_letters=dead or DeadLetters(), settled=FakeSettled(sink),
                            **({} if clock is None else {"clock": clock}))


@pytest.mark.parametrize(("value", "expected"), [
    (b'{"chain": "eth"}', "eth"),
    (b'{"chain": "arb", "x": 1}', "arb"),
    (b'{"chain": "tron"}', "arb"),       # no withdrawals there: the primary judges it
    (b'{"chain": 5}', "arb"),
    (b'["eth"]', "arb"),
    (b"\xff not json", "arb"),
    (None, "arb"),
])
def test_route(value: bytes | None, expected: str) -> None:
    assert route(value, frozenset({"eth", "arb"}), ChainId("arb")) == expected


async def test_signed_bytes_are_committed_before_they_are_sent() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)

    def check_committed(raw: bytes) -> None:
        last = orjson.loads(sink.commits[-1][1])
        attempts = [a for w in last["book"]["withdrawals"] for a in w["attempts"]]
        assert raw.hex() in [a[1] for a in attempts], "broadcast before its bytes were committed"
    node.on_send = check_committed
    from watcher.runtime.follower import FollowerStatus
    r.status = FollowerStatus()  # the app hands the runner its chain's status
    await r.start()
    reqs.add(request("w-1"))
    await r.step()
    assert len(node.sent) == 1
    types = [e["type"] for e in sink.events()]
    assert types == ["withdrawal.accepted", "withdrawal.broadcast"]
    assert r.status.pending_withdrawals == 1  # what `watcher status` shows as PAYING
    state = orjson.loads(sink.commits[-1][1])
    assert state["offsets"] == {"0": 1}
    for _ in range(2):
        node.mine()
        await r.step()
    confirmed = [e for e in sink.events() if e["type"] == "withdrawal.confirmed"]
    assert len(confirmed) == 1 and confirmed[0]["txid"] == txid_of(node.sent[0])
    assert confirmed[0]["fee"] == "21000" and confirmed[0]["nonce"] == 0
    assert r.status.pending_withdrawals == 0


async def test_a_record_for_another_chain_only_moves_the_offset() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)
    await r.start()
    reqs.add(request("w-arb", chain="arb"))
    reqs.add(b"not json", partition=1)  # the primary's (arb) to dead-letter, not eth's
    await r.step()
    assert sink.events() == [] and node.sent == []
    assert orjson.loads(sink.commits[-1][1])["offsets"] == {"0": 1, "1": 1}


async def test_the_primary_dead_letters_and_rejects_what_no_chain_claims() -> None:
    node, sink, reqs, dead = FakeNode(), FakeSink(), FakeRequests(), DeadLetters()
    r = runner("arb", node, sink, reqs, dead)
    await r.start()
    reqs.add(b"not json")
    reqs.add(request("w-tron", chain="tron"))
    await r.step()
    assert dead.written == [(0, 0, "not JSON: JSONDecodeError")]
    assert [(e["type"], e["reason"]) for e in sink.events()] == [("withdrawal.rejected", "unknown_chain")]
    assert node.sent == []


async def test_a_node_failure_postpones_the_signature_to_the_next_round() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    node.fail_fees = 2  # at intake, and again at the step's chain round
    r = runner("eth", node, sink, reqs)
    await r.start()
    reqs.add(request("w-1"))
    await r.step()
    # Bound (nonce 0, committed) but not signed: nothing sent yet, no broadcast event.
    assert node.sent == []
    assert [e["type"] for e in sink.events()] == ["withdrawal.accepted"]
    await r.step()
    assert len(node.sent) == 1
    assert [e["type"] for e in sink.events()] == ["withdrawal.accepted", "withdrawal.broadcast"]


async def test_a_restart_sends_the_recorded_bytes_again_and_no_event_twice() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)
    await r.start()
    reqs.add(request("w-1"))
    await r.step()
    first = node.sent[0]
    node.pool.clear()  # the node forgot it (restarted)
    again = runner("eth", node, sink, reqs)
    reqs.position = 0
    await again.start()
    await again.step()
    assert node.sent[-1] == first
    assert [e["type"] for e in sink.events()].count("withdrawal.accepted") == 1
    assert [e["type"] for e in sink.events()].count("withdrawal.broadcast") == 1


async def test_a_failed_commit_goes_back_to_the_checkpoint() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)
    await r.start()
    reqs.add(request("w-1"))
    sink.fail_next = True
    with pytest.raises(SinkError):
        await r.step()
    assert node.sent == []  # the commit before the broadcast failed: nothing sent
    await r._reload()
    await r.step()
    assert [e["type"] for e in sink.events()] == ["withdrawal.accepted", "withdrawal.broadcast"]
    assert len(node.sent) == 1


async def test_a_request_the_wallet_cannot_fund_waits_then_is_paid() -> None:
    from watcher.metrics import REGISTRY

    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    # 1000 wei plus 21000 gas at the 100 gwei cap is needed; one wei short of it.
    node.native = 1000 + 21_000 * 100 * 10**9 - 1
    r = runner("eth", node, sink, reqs)
    await r.start()
    reqs.add(request("w-1"))
    await r.step()
    await r.step()
    assert node.sent == []
    assert [e["type"] for e in sink.events()] == ["withdrawal.accepted"]
    assert REGISTRY.get_sample_value("watcher_withdrawals_waiting_funds",
                                     {"chain": "eth", "asset": "ETH"}) == 1
    node.native += 1
    await r.step()
    assert len(node.sent) == 1
    assert REGISTRY.get_sample_value("watcher_withdrawals_waiting_funds",
                                     {"chain": "eth", "asset": "ETH"}) == 0


async def test_a_nonce_used_by_another_sender_is_rebound_only_at_finality_and_paid_once() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)
    await r.start()
    reqs.add(request("w-1"))
    await r.step()
    ours = node.sent[0]
    # Another holder of the hot key spends nonce 0 first; our payment can never be mined.
    node.pool.clear()
    n = node.height + 1
    foreign = TxId("0x" + "f" * 64)
    node.blocks[n] = HotBlock(n, h(n), h(n - 1), (Spend("nonce:0", foreign, fee_paid=1),))
    node.height = n
    await r.step()
    for _ in range(3):  # below finality (depth 5): not re-bound yet, nothing else signed
        node.mine(include=False)
        await r.step()
    assert node.sent == [ours]
    for _ in range(3):
        node.mine(include=False)
        await r.step()
    assert len(node.sent) == 2 and node.sent[1] != ours
    state = orjson.loads(sink.commits[-1][1])
    (w,) = state["book"]["withdrawals"]
    assert w["binding"] == {"nonce": 1} and w["epoch"] == 1
    for _ in range(2):
        node.mine()
        await r.step()
    confirmed = [e for e in sink.events() if e["type"] == "withdrawal.confirmed"]
    assert len(confirmed) == 1 and confirmed[0]["txid"] == txid_of(node.sent[1])
    assert confirmed[0]["nonce"] == 1


async def test_a_batch_is_group_committed_and_every_payment_recorded_before_it_is_sent() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)

    def check_committed(raw: bytes) -> None:
        last = orjson.loads(sink.commits[-1][1])
        attempts = [a[1] for w in last["book"]["withdrawals"] for a in w["attempts"]]
        assert raw.hex() in attempts, "broadcast before its bytes were committed"
    node.on_send = check_committed
    await r.start()
    before = len(sink.commits)
    for i in range(10):
        reqs.add(request(f"w-{i}"), partition=i % 2)
    await r.step()
    assert len(node.sent) == 10
    # accepted | bound | signed | broadcast (the round's end): 4 transactions for 10 requests.
    assert len(sink.commits) - before == 4
    nonces = sorted(e["nonce"] for e in sink.events() if e["type"] == "withdrawal.broadcast")
    assert nonces == list(range(10))
    assert orjson.loads(sink.commits[-1][1])["offsets"] == {"0": 5, "1": 5}
