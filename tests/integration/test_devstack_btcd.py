"""`make up`'s btcd keeps its regtest chain across a stop and a kill -9, on a real btcd.

btcd deletes its regtest database at every start, so before devstack kept the chain, the
second `make up` always met a new chain under the watcher's checkpoints and halted it
("reorg below finality")."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.support.btc_wallet import RegtestWallet, regtest_payee
from tests.support.services import ServiceManager, devstack

pytestmark = pytest.mark.integration


def lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n"), "a saved file ends with a whole line"
    return text.splitlines()


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
    plain = ds.start_btcd(tmp_path, port, None, die_with_parent=True)
    try:
        assert int(plain.rpc("getblockcount")) == 101
        assert plain.rpc("getbestblockhash") != tip
    finally:
        ds.stop(tmp_path, "btcd")

    again = ds.start_btcd(tmp_path, port, None, die_with_parent=True, persist=True)
    try:
        assert int(again.rpc("getblockcount")) == height
        assert again.rpc("getbestblockhash") == tip
        assert again.rpc("getrawmempool") == [txid]
    finally:
        ds.stop(tmp_path, "btcd")


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

    again = ds.start_btcd(tmp_path, port, None, die_with_parent=True, persist=True)
    try:
        assert int(again.rpc("getblockcount")) == height
        assert again.rpc("getbestblockhash") == tip
        # The start saved again: rewritten whole, the cut line gone.
        assert [ds.block_hash(bytes.fromhex(x)) for x in lines(home / ds.BTCD_CHAIN_FILE)][-1] == tip
    finally:
        ds.stop(tmp_path, "btcd")
