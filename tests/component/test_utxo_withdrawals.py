"""The withdrawal runner on a UTXO chain, with a fake node that is a small chain of its own.

The fake keeps a ledger of the hot wallet's outputs and a mempool; it reads every raw
transaction the runner sends with the real parser (chains.bitcoin.block), applies BIP 125
(a replacement must spend the same coins, pay a higher rate and at least the old fee plus
1 sat/vB of its size) and mines only transactions at or above its ``mine_rate``. The
book, coin state, coin selection, signing, intake and the runner are the real ones.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from typing import Any

import orjson
import pytest

from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.block import parse_transaction
from chains.bitcoin.tx import address_script
from tests.support.btc_wallet import regtest_payee
from tests.unit.test_withdrawal_runtime import (
    REQUESTER,
    DeadLetters,
    FakeRequests,
    FakeSettled,
    FakeSink,
)
from watcher.config import parse
from watcher.core.coins import HotOutput
from watcher.core.withdrawals import BroadcastOutcome, RequestId, Spend, WithdrawalState
from watcher.metrics import HOT_WALLET_BALANCE
from watcher.ports import HotBlock
from watcher.types import BlockHash, ChainHead, ChainId, TxId
from watcher.withdrawals.policy import intake_policy
from watcher.withdrawals.runtime import RunnerTopics, WithdrawalRunner
from watcher.withdrawals.signer import HotKeySigner

HOT_KEY = hashlib.sha256(b"btcwd component hot key").digest()
PAYEE = regtest_payee("p2wpkh", "component")
BTC = ChainId("btc")


def raw_config(**chain_withdrawals: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "transactional_id_prefix": "t"},
        "chains": {"btc": {
            "family": "bitcoin", "network": "regtest",
            "endpoints": [{"name": "n", "url": "http://127.0.0.1:1"}],
            "native_asset": {"symbol": "BTC", "decimals": 8}, "confirmations": {"BTC": 1},
            "finality": {"mode": "depth", "depth": 6}, "reorg_window": 16,
        }},
        "withdrawals": {
            "requesters": {"ledger": base64.b64encode(bytes(REQUESTER.verify_key)).decode()},
            "chains": {"btc": {"confirmations": 2, "stuck_blocks": 2, "min_fee_rate": 1,
                               "max_fee_rate": 40, "input_confirmations": 1,
                               "hot_key": {"env": "X"},
                               "assets": {"BTC": {"per_request_limit": "5000000",
                                                  "daily_limit": "50000000"}},
                               **chain_withdrawals}},
        },
    }


def request(rid: str, amount: int, to: str = PAYEE.address) -> bytes:
    body = {"request_id": rid, "chain": "btc", "asset": "BTC", "to_address": to, "amount": str(amount)}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({**body, "signature": base64.b64encode(REQUESTER.sign(canonical).signature)
                       .decode()}).encode()


def h(n: int, fork: str = "a") -> BlockHash:
    return BlockHash(f"{fork}{n:063x}"[-64:])


def label_txid(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


class FakeUtxoNode:
    def __init__(self, hot_script: bytes) -> None:
        self.hot = hot_script
        self.height = 10
        self.fork = "a"
        self.blocks: dict[int, HotBlock] = {n: HotBlock(n, h(n), h(n - 1), ()) for n in range(11)}
        self.coins: dict[str, int] = {}  # hot outputs on chain or in the pool, by outpoint
        self.pool: dict[str, tuple[bytes, frozenset[str], int, int]] = {}  # txid -> raw, ins, fee, vsize
        self.sent: list[bytes] = []
        self.outcomes: list[BroadcastOutcome] = []
        self.estimate: int | None = None
        self.mine_rate = 1
        self.watched: frozenset[str] = frozenset()

    # -- the chain

    def _block(self, spends: list[Spend], outputs: list[HotOutput]) -> None:
        n = self.height + 1
        self.blocks[n] = HotBlock(n, h(n, self.fork), self.blocks[self.height].hash, tuple(spends),
                                  tuple(outputs))
        self.height = n

    def fund(self, value: int, label: str) -> str:
        op = f"{label_txid(label)}:0"
        self.coins[op] = value
        self._block([], [HotOutput(op, value)])
        return op

    def mine(self) -> list[str]:
        spends: list[Spend] = []
        outputs: list[HotOutput] = []
        mined = []
        for txid, (raw, ins, fee, vsize) in list(self.pool.items()):
            if fee < self.mine_rate * vsize:
                continue
            del self.pool[txid]
            mined.append(txid)
            spends += [Spend(f"in:{o}", TxId(txid)) for o in sorted(ins)]
            txs = parse_transaction(raw)
            for vout, out in enumerate(txs.outputs(0)):
                if out.script == self.hot:
                    outputs.append(HotOutput(f"{txid}:{vout}", out.value, change=True))
                    self.coins[f"{txid}:{vout}"] = out.value
        self._block(spends, outputs)
        return mined

    def reorg(self, from_height: int) -> None:
        """Blocks from ``from_height`` are replaced by empty ones of another fork."""
        self.fork = chr(ord(self.fork) + 1)
        top = self.height
        self.height = from_height - 1
        for _ in range(from_height, top + 1):
            self._block([], [])

    # -- UtxoHotWalletNode

    def watch_outpoints(self, outpoints: frozenset[str]) -> None:
        self.watched = outpoints

    async def fee_rate(self) -> int | None:
        return self.estimate

    async def head(self) -> ChainHead:
        return ChainHead(self.height, self.blocks[self.height].hash)

    async def block(self, number: int) -> HotBlock | None:
        return self.blocks.get(number)

    async def send_raw(self, raw: bytes, txid: TxId) -> BroadcastOutcome:
        self.sent.append(raw)
        txs = parse_transaction(raw, expect_txid=txid)
        ins = frozenset(f"{o.txid}:{o.vout}" for o in txs.spends(0))
        outcome = self._accept(txid, raw, ins, txs)
        self.outcomes.append(outcome)
        return outcome

    def _accept(self, txid: str, raw: bytes, ins: frozenset[str], txs: Any) -> BroadcastOutcome:
        if txid in self.pool:
            return BroadcastOutcome.ALREADY_KNOWN
        if any(o not in self.coins for o in ins):
            return BroadcastOutcome.CONSUMED
        fee = sum(self.coins[o] for o in ins) - sum(o.value for o in txs.outputs(0))
        vsize = -(-(len(raw) + 3 * self._stripped_size(txs)) // 4)  # BIP141 weight / 4
        conflicts = {t: v for t, v in self.pool.items() if v[1] & ins}
        for _, (_, old_ins, old_fee, old_vsize) in conflicts.items():
            assert old_ins == ins, "a replacement spends other coins than the payment it replaces"
            if fee * old_vsize <= old_fee * vsize or fee < old_fee + vsize:
                return BroadcastOutcome.UNDERPRICED
        for t in conflicts:
            del self.pool[t]
        self.pool[txid] = (raw, ins, fee, vsize)
        return BroadcastOutcome.OK

    @staticmethod
    def _stripped_size(txs: Any) -> int:
        # version + inputs + outputs + locktime: the txid's preimage, rebuilt from the parse.
        n_in = len(txs.spends(0))
        outs = txs.outputs(0)
        return 4 + 1 + 41 * n_in + 1 + sum(9 + len(o.script) for o in outs) + 4


def make_runner(node: FakeUtxoNode | None, sink: FakeSink, reqs: FakeRequests,
                **chain_withdrawals: Any) -> tuple[WithdrawalRunner, FakeUtxoNode]:
    cfg = parse(raw_config(**chain_withdrawals))
    assert cfg.withdrawals is not None
    policy = intake_policy(cfg.withdrawals, cfg.chains, {BTC: UtxoAddressCodec("regtest")})
    signer = HotKeySigner("t", HOT_KEY)
    from chains.bitcoin.tx import compressed_public_key, p2wpkh_script

    node = node or FakeUtxoNode(p2wpkh_script(compressed_public_key(signer.public_key)))
    r = WithdrawalRunner(chain=cfg.chains[BTC], cw=cfg.withdrawals.chains[BTC], policy=policy,
                         primary=BTC, topics=RunnerTopics("req", "out"), signer=signer, node=node,
                         sink=sink, requests=reqs, dead_letters=DeadLetters(),
                         settled=FakeSettled(sink))
    return r, node


def types_of(sink: FakeSink, rid: str) -> list[str]:
    return [e["type"] for e in sink.events() if e.get("request_id") == rid]


def balance() -> float:
    return float(HOT_WALLET_BALANCE.labels("btc", "BTC")._value.get())


async def test_payment_selects_coins_pays_exactly_and_returns_change() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs)
    await r.start()  # the scan starts at the tip (no start_block): coins come after it
    big = node.fund(100_000, "big")
    small = node.fund(50_000, "small")
    await r.step()  # scans both funding blocks
    assert balance() == 150_000.0
    reqs.add(request("w-1", 120_000))
    await r.step()
    assert types_of(sink, "w-1") == ["withdrawal.accepted", "withdrawal.broadcast"]
    txs = parse_transaction(node.sent[-1])
    # Largest first: the 100k coin is not enough alone, so both are spent, in outpoint order.
    assert {f"{o.txid}:{o.vout}" for o in txs.spends(0)} == {big, small}
    outs = [(o.script, o.value) for o in txs.outputs(0)]
    assert outs[0] == (address_script(PAYEE.address, UtxoAddressCodec("regtest").network), 120_000)
    assert outs[1][0] == node.hot and len(outs) == 2
    fee = 150_000 - 120_000 - outs[1][1]
    vsize = node.pool[txs.txid(0)][3]
    assert vsize <= fee <= vsize + 2  # the 1 sat/vB floor (no estimate), on the upper-bound size
    node.mine()
    node.mine()
    await r.step()
    evs = [e for e in sink.events() if e.get("request_id") == "w-1"]
    assert [e["type"] for e in evs] == ["withdrawal.accepted", "withdrawal.broadcast",
                                        "withdrawal.confirmed"]
    assert evs[-1]["txid"] == txs.txid(0) and evs[-1]["fee"] == str(fee)
    assert all("nonce" in e and e["nonce"] is None for e in evs)
    assert balance() == float(outs[1][1])  # only the change is left
    state = orjson.loads(sink.commits[-1][1])
    assert [c[0] for c in state["coins"]["coins"]] == [f"{txs.txid(0)}:1"]


async def test_waits_for_funds_until_coins_are_deep_enough() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs, input_confirmations=3)
    await r.start()
    reqs.add(request("w-wait", 10_000))
    await r.step()
    w = r.book.get(RequestId("w-wait"))
    assert w is not None and w.state is WithdrawalState.WAITING_FUNDS
    node.fund(40_000, "late")
    await r.step()
    node.mine()
    await r.step()
    assert node.sent == []  # two confirmations: not yet
    node.mine()
    await r.step()
    assert len(node.sent) == 1 and types_of(sink, "w-wait")[-1] == "withdrawal.broadcast"


async def test_stuck_payment_is_replaced_on_the_same_inputs_with_bip125_fees() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs)
    await r.start()
    node.fund(500_000, "stuck")
    node.mine_rate = 3  # the floor's 1 sat/vB is never mined
    reqs.add(request("w-stuck", 200_000))
    await r.step()
    first = parse_transaction(node.sent[0])
    first_fee = node.pool[first.txid(0)][2]
    for _ in range(8):
        node.mine()
        await r.step()
    accepted = [raw for raw, o in zip(node.sent, node.outcomes, strict=True)
                if o is BroadcastOutcome.OK]
    assert len(accepted) >= 2
    fees = []
    for raw in accepted:
        t = parse_transaction(raw)
        assert t.spends(0) == first.spends(0)  # the binding: exactly the same inputs
        assert t.outputs(0)[0] == first.outputs(0)[0]  # and exactly the same payment
        assert t.signals_rbf(0)
        fees.append(500_000 - sum(o.value for o in t.outputs(0)))
    assert fees[0] == first_fee
    for old, new in itertools.pairwise(fees):
        assert new >= old * 110 // 100 and new > old  # BIP125 and the bump percent
    evs = [e for e in sink.events() if e.get("request_id") == "w-stuck"]
    types = [e["type"] for e in evs]
    assert types[:2] == ["withdrawal.accepted", "withdrawal.broadcast"]
    assert types.count("withdrawal.confirmed") == 1 and "withdrawal.replaced" in types
    replaced = [e for e in evs if e["type"] == "withdrawal.replaced"]
    assert replaced[0]["replaces_txid"] == first.txid(0)
    assert evs[-1]["txid"] == replaced[-1]["txid"]


async def test_a_reorg_takes_coins_back_and_the_state_survives_a_restart() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs)
    await r.start()
    node.fund(70_000, "kept")
    node.fund(30_000, "reorged")
    await r.step()
    assert balance() == 100_000.0
    node.reorg(12)  # the second funding block leaves the chain
    node.coins.pop(f"{label_txid('reorged')}:0")
    await r.step()
    assert balance() == 70_000.0
    # A fresh runner on the same checkpoint knows the same coins without rescanning.
    r2, _ = make_runner(node, sink, reqs)
    await r2.start()
    assert r2.family.state() == r.family.state()
    reqs.add(request("w-after", 50_000))
    await r2.step()
    txs = parse_transaction(node.sent[-1])
    assert [f"{o.txid}:{o.vout}" for o in txs.spends(0)] == [f"{label_txid('kept')}:0"]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("min_fee_rate", 0, "must be > 0"),
    ("max_fee_rate", 20_000, "at most 10000"),
    ("input_confirmations", 0, ">= 1"),
    ("spend_own_change", "yes", "true or false"),
    ("max_fee_per_gas", "1", "max_fee_per_gas"),
])
def test_bad_utxo_withdrawal_settings_name_the_key(key: str, value: Any, message: str) -> None:
    from watcher.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        parse(raw_config(**{key: value}))
    assert key in str(info.value)


async def test_a_dust_amount_is_rejected_and_never_signed() -> None:
    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs)
    await r.start()
    node.fund(100_000, "dust")
    reqs.add(request("w-dust", 293))  # P2WPKH's dust limit is 294 sats
    reqs.add(request("w-ok", 294))
    await r.step()
    rejected = [e for e in sink.events() if e["type"] == "withdrawal.rejected"]
    assert [(e["request_id"], e["reason"]) for e in rejected] == [("w-dust", "invalid_amount")]
    assert "dust limit" in rejected[0]["message"]
    assert len(node.sent) == 1 and types_of(sink, "w-ok")[-1] == "withdrawal.broadcast"


def test_a_utxo_withdrawal_entry_is_accepted_with_its_defaults() -> None:
    raw = raw_config()
    entry = raw["withdrawals"]["chains"]["btc"]
    del entry["input_confirmations"], entry["min_fee_rate"]
    cfg = parse(raw)
    assert cfg.withdrawals is not None
    cw = cfg.withdrawals.chains[BTC]
    assert (cw.max_fee, cw.min_fee, cw.max_tip) == (40, 1, 0)
    assert cw.input_confirmations == cw.confirmations == 2 and cw.spend_own_change is True


async def test_a_long_witness_program_recipient_is_paid_exactly() -> None:
    """Witness v2 with a 40-byte program (BIP 350 allows it): intake accepts the text, so
    the wallet must pay it (it used to wait forever as a script it could not size)."""
    from tests.support.btc_wallet import segwit_address

    sink, reqs = FakeSink(), FakeRequests()
    r, node = make_runner(None, sink, reqs)
    await r.start()
    node.fund(100_000, "odd")
    odd = segwit_address("bcrt", 2, bytes(range(40)))
    reqs.add(request("w-odd-dust", 353, to=odd))  # below the 354 bound of a 40-byte program
    reqs.add(request("w-odd", 10_000, to=odd))
    for _ in range(3):
        node.mine()
        await r.step()
    rejected = [e for e in sink.events() if e["type"] == "withdrawal.rejected"]
    assert [(e["request_id"], e["reason"]) for e in rejected] == [("w-odd-dust", "invalid_amount")]
    assert types_of(sink, "w-odd") == ["withdrawal.accepted", "withdrawal.broadcast",
                                       "withdrawal.confirmed"]
    outs = [(o.script, o.value) for o in parse_transaction(node.sent[-1]).outputs(0)]
    golden = bytes.fromhex("5228" + "".join(f"{b:02x}" for b in range(40)))  # OP_2 push(40) program
    assert outs[0] == (golden, 10_000) and outs[1][0] == node.hot
