"""``confirm_quorum: 2`` on two real anvils: the second forks off the first at a height.

Blocks up to the fork height are the same on both (anvil ``--fork-url`` serves them from
the first), above it each anvil mines its own: a deposit below the fork is confirmed, one
above it never is, however deep it gets on the followed node.
"""

from __future__ import annotations

from typing import Any

import pytest

from chains.evm.adapter import EvmChainSource
from tests.chainsim import HexCodec
from tests.fixtures.evm.record import rpc
from tests.memsink import MemorySink
from tests.support.services import AnvilFactory
from watcher.config import parse
from watcher.runtime.follower import ChainFollower, StepOutcome

pytestmark = pytest.mark.integration

WATCHED = "0x" + "11" * 20


class One:
    def __init__(self, address: str) -> None:
        self.key = bytes.fromhex(address[2:])

    def __contains__(self, key: object) -> bool:
        return key == self.key

    def label(self, key: bytes) -> str | None:
        return None


def pay(url: str) -> str:
    sender = rpc(url, "eth_accounts")[0]
    txid: str = rpc(url, "eth_sendTransaction", {"from": sender, "to": WATCHED,
                                                  "value": hex(10**18)})
    return txid


async def test_quorum_of_two_real_nodes(anvil_factory: AnvilFactory) -> None:
    a = anvil_factory()
    shared_tx = pay(a.url)                        # mined at once (automine)
    for _ in range(3):
        rpc(a.url, "evm_mine")
    fork_height = int(rpc(a.url, "eth_blockNumber"), 16)
    b = anvil_factory(extra_args=("--fork-url", a.url, "--fork-block-number", str(fork_height)))
    try:
        own_tx = pay(a.url)                       # above the fork: only on a
        for _ in range(6):
            rpc(a.url, "evm_mine")
        for _ in range(8):
            rpc(b.url, "evm_mine")
        raw: dict[str, Any] = {
            "family": "evm", "chain_id": 31337, "traces": "off", "start_block": 0,
            "endpoints": [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}],
            "native_asset": {"symbol": "ETH", "decimals": 18}, "confirmations": {"ETH": 3},
            "confirm_quorum": 2, "lag_tolerance_blocks": 100, "reorg_window": 32,
            "finality": {"mode": "depth", "depth": 20}, "rpc_timeout_ms": 5000,
        }
        cfg = parse({"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "chains": {"eth": raw}})
        ccfg = cfg.chains[next(iter(cfg.chains))]
        source = EvmChainSource(ccfg)
        sink = MemorySink()
        f = ChainFollower(ccfg, source, sink, One(WATCHED), HexCodec(), "payments.deposits")
        try:
            await f.start()
            for _ in range(30):
                if await f.step() is StepOutcome.CAUGHT_UP:
                    break
            assert f.status.processed_height == int(rpc(a.url, "eth_blockNumber"), 16)
            got = {(e["type"], e["txid"]) for e in sink.events()}
            assert ("deposit.confirmed", shared_tx) in got
            assert ("deposit.pending", own_tx) in got
            assert ("deposit.confirmed", own_tx) not in got
            assert f.status.quorum_problem is not None
        finally:
            await source.close()
    finally:
        anvil_factory.stop(b)
        anvil_factory.stop(a)
