"""`make up`'s btcd keeps its regtest chain across a stop and a kill -9, on a real btcd.

btcd deletes its regtest database at every start, so before devstack kept the chain, the
second `make up` always met a new chain under the watcher's checkpoints and halted it
("reorg below finality")."""

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

