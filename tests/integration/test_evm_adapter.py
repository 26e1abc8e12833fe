"""The EVM adapter against real anvil nodes started by this module."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from eth_utils.address import to_checksum_address

from chains.evm.adapter import EvmAddressCodec, EvmChainSource, build_pool, build_source
from tests.fixtures.evm.record import build_scenario, free_port, rpc
from tests.support.services import AnvilFactory, AnvilService
from tests.unit.test_evm_errors import FakeNode, Respond, node
from watcher.config import ChainConfig, parse
from watcher.core.endpoints import EndpointState
from watcher.errors import ChainError, ErrorKind
from watcher.metrics import REGISTRY
from watcher.ports import AddressCodec, ChainSource
from watcher.runtime.retry import RetryPolicy
from watcher.types import BlockHash, BlockRef

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def evm_node(anvil_factory: AnvilFactory) -> Iterator[AnvilService]:
    """A fresh anvil of this module's own: the scenario below is built on it."""
    node = anvil_factory()
    yield node
    anvil_factory.stop(node)


@pytest.fixture(scope="module")
def scenario(evm_node: AnvilService) -> dict[str, Any]:
    facts = build_scenario(evm_node.url)
    rpc(evm_node.url, "anvil_mine", "0x3")  # a few empty blocks above it
    return facts


def cs(address: str) -> str:
    return str(to_checksum_address(address))


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v3/SECRET"


def config(*urls: str, chain: str = "eth", chain_id: int = 31337, token: str | None = None,
           **overrides: Any) -> ChainConfig:
    raw: dict[str, Any] = {
        "family": "evm", "chain_id": chain_id,
        "endpoints": [{"name": f"n{i}", "url": u} for i, u in enumerate(urls)],
        "native_asset": {"symbol": "ETH", "decimals": 18},
        "tokens": [{"contract": token, "symbol": "TKN", "decimals": 6}] if token else [],
        "rpc_timeout_ms": 2000, "rpc_max_attempts": 3,
    }
    raw.update(overrides)
    cfg = parse({"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "chains": {chain: raw}})
    return cfg.chains[next(iter(cfg.chains))]


CODEC: AddressCodec = EvmAddressCodec()  # the protocols are met (checked by mypy)


def watched_of(facts: dict[str, Any]) -> set[bytes]:
    return {bytes.fromhex(facts["watched"][2:]), bytes.fromhex(facts["reverter"][2:])}


def errors(chain: str, endpoint: str) -> float:
    return REGISTRY.get_sample_value("watcher_rpc_errors_total", {
        "chain": chain, "endpoint": endpoint, "kind": "retriable"}) or 0.0


async def test_chain_id_mismatch_names_the_endpoint(evm_node: AnvilService,
                                                    anvil_factory: AnvilFactory) -> None:
    src: ChainSource = build_source(config(evm_node.url, chain_id=1))
    try:
        # A wrong chain is an endpoint state, never a crash: nothing alive is retriable.
        with pytest.raises(ChainError, match="n0 wrong_chain") as info:
            await src.verify_identity()
        assert info.value.kind is ErrorKind.RETRIABLE
    finally:
        await src.close()
    other = anvil_factory(chain_id=5)
    src = build_source(config(evm_node.url, other.url))
    try:
        await src.verify_identity()  # the good one serves, the other is set aside
        assert isinstance(src, EvmChainSource)
        view = src.endpoint_states()["n1"]
        assert view.state is EndpointState.WRONG_CHAIN
        assert "n1 serves chain id 5" in (view.problem or "")
        assert other.url not in (view.problem or "")
        assert src.pool.followed == "n0"
    finally:
        await src.close()
        anvil_factory.stop(other)


async def test_head_headers_and_contents(evm_node: AnvilService, scenario: dict[str, Any]) -> None:
    src = build_source(config(evm_node.url, token=scenario["payer"], chain="eth-main",
                              max_concurrency=2))
    try:
        await src.verify_identity()
        assert src.traces_enabled is True  # anvil has debug_traceBlockByHash + callTracer
        head = await src.head()
        assert head.number == scenario["block_number"] + 3
        assert head.finalized_number is None  # finality by depth: not asked

        refs = await src.headers(0, head.number + 10)  # fewer: the tip is below
        assert [r.number for r in refs] == list(range(head.number + 1))
        assert refs[-1].hash == head.hash
        for parent, child in itertools.pairwise(refs):
            assert child.parent_hash == parent.hash
        assert await src.headers(head.number + 1, 5) == []

        target = refs[scenario["block_number"]]
        assert target.hash == scenario["block_hash"]
        assert await src.header_by_hash(target.hash) == target
        assert await src.header_by_hash(BlockHash("0x" + "12" * 32)) is None

        contents = await src.contents(refs, watched_of(scenario))
        assert [c.ref for c in contents] == refs  # in the order given
        assert all(not c.transfers for c in contents if c.ref != target)
        (found,) = [c for c in contents if c.ref == target]
        txs = scenario["txs"]
        w = cs(scenario["watched"])
        # the unwatched transfer and the reverted one to a watched address give nothing
        assert [(t.txid, t.locator, t.asset, t.to_address, t.amount) for t in found.transfers] \
            == [(txs["eth_to_watched"], "tx", "ETH", w, 10**18),
                (txs["payer"], "trace:1", "ETH", w, 7),
                (txs["payer"], "log:0", "TKN", w, 1000)]
        log_transfer = found.transfers[2]
        assert log_transfer.token_contract == cs(scenario["payer"])
        assert log_transfer.decimals == 6
        assert log_transfer.from_address == cs(
            "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266")

        assert await src.contents([], watched_of(scenario)) == []
        nothing = await src.contents([target], set())
        assert nothing[0].transfers == ()
    finally:
        await src.close()


async def test_traces_off_and_finalized_tag(evm_node: AnvilService, scenario: dict[str, Any]) -> None:
    src = build_source(config(evm_node.url, token=scenario["payer"], chain="eth-off", traces="off",
                              finality={"mode": "finalized"}))
    try:
        head = await src.head()  # verifies on first use
        assert src.traces_enabled is False
        assert head.finalized_number is not None  # anvil: latest - 64, at least 0
        assert 0 <= head.finalized_number <= head.number
        target = BlockRef(scenario["block_number"], scenario["block_hash"],
                          (await src.headers(scenario["block_number"], 1))[0].parent_hash)
        (found,) = await src.contents([target], watched_of(scenario))
        assert [t.locator for t in found.transfers] == ["tx", "log:0"]
    finally:
        await src.close()


async def test_unknown_block_hash_is_retriable(evm_node: AnvilService) -> None:
    src = build_source(config(evm_node.url, chain="eth-unknown", rpc_max_attempts=2))
    try:
        await src.verify_identity()
        ghost = BlockRef(1, BlockHash("0x" + "ab" * 32), BlockHash("0x" + "cd" * 32))
        with pytest.raises(ChainError) as info:
            await src.contents([ghost], set())
        assert info.value.kind is ErrorKind.RETRIABLE
    finally:
        await src.close()


async def test_failover_from_a_dead_endpoint(evm_node: AnvilService, scenario: dict[str, Any]) -> None:
    pool = build_pool(config(dead_url(), evm_node.url, chain="eth-pool"),
                      retry=RetryPolicy(max_attempts=3).without_waiting())
    try:
        await pool.refresh()
        assert await pool.ask(lambda c: c.call("eth_chainId", []), what="id") == "0x7a69"
        assert pool.followed == "n1"
        assert pool.states()["n0"].state is EndpointState.UNREACHABLE
        assert errors("eth-pool", "n0") == 1
        assert errors("eth-pool", "n1") == 0
    finally:
        await pool.close()

    src: EvmChainSource = build_source(config(dead_url(), evm_node.url, chain="eth-failover",
                                              token=scenario["payer"]))
    try:
        await src.verify_identity()  # the dead one stays unused, the live one serves
        head = await src.head()
        assert head.number >= scenario["block_number"]
        assert src.pool.followed == "n1"
        refs = await src.headers(scenario["block_number"], 1)
        (found,) = await src.contents(refs, watched_of(scenario))
        assert len(found.transfers) == 3
        assert errors("eth-failover", "n0") >= 1
        sample = REGISTRY.get_sample_value("watcher_endpoint_in_sync", {
            "chain": "eth-failover", "endpoint": "n0"})
        assert sample == 0
    finally:
        await src.close()


async def test_no_endpoint_reachable(evm_node: AnvilService) -> None:
    src = build_source(config(dead_url(), chain="eth-none", rpc_max_attempts=1))
    try:
        with pytest.raises(ChainError) as info:
            await src.verify_identity()
        assert info.value.kind is ErrorKind.RETRIABLE
        with pytest.raises(ChainError):
            await src.head()
    finally:
        await src.close()


@pytest.fixture
async def fakes() -> AsyncIterator[list[FakeNode]]:
    made: list[FakeNode] = []
    yield made
    for n in made:
        await n.stop()


def fake_chain(height: list[int]) -> Respond:
    """A node at ``height[0]`` (mutable), on the same chain as anvil, unable to trace."""
    def answer(call: dict[str, Any]) -> dict[str, Any]:
        method, params = call["method"], call["params"]
        out: dict[str, Any] = {"jsonrpc": "2.0", "id": call["id"]}
        if method == "eth_chainId":
            out["result"] = "0x7a69"
        elif method == "eth_getBlockByNumber" and params[0] in ("latest", "finalized"):
            n = height[0] if params[0] == "latest" else max(0, height[0] - 64)
            out["result"] = {"number": hex(n), "hash": "0x" + f"{n:064x}",
                             "parentHash": "0x" + f"{max(n - 1, 0):064x}", "timestamp": "0x1"}
        else:
            out["error"] = {"code": -32601, "message": "Method not found"}
        return out

    def respond(payload: Any) -> tuple[int, Any]:
        if isinstance(payload, list):
            return 200, [answer(c) for c in payload]
        return 200, answer(payload)
    return respond


async def test_lagging_endpoint_is_never_followed(fakes: list[FakeNode]) -> None:
    a_height, b_height = [100], [100]
    a = await node(fakes, fake_chain(a_height))
    b = await node(fakes, fake_chain(b_height))
    src = build_source(config(a.url, b.url, chain="eth-lag", lag_tolerance_blocks=2,
                              finality={"mode": "finalized"}))

    def in_sync(name: str) -> float | None:
        return REGISTRY.get_sample_value("watcher_endpoint_in_sync",
                                         {"chain": "eth-lag", "endpoint": name})
    try:
        await src.verify_identity()
        assert src.traces_enabled is False  # auto: method not found
        head = await src.head()
        assert (head.number, head.finalized_number, src.pool.followed) == (100, 36, "n0")
        a_height[0] = 90  # n0 falls behind: its older head is never the answer
        b_height[0] = 101
        head = await src.head()
        assert (head.number, src.pool.followed) == (101, "n1")
        assert (in_sync("n0"), in_sync("n1")) == (0, 1)
        a_height[0] = 102  # back within tolerance, and even ahead: no flapping
        head = await src.head()
        assert (head.number, src.pool.followed) == (101, "n1")
        assert (in_sync("n0"), in_sync("n1")) == (1, 1)
        assert REGISTRY.get_sample_value("watcher_node_head_height", {"chain": "eth-lag"}) == 101
        assert REGISTRY.get_sample_value("watcher_endpoint_head_height",
                                         {"chain": "eth-lag", "endpoint": "n0"}) == 102
        await b.stop()  # the followed one dies: the other one is followed
        head = await src.head()
        assert (head.number, src.pool.followed) == (102, "n0")
    finally:
        await src.close()
