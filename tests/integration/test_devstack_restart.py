"""`make up`'s chains outlive a restart, on a real btcd and a real anvil.

The watcher's checkpoints in Kafka name the chains' blocks, so the second `make up` must
find the same chains, and answers the watcher believes about them. btcd deletes its
regtest database at every start: before devstack kept the chain, the second `make up`
met a new chain and the watcher halted ("reorg below finality"). anvil keeps its chain
(--state) but, without its historical states, cannot trace the blocks it loaded, and the
watcher set it aside at its checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.btc_wallet import RegtestWallet, regtest_payee
from tests.support.services import ServiceManager, devstack

pytestmark = pytest.mark.integration


def lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n"), "a saved file ends with a whole line"
    return text.splitlines()


@contextlib.contextmanager
def btcd_at(state_dir: Path, port: int, *, persist: bool = True) -> Iterator[Any]:
    """devstack's btcd of ``state_dir``, stopped on leaving."""
    ds = devstack()
    try:
        yield ds.start_btcd(state_dir, port, None, die_with_parent=True, persist=persist)
    finally:
        ds.stop(state_dir, "btcd")


def assert_tip(node: Any, height: int, tip: str) -> None:
    assert int(node.rpc("getblockcount")) == height
    assert node.rpc("getbestblockhash") == tip


def test_the_chain_and_mempool_outlive_a_stop(services: ServiceManager, tmp_path: Path) -> None:
    ds = devstack()
    port = services.free_port()
    info = ds.start_btcd(tmp_path, port, None, die_with_parent=True, persist=True)
    try:
        info.rpc("generate", 3)
        txid = RegtestWallet(info).pay([(regtest_payee("p2wpkh", "kept").script, 70_000)])
        tip, height = info.rpc("getbestblockhash"), int(info.rpc("getblockcount"))
        ds.save_persisted_btcd(tmp_path)
    finally:
        ds.stop(tmp_path, "btcd")
    assert height == 104

    # What btcd does by itself: a new chain from the genesis block (mined to 101 again).
    with btcd_at(tmp_path, port, persist=False) as plain:
        assert int(plain.rpc("getblockcount")) == 101
        assert plain.rpc("getbestblockhash") != tip

    with btcd_at(tmp_path, port) as again:
        assert_tip(again, height, tip)
        assert again.rpc("getrawmempool") == [txid]


def test_a_reorg_is_cut_from_the_file_and_a_kill_loses_only_the_unsaved(
        services: ServiceManager, tmp_path: Path) -> None:
    ds = devstack()
    home = tmp_path / "btcd"
    port = services.free_port()
    info = ds.start_btcd(tmp_path, port, None, die_with_parent=True, persist=True)
    try:
        info.rpc("generate", 2)
        ds.save_btcd_chain(info.rpc, home)
        info.rpc("invalidateblock", info.rpc("getbestblockhash"))  # a reorg of one block
        info.rpc("generate", 2)
        tip, height = info.rpc("getbestblockhash"), int(info.rpc("getblockcount"))
        assert ds.save_btcd_chain(info.rpc, home) == height == 104
        saved = lines(home / ds.BTCD_CHAIN_FILE)
        assert len(saved) == height
        assert ds.block_hash(bytes.fromhex(saved[-1])) == tip
        info.rpc("generate", 1)  # mined after the last save: lost to the kill
        with open(home / ds.BTCD_CHAIN_FILE, "a") as f:
            f.write(saved[-1][:50])  # a write the kill cut short
        os.kill(info.pid, signal.SIGKILL)
    finally:
        ds.stop(tmp_path, "btcd")

    with btcd_at(tmp_path, port) as again:
        assert_tip(again, height, tip)
        # The start saved again: rewritten whole, the cut line gone.
        saved = lines(home / ds.BTCD_CHAIN_FILE)
        assert len(saved) == height
        assert ds.block_hash(bytes.fromhex(saved[-1])) == tip


def test_anvil_traces_the_blocks_it_loaded_from_its_state(services: ServiceManager,
                                                         tmp_path: Path) -> None:
    ds = devstack()
    port = services.free_port()
    args = ds.anvil_state_args(tmp_path)
    anvil = ds.start_anvil(tmp_path, port, extra_args=args, die_with_parent=True)
    try:
        payer = anvil.rpc("eth_accounts")[0]
        sent = [anvil.rpc("eth_sendTransaction",
                          {"from": payer, "to": "0x" + "11" * 20, "value": hex(10**18 + i)})
                for i in range(2)]
        blocks = [anvil.rpc("eth_getTransactionByHash", t)["blockHash"] for t in sent]
    finally:
        ds.stop(tmp_path, "anvil")  # SIGTERM: anvil dumps its state as it exits

    anvil = ds.start_anvil(tmp_path, port, extra_args=args, die_with_parent=True)
    try:
        for txid, block in zip(sent, blocks, strict=True):
            (trace,) = anvil.rpc("debug_traceBlockByHash", block, {"tracer": "callTracer"})
            # What the watcher's scan needs of a trace: a result frame per transaction.
            assert trace.get("error") is None, trace
            assert trace["txHash"] == txid
            assert trace["result"]["to"] == "0x" + "11" * 20
    finally:
        ds.stop(tmp_path, "anvil")
