"""The withdrawal runner with fakes: routing, commit-before-broadcast, retries, restarts.

The node, the sink and the requests topic are fakes (in memory); the book, intake,
signing and the runner are the real ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from eth_keys.datatypes import PrivateKey
from nacl.signing import SigningKey

from chains.evm.tx import txid_of
from watcher.config import parse
from watcher.core.settled import SettledIndex
from watcher.core.withdrawals import BroadcastOutcome, Spend, load_settled
from watcher.errors import ChainError, ErrorKind, SinkError
from watcher.kafka.client import Consumed
from watcher.kafka.settled import SettledLoad
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
        self.indexed: list[tuple[int, int]] = []

    async def ensure(self) -> None:
        self.ensured += 1

    async def load(self) -> SettledLoad:
        records = list(self.sink.settled().items())
        return SettledLoad(load_settled(records), 0, 0, len(records))

    async def end_offset(self) -> int:
        return len(self.sink.settled())

    def index_records(self, index: SettledIndex, covered: int) -> list[OutRecord]:
        self.indexed.append((len(index), covered))
        return [OutRecord("cp.index", b"manifest:a", str(covered).encode())]


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


# ---------------------------------------------------------------- settled records (wdstate)


async def settle_one(r: WithdrawalRunner, node: FakeNode, reqs: FakeRequests, rid: str) -> None:
    reqs.add(request(rid))
    await r.step()
    for _ in range(8):  # confirmed at 2, final at depth 5
        node.mine()
        await r.step()


async def test_a_request_settled_long_ago_stays_a_repeat_after_a_restart() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)
    await r.start()
    await settle_one(r, node, reqs, "w-old")
    state = orjson.loads(sink.commits[-1][1])
    assert state["version"] == 2 and state["book"]["withdrawals"] == []  # live state only
    body = {"request_id": "w-old", "chain": "eth", "asset": "ETH", "to_address": TO, "amount": "1000"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert sink.settled() == {
        b"w-old": b'{"version":1,"digest":"' + digest.encode() + b'","chain":"eth","outcome":"confirmed"}'}
    paid = len(node.sent)
    # A new leader: the checkpoint knows nothing of w-old; its settled record does.
    again = runner("eth", node, sink, reqs)
    await again.start()
    reqs.add(request("w-old"))                 # the exact request replayed: no event, not paid
    reqs.add(request("w-old", amount="999"))   # the same id, other content: duplicate
    await again.step()
    types = [(e["type"], e.get("reason")) for e in sink.events()]
    assert types.count(("withdrawal.accepted", None)) == 1
    assert types[-1] == ("withdrawal.rejected", "duplicate")
    assert len(node.sent) == paid


async def test_a_failed_commit_does_not_remember_a_refusal_it_lost() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs, daily_limit="5000")
    await r.start()
    reqs.add(request("w-1", amount="4000"))
    await r.step()
    reqs.add(request("w-2", amount="4000"))  # over the limit: refused and remembered...
    sink.fail_next = True
    with pytest.raises(SinkError):
        await r.step()
    assert sink.settled() == {}  # ...but that commit failed
    await r._reload()
    await r.step()
    # Decided again from the checkpoint: the refusal is an event once, and a record once.
    assert [(e["type"], e.get("reason")) for e in sink.events()][-1] == ("withdrawal.rejected",
                                                                          "limit_exceeded")
    assert list(sink.settled()) == [b"w-2"]


GOLDEN_V1_CHECKPOINT = (
    # A runner checkpoint of the version before settled records: one request settled long
    # ago ("w-0", its digest only), nothing in flight, offset 1 on partition 0.
    b'{"version":1,"chain":"eth","offsets":{"0":1},"scanned":[[10,"0x' + b"a" + b"0" * 62 + b'a"]],'
    b'"book":{"version":1,"chain":"eth","next_nonce":1,"limits":[],"digests":{"w-0":"DIGEST"},'
    b'"withdrawals":[]}}'
)


async def test_a_version_1_checkpoint_loads_and_its_history_moves_to_records() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    first = request("w-0")
    reqs.add(first)  # offset 0, decided by the old version
    from watcher.withdrawals.intake import evaluate
    r = runner("eth", node, sink, reqs)
    digest = evaluate(first, 0, r._policy, {}).request.digest  # type: ignore[union-attr]
    sink.commits.append(([], GOLDEN_V1_CHECKPOINT.replace(b"DIGEST", digest.encode())))
    await r.start()
    reqs.add(first)  # replayed: a repeat
    await r.step()
    assert sink.events() == [] and node.sent == []
    state = orjson.loads(sink.commits[-1][1])
    assert (state["version"], state["book"]["version"], state["offsets"]) == (2, 2, {"0": 2})
    assert "digests" not in state["book"]
    assert sink.settled() == {b"w-0": b'{"version":1,"digest":"' + digest.encode()
                              + b'","chain":"eth","outcome":"migrated"}'}


# ---------------------------------------------------------------- cross-chain ids


async def test_one_request_id_for_two_chains_is_paid_on_one_only() -> None:
    sink_eth, sink_arb = FakeSink(), FakeSink()
    node_eth, node_arb = FakeNode(), FakeNode()
    reqs_eth, reqs_arb = FakeRequests(), FakeRequests()
    eth = runner("eth", node_eth, sink_eth, reqs_eth)
    arb = runner("arb", node_arb, sink_arb, reqs_arb)
    await eth.start()
    await arb.start()
    for reqs in (reqs_eth, reqs_arb):  # both runners read every record, in the same order
        reqs.add(request("w-x", chain="eth"))
        reqs.add(request("w-x", chain="arb"))
        reqs.add(request("w-x", chain="eth"))  # an exact repeat of the first
    await eth.step()
    await arb.step()
    assert [e["type"] for e in sink_eth.events()] == ["withdrawal.accepted", "withdrawal.broadcast"]
    assert [(e["type"], e["reason"]) for e in sink_arb.events()] == [("withdrawal.rejected", "duplicate")]
    assert len(node_eth.sent) == 1 and node_arb.sent == []
    # arb recorded eth's claim; a fresh arb leader still refuses the id.
    assert orjson.loads(sink_arb.settled()[b"w-x"] or b"")["outcome"] == "claimed"
    again = runner("arb", node_arb, sink_arb, FakeRequests())
    await again.start()
    again._requests.add(request("w-x", chain="arb"))  # type: ignore[attr-defined]
    await again.step()
    assert [e["reason"] for e in sink_arb.events()] == ["duplicate", "duplicate"]
    assert node_arb.sent == []


# ---------------------------------------------------------------- decision order


async def test_the_daily_limit_charges_by_timestamp_not_by_read_order() -> None:
    decided = []
    for fetch_order in ((0, 1), (1, 0)):
        node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
        r = runner("eth", node, sink, reqs, daily_limit="5000")
        await r.start()
        recs = {0: (request("w-late", amount="3000"), 1_700_000_000_002),
                1: (request("w-early", amount="3000"), 1_700_000_000_001)}
        for p in fetch_order:
            reqs.add(recs[p][0], partition=p, ts=recs[p][1])
        await r.step()
        decided.append([(e["request_id"], e["type"]) for e in sink.events()
                        if e["type"] != "withdrawal.broadcast"])
    assert decided[0] == decided[1] == [("w-early", "withdrawal.accepted"),
                                        ("w-late", "withdrawal.rejected")]


async def test_a_request_waits_for_a_partition_that_is_behind() -> None:
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs, daily_limit="5000")
    await r.start()
    reqs.add(request("w-late", amount="3000"), partition=0, ts=1_700_000_000_002)
    reqs.add(request("w-early", amount="3000"), partition=1, ts=1_700_000_000_001)
    reqs.records.reverse()  # partition 0 fetched first...
    real_fetch = reqs.fetch

    async def one_at_a_time(timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        return await real_fetch(timeout_ms, 1)  # ...and partition 1 only in the next fetch
    reqs.fetch = one_at_a_time  # type: ignore[method-assign]
    await r.step()
    assert sink.events() == []  # partition 1 is behind: w-late waits
    assert orjson.loads(sink.commits[-1][1])["offsets"] == {}
    await r.step()
    assert [(e["request_id"], e["type"]) for e in sink.events()][:2] == [
        ("w-early", "withdrawal.accepted"), ("w-late", "withdrawal.rejected")]


async def test_a_live_request_waits_the_bounded_order_wait_only() -> None:
    now = [1_800_000_000.0]
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs, clock=lambda: now[0])
    await r.start()
    reqs.add(request("w-1"), partition=0, ts=int(now[0] * 1000))
    await r.step()
    assert sink.events() == []  # partition 1 is empty and caught up: an earlier one may come
    now[0] += 0.3  # past the 250 ms wait
    await r.step()
    assert [e["type"] for e in sink.events()] == ["withdrawal.accepted", "withdrawal.broadcast"]


# ---------------------------------------------------------------- refused sends


async def test_a_refused_payment_is_retried_with_backoff_counted_and_stuck() -> None:
    from watcher.metrics import REGISTRY

    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    outcomes = [BroadcastOutcome.REFUSED] * 3 + [BroadcastOutcome.OK]
    real = node.send_raw

    async def refusing(raw: bytes, txid: TxId) -> BroadcastOutcome:
        await real(raw, txid)
        return outcomes.pop(0)
    node.send_raw = refusing  # type: ignore[method-assign]
    r = runner("eth", node, sink, reqs)
    before = REGISTRY.get_sample_value("watcher_withdrawal_sends_refused_total", {"chain": "eth"}) or 0
    await r.start()
    reqs.add(request("w-1"))
    await r.step()
    for _ in range(5):
        await r.step()  # no new block: never sent again at the same height
    assert len(node.sent) == 1
    assert REGISTRY.get_sample_value("watcher_withdrawals_stuck", {"chain": "eth"}) == 1
    sends_at = []
    for _ in range(7):
        node.mine(include=False)
        n = len(node.sent)
        await r.step()
        if len(node.sent) > n:
            sends_at.append(node.height)
    # Refused at 10, 11 and 13: sent again 1, 2 and 4 blocks later; the fourth is taken.
    assert sends_at == [11, 13, 17]
    assert len(set(node.sent)) == 1  # the very same bytes, never anything else signed
    assert REGISTRY.get_sample_value("watcher_withdrawal_sends_refused_total",
                                     {"chain": "eth"}) == before + 3
    assert [e["type"] for e in sink.events()] == ["withdrawal.accepted", "withdrawal.broadcast"]
    assert REGISTRY.get_sample_value("watcher_withdrawals_stuck", {"chain": "eth"}) == 0


async def test_an_index_snapshot_is_written_every_so_many_settled_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import watcher.withdrawals.runtime as rt
    monkeypatch.setattr(rt, "INDEX_EVERY", 3)
    node, sink, reqs = FakeNode(), FakeSink(), FakeRequests()
    r = runner("eth", node, sink, reqs)
    store = r._settled
    assert isinstance(store, FakeSettled)
    await r.start()
    for i in range(2):
        reqs.add(request(f"w-big-{i}", amount="5001"))  # over the per-request limit: settled
    await r.step()
    assert store.indexed == []
    reqs.add(request("w-big-2", amount="5001"))
    await r.step()
    assert store.indexed == [(3, 3)]  # the index of the 3 records, covering offsets 0..2
    index_commit, state = sink.commits[-1]
    assert [x.topic for x in index_commit] == ["cp.index"]
    assert state == sink.commits[-2][1]  # its own transaction, the checkpoint unchanged
    # A start that read 3 records past the last snapshot writes one at its first commit.
    again = runner("eth", node, sink, reqs)
    await again.start()
    assert again._settled.indexed == [(3, 3)]  # type: ignore[attr-defined]
