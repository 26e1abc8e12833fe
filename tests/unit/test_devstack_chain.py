"""`make up`'s chains across restarts (deploy/local/devstack.py): btcd's saved file, its
checks and the order of what is submitted again, against a fake node (the real btcd round
trip is in tests/integration/test_devstack_btcd.py); and `make down`'s wait for the watcher
to commit anvil's head, against a fake watcher and anvil."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.services import devstack

REGTEST_GENESIS = bytes.fromhex(
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b2"
    "7ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4adae5494dffff7f20020000000101000000010000"
    "000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d01044554"
    "68652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f6620"
    "7365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0"
    "fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de"
    "5c384df7ba0b8d578a4c702b6bf11d5fac00000000")
REGTEST_GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"


def test_block_hash_is_the_reversed_double_sha256_of_the_header() -> None:
    assert devstack().block_hash(REGTEST_GENESIS) == REGTEST_GENESIS_HASH


def header_after(prev: str, nonce: int) -> bytes:
    """An 80-byte header whose previous-block field is ``prev`` (the rest is filler)."""
    return (b"\x01\x00\x00\x00" + bytes.fromhex(prev)[::-1] + hashlib.sha256(b"m").digest()
            + nonce.to_bytes(12, "little"))


class FakeNode:
    """Answers like a btcd that just started from its genesis block."""

    def __init__(self, refuse_until_parent: dict[str, str] | None = None) -> None:
        self.submitted: list[str] = []
        self.sent: list[str] = []
        self.refuse_until_parent = refuse_until_parent or {}

    def rpc(self, method: str, *params: Any) -> Any:
        if method == "getblockcount":
            return 0
        if method == "getblockhash":
            assert params == (0,)
            return REGTEST_GENESIS_HASH
        if method == "submitblock":
            self.submitted.append(params[0])
            return None
        if method == "sendrawtransaction":
            parent = self.refuse_until_parent.get(params[0])
            if parent is not None and parent not in self.sent:
                raise devstack().DevStackError("sendrawtransaction -> error: missing inputs")
            self.sent.append(params[0])
            return "txid"
        raise AssertionError(f"unexpected call {method}{params}")


def chain_of(n: int) -> list[bytes]:
    blocks, prev = [], REGTEST_GENESIS_HASH
    for i in range(n):
        raw = header_after(prev, i) + b"\x00"
        blocks.append(raw)
        prev = devstack().block_hash(raw)
    return blocks


def test_restore_submits_the_saved_blocks_in_order_then_the_mempool(tmp_path: Path) -> None:
    blocks = chain_of(3)
    (tmp_path / "chain.blocks").write_text("".join(b.hex() + "\n" for b in blocks)
                                           + "0100")  # a line a kill cut short
    (tmp_path / "mempool.txs").write_text("child\nparent\n")
    node = FakeNode(refuse_until_parent={"child": "parent"})
    assert devstack().restore_btcd_chain(node.rpc, tmp_path) == (3, 2)
    assert node.submitted == [b.hex() for b in blocks]
    assert node.sent == ["parent", "child"]


def test_a_block_that_does_not_follow_the_one_before_it_fails_the_start(tmp_path: Path) -> None:
    blocks = chain_of(3)
    del blocks[1]
    (tmp_path / "chain.blocks").write_text("".join(b.hex() + "\n" for b in blocks))
    node = FakeNode()
    with pytest.raises(devstack().DevStackError, match=r"chain\.blocks, line 2: not the block after"):
        devstack().restore_btcd_chain(node.rpc, tmp_path)
    assert len(node.submitted) == 1


def test_a_line_that_is_not_hex_fails_the_start_naming_it(tmp_path: Path) -> None:
    (tmp_path / "chain.blocks").write_text(chain_of(1)[0].hex() + "\nnot hex\n")
    with pytest.raises(devstack().DevStackError, match=r"line 2"):
        devstack().restore_btcd_chain(FakeNode().rpc, tmp_path)


def test_nothing_saved_restores_nothing(tmp_path: Path) -> None:
    node = FakeNode()
    assert devstack().restore_btcd_chain(node.rpc, tmp_path) == (0, 0)
    assert node.submitted == []


class SavingNode:
    """A btcd at height ``len(chain)`` with an empty mempool, answering what a save asks."""

    def __init__(self, chain: list[bytes]) -> None:
        self.chain = chain

    def rpc(self, method: str, *params: Any) -> Any:
        if method == "getblockcount":
            return len(self.chain)
        if method == "getblockhash":
            return devstack().block_hash(self.chain[params[0] - 1])
        if method == "getblock":
            assert params[1] == 0
            return next(b.hex() for b in self.chain if devstack().block_hash(b) == params[0])
        if method == "getrawmempool":
            return []
        raise AssertionError(f"unexpected call {method}{params}")


def test_a_save_cuts_lines_the_node_does_not_have_and_writes_whole_lines(tmp_path: Path) -> None:
    chain = chain_of(3)
    (tmp_path / "chain.blocks").write_text(chain[0].hex() + "\nnot hex\n" + chain[2].hex()[:9])
    assert devstack().save_btcd_chain(SavingNode(chain).rpc, tmp_path) == 3
    assert (tmp_path / "chain.blocks").read_text() == "".join(b.hex() + "\n" for b in chain)
    assert (tmp_path / "mempool.txs").read_text() == ""


# ----------------------------------------------------- `make down` lets the watcher settle

METRICS = """# HELP watcher_processed_height Height of the last block committed with its events
# TYPE watcher_processed_height gauge
watcher_processed_height{chain="btc"} 116.0
watcher_processed_height{chain="eth"} 49.0
"""


def test_processed_height_reads_the_chain_asked_for() -> None:
    assert devstack().processed_height(METRICS, "eth") == 49
    assert devstack().processed_height(METRICS, "btc") == 116
    assert devstack().processed_height(METRICS, "ltc") is None


class FakeWatcherAndAnvil(http.server.BaseHTTPRequestHandler):
    """GET /metrics: the watcher, its eth height one more at every scrape up to ``reach``;
    POST: anvil, its head at 0x31 (49)."""

    scrapes = 0
    reach = 49

    def do_GET(self) -> None:
        cls = type(self)
        cls.scrapes += 1
        body = f'watcher_processed_height{{chain="eth"}} {min(45 + cls.scrapes, cls.reach)}.0\n'
        self._answer(body.encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer(b'{"jsonrpc": "2.0", "id": 1, "result": "0x31"}')

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("reach", "settled"), [(49, True), (48, False)])
def test_settle_waits_for_the_watcher_to_commit_anvils_head(reach: int, settled: bool) -> None:
    class Handler(FakeWatcherAndAnvil):
        scrapes = 0

    Handler.reach = reach
    handler = Handler
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert devstack().settle_watcher(url, url, timeout=1.5) is settled
    finally:
        server.shutdown()
        server.server_close()
    assert handler.scrapes >= 4  # it polled until 49 (or until the timeout)
