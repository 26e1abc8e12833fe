"""The EVM source over one simulated node that lies in one way: the lie never becomes
"no deposits"; it is settled by what the node cannot leave out, or refused."""

from __future__ import annotations

import dataclasses
import random

import pytest

from chains.evm.adapter import EvmChainSource, build_pool
from tests.chainsim import addr, key_of
from tests.component.conftest import chain_config
from tests.evmsim import TOKEN, EvmSim, FaultyNode, SimTx, h
from watcher.errors import AnswerCheck, NodeAnswerInvalid
from watcher.metrics import REGISTRY
from watcher.runtime.retry import RetryPolicy
from watcher.types import BlockHash, BlockRef, ChainId

ALICE, PAYER = addr(0xA11CE), addr(0x100)


def source(node: FaultyNode, chain: str) -> EvmChainSource:
    cfg = chain_config(endpoints=[{"name": "only", "url": "http://127.0.0.1:1"}], traces="off")
    cfg = dataclasses.replace(cfg, id=ChainId(chain))  # metrics of each test apart
    pool = build_pool(cfg, transports={"only": node},
                      retry=RetryPolicy(max_attempts=3).without_waiting())
    return EvmChainSource(cfg, pool)


def chain_with_token_deposit() -> tuple[EvmSim, BlockRef]:
    sim = EvmSim()
    sim.mine([SimTx(h("noise"), PAYER, addr(0x200), 5)])
    block = sim.mine([SimTx(h("pay"), PAYER, TOKEN, 0,
                            token_transfers=((TOKEN, ALICE, 2_500_000),))])
    ref = BlockRef(int(block["number"], 16), BlockHash(block["hash"]),
                   BlockHash(block["parentHash"]), int(block["timestamp"], 16))
    return sim, ref


@pytest.mark.parametrize("receipts_method", ["eth_getBlockReceipts", "eth_getTransactionReceipt"])
async def test_empty_logs_where_the_bloom_matches_are_settled_by_receipts(
        receipts_method: str) -> None:
    sim, ref = chain_with_token_deposit()
    node = FaultyNode(sim, random.Random(1), rate=1.0, faults=("empty_logs",))
    if receipts_method == "eth_getTransactionReceipt":
        node.without.add("eth_getBlockReceipts")  # an older node: one receipt per tx
    src = source(node, f"v-logs-{receipts_method}")
    try:
        (found,) = await src.contents([ref], {key_of(ALICE)})
        assert [(t.locator, t.amount, t.asset) for t in found.transfers] == [
            ("log:0", 2_500_000, "USDC")]
        assert node.injected == {"empty_logs": 1}
        assert node.methods.get(receipts_method) == 1
    finally:
        await src.close()


async def test_receipts_that_drop_the_log_are_refused_not_believed() -> None:
    sim, ref = chain_with_token_deposit()
    node = FaultyNode(sim, random.Random(1), rate=1.0, faults=("empty_logs", "missing_receipt"))
    chain = "v-refused"
    src = source(node, chain)

    def rejected(check: str) -> float:
        return REGISTRY.get_sample_value("watcher_node_answers_rejected_total", {
            "chain": chain, "endpoint": "only", "check": check}) or 0.0
    try:
        # empty logs, then receipts one short: never "no deposits", always an error
        for _ in range(5):
            with pytest.raises(NodeAnswerInvalid) as info:
                await src.contents([ref], {key_of(ALICE)})
            assert info.value.check in (AnswerCheck.RECEIPTS, AnswerCheck.LOGS)
        assert rejected("receipts") + rejected("logs") >= 5
    finally:
        await src.close()


async def test_a_block_without_matching_bloom_needs_no_receipts() -> None:
    sim = EvmSim()
    block = sim.mine([SimTx(h("eth"), PAYER, ALICE, 7)])
    ref = BlockRef(1, BlockHash(block["hash"]), BlockHash(block["parentHash"]),
                   int(block["timestamp"], 16))
    node = FaultyNode(sim, random.Random(1), rate=0.0)
    src = source(node, "v-nobloom")
    try:
        (found,) = await src.contents([ref], {key_of(ALICE)})
        assert [(t.locator, t.amount) for t in found.transfers] == [("tx", 7)]
        assert "eth_getBlockReceipts" not in node.methods
    finally:
        await src.close()
