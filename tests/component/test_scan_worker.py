"""Catch-up ranges scanned by the second process give what the in-process scan gives, lies
included: a lie is refused (and counted) the same way, a doubtful empty logs answer is
settled by receipts, a changed watched set or a dead worker falls back to the process."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import AsyncIterator, Sequence

import pytest
from aiohttp import web

from chains.evm.adapter import EvmChainSource, build_pool
from tests.chainsim import addr, key_of
from tests.component.conftest import chain_config
from tests.evmsim import TOKEN, EvmSim, FaultyNode, SimTx, h, random_txs
from watcher.core.addresses import AddressIndex
from watcher.metrics import REGISTRY
from watcher.types import BlockHash, BlockRef, ChainId

WATCHED = [addr(0xA000 + i) for i in range(6)]
STRANGERS = [addr(0xB000 + i) for i in range(20)]


class Served:
    """A :class:`FaultyNode` behind a real HTTP server (the worker speaks HTTP itself)."""

    def __init__(self, node: FaultyNode) -> None:
        self.node = node
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            status, body = await self.node(await request.read(), 30.0)
            return web.Response(status=status, body=body, content_type="application/json")

        app = web.Application()
        app.router.add_post("/", handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[list[Served]]:
    made: list[Served] = []
    yield made
    for s in made:
        await s.stop()


async def serve(servers: list[Served], node: FaultyNode) -> Served:
    s = Served(node)
    await s.start()
    servers.append(s)
    return s


def chain(blocks: int, seed: int) -> tuple[EvmSim, list[BlockRef]]:
    rng = random.Random(seed)
    sim = EvmSim()
    for n in range(blocks):
        txs = random_txs(rng, n + 1, WATCHED, STRANGERS, rng.randint(0, 8))
        if n % 7 == 3:  # a token deposit the logs answer could hide
            txs.append(SimTx(h("pay", n), STRANGERS[0], TOKEN, 0,
                             token_transfers=((TOKEN, WATCHED[1], 1000 + n),)))
        sim.mine(txs)
    refs = []
    for bh in sim.canonical[1:]:
        b = sim.blocks[bh]
        refs.append(BlockRef(int(b["number"], 16), BlockHash(b["hash"]),
                             BlockHash(b["parentHash"]), int(b["timestamp"], 16)))
    return sim, refs


def index() -> AddressIndex:
    ix = AddressIndex(20)
    for a in WATCHED:
        ix.add(key_of(a))
    return ix


def summary(contents: Sequence[object]) -> list[tuple[str, tuple[tuple[str, str, int], ...]]]:
    return [(c.ref.hash, tuple((t.txid, t.locator, t.amount) for t in c.transfers))  # type: ignore[attr-defined]
            for c in contents]


async def truth(sim: EvmSim, refs: Sequence[BlockRef], watched: AddressIndex, chain_id: str
                ) -> list[tuple[str, tuple[tuple[str, str, int], ...]]]:
    """The in-process scan over an honest node."""
    cfg = dataclasses.replace(chain_config(endpoints=[{"name": "sim", "url": "http://127.0.0.1:1"}],
                                           traces="off"), id=ChainId(chain_id))
    src = EvmChainSource(cfg, build_pool(cfg, transports={"sim": FaultyNode(sim, random.Random(0), 0)}))
    try:
        return summary(await src.contents(refs, watched))
    finally:
        await src.close()


def worker_source(urls: dict[str, str], chain_id: str) -> EvmChainSource:
    cfg = chain_config(endpoints=[{"name": n, "url": u} for n, u in urls.items()], traces="off")
    return EvmChainSource(dataclasses.replace(cfg, id=ChainId(chain_id)), scan_worker=True)


async def worker_ready(src: EvmChainSource, watched: AddressIndex) -> None:
    await src.verify_identity()
    assert src.scan_workers
    async with asyncio.timeout(60):
        for worker in src.scan_workers:
            while not worker.usable(watched):  # noqa: ASYNC110 - the ack has no event to wait on
                await asyncio.sleep(0.05)


def worker_ranges(src: EvmChainSource) -> int:
    """Ranges served by the workers: each range gives every worker a share."""
    return min((w.ranges for w in src.scan_workers), default=0)


async def test_worker_scan_equals_the_in_process_scan(servers: list[Served]) -> None:
    sim, refs = chain(40, seed=1)
    watched = index()
    node = await serve(servers, FaultyNode(sim, random.Random(1), 0))
    src = worker_source({"only": node.url}, "w-same")
    try:
        await worker_ready(src, watched)
        got = summary(await src.contents(refs, watched))
        assert worker_ranges(src) == 1
        want = await truth(sim, refs, watched, "w-same-truth")
        assert got == want
        assert sum(len(t) for _, t in got) > 10  # the chain does pay the watched addresses
        # round trips made by the worker are recorded by the daemon, under the endpoint
        assert (REGISTRY.get_sample_value(
            "watcher_rpc_latency_seconds_count",
            {"chain": "w-same", "endpoint": "only",
             "method": "batch:eth_getBlockByHash+eth_getLogs"}) or 0) >= 10
    finally:
        await src.close()


@pytest.mark.parametrize("fault", ["wrong_block", "null_block", "short_batch", "not_json",
                                   "missing_receipt"])
async def test_a_lie_seen_by_the_worker_is_refused_and_asked_elsewhere(
        servers: list[Served], fault: str) -> None:
    sim, refs = chain(24, seed=2)
    watched = index()
    liar = await serve(servers, FaultyNode(sim, random.Random(2), 1.0, faults=(fault,)))
    honest = await serve(servers, FaultyNode(sim, random.Random(3), 0))
    chain_id = f"w-lie-{fault}"
    src = worker_source({"liar": liar.url, "honest": honest.url}, chain_id)
    try:
        await worker_ready(src, watched)
        got = summary(await src.contents(refs, watched))
        assert got == await truth(sim, refs, watched, f"{chain_id}-truth")
        assert liar.node.injected.get(fault, 0) >= 1
        if fault in ("wrong_block", "null_block", "short_batch", "missing_receipt"):
            rejected = sum(s.value for m in REGISTRY.collect()
                           if m.name == "watcher_node_answers_rejected"
                           for s in m.samples if s.labels.get("chain") == chain_id
                           and s.labels.get("endpoint") == "liar")
            assert rejected >= 1
    finally:
        await src.close()


async def test_doubtful_empty_logs_are_settled_by_receipts(servers: list[Served]) -> None:
    sim, refs = chain(21, seed=3)
    watched = index()
    node = await serve(servers, FaultyNode(sim, random.Random(4), 1.0, faults=("empty_logs",)))
    src = worker_source({"only": node.url}, "w-empty-logs")
    try:
        await worker_ready(src, watched)
        got = summary(await src.contents(refs, watched))
        assert worker_ranges(src) == 1
        assert got == await truth(sim, refs, watched, "w-empty-logs-truth")
        assert any(loc.startswith("log:") for _, ts in got for _, loc, _ in ts)
        assert node.node.methods.get("eth_getBlockReceipts", 0) >= 1
    finally:
        await src.close()


async def test_a_changed_watched_set_is_never_scanned_with_the_old_copy(
        servers: list[Served]) -> None:
    sim, refs = chain(20, seed=4)
    watched = index()
    node = await serve(servers, FaultyNode(sim, random.Random(5), 0))
    src = worker_source({"only": node.url}, "w-generation")
    try:
        await worker_ready(src, watched)
        before = summary(await src.contents(refs, watched))
        assert worker_ranges(src) == 1
        watched.add(key_of(STRANGERS[3]))  # registered now: the worker's copy is stale
        got = summary(await src.contents(refs, watched))
        # scanned in process, or by the worker once it took the new copy: with the address
        assert got == await truth(sim, refs, watched, "w-generation-truth")
        assert sum(len(t) for _, t in got) > sum(len(t) for _, t in before)
        await worker_ready(src, watched)  # the fresh copy arrives; the worker is used again
        used = worker_ranges(src)
        assert summary(await src.contents(refs, watched)) == got
        assert worker_ranges(src) == used + 1
    finally:
        await src.close()


async def test_a_dead_worker_falls_back_to_the_process(servers: list[Served]) -> None:
    sim, refs = chain(20, seed=5)
    watched = index()
    node = await serve(servers, FaultyNode(sim, random.Random(6), 0))
    src = worker_source({"only": node.url}, "w-dead")
    try:
        await worker_ready(src, watched)
        worker = src.scan_workers[0]
        assert worker.process is not None
        worker.process.kill()
        worker.process.join(10)
        got = summary(await src.contents(refs, watched))
        assert got == await truth(sim, refs, watched, "w-dead-truth")
        assert worker.failed and worker_ranges(src) == 0
        # the endpoint was never blamed for the worker's death
        assert src.endpoint_states()["only"].state.value == "alive"
    finally:
        await src.close()
