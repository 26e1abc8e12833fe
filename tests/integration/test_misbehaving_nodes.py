"""Nodes that lie, a daemon that is SIGKILLed, and a stream that must still be the truth.

The watcher follows anvil through two fault-injecting proxies (``tests/support/faultproxy.py``):
each spoils a random share of answers the way endpoints behind load balancers do (empty
logs for a block that has them, null receipts and blocks, the wrong block for a hash, a
stale head, short or shuffled batches, 502, HTML instead of JSON, timeouts). Endpoint
``a`` also goes down now and then and comes back serving another chain for a while
(a second anvil with another chain id), then the right one again.

Meanwhile deposits, noise, empty blocks and reorgs keep coming, and the daemon is
SIGKILLed at least ``MIN_KILLS`` times. At the end the proxies turn honest, the watcher
catches up, and the whole deposits topic is checked with the crash test's oracle:
nothing lost, duplicated or wrong, and the daemon never exited by itself.

Reproduce with ``FAULT_TEST_SEED=<seed printed>``; ``FAULT_TEST_SECONDS`` sets the
length of the chaos phase (default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tests.integration.test_crash_recovery import (
    REQUIRED,
    Daemon,
    Sending,
    check,
    drive,
    wait_ready,
)
from tests.support.faultproxy import ANSWER_FAULTS, FaultProxy
from tests.support.services import AnvilFactory, KafkaService, ServiceManager
from tests.support.solidity import (
    Chain,
    TopicReader,
    http_get,
    new_address,
    produce,
    registration,
    scrape,
    summary,
    watcher_config,
)
from watcher.config import parse
from watcher.kafka.client import ensure_topics

pytestmark = pytest.mark.integration

CHAOS_SECONDS = float(os.environ.get("FAULT_TEST_SECONDS", "60"))
MIN_KILLS = 10
FAULT_RATE = 0.08
RPC_TIMEOUT_MS = 1000


async def episodes(proxy: FaultProxy, rng: random.Random, until: float,
                   seen: Counter[str]) -> None:
    """Endpoint ``a`` goes down, comes back on another chain, then on the right one."""
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(4.0, 8.0))
        proxy.set_mode("down")
        seen["down"] += 1
        await asyncio.sleep(rng.uniform(1.5, 3.0))
        proxy.set_mode("wrong_chain")
        seen["wrong_chain"] += 1
        await asyncio.sleep(rng.uniform(2.0, 4.0))
        proxy.set_mode("normal")


async def kills(daemon: Daemon, rng: random.Random, until: float) -> None:
    while daemon.kills < MIN_KILLS or time.monotonic() < until:
        daemon.start()
        if rng.random() < 0.25:
            await asyncio.sleep(rng.uniform(0.3, 2.5))
        else:
            # Readiness can flap while endpoints lie; a run that is slow to get ready is
            # killed anyway, which is a start-up kill like the others.
            with contextlib.suppress(AssertionError):
                await wait_ready(daemon, timeout_s=15.0)
                daemon.kills_while_ready += 1
            await asyncio.sleep(rng.uniform(0.5, 3.0))
        daemon.kill()
        await asyncio.sleep(rng.uniform(0.05, 0.5))
    daemon.start()


async def test_lying_endpoints_and_sigkills(kafka: KafkaService, anvil_factory: AnvilFactory,
                                            services: ServiceManager, tmp_path: Path) -> None:
    seed = int(os.environ.get("FAULT_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"fault test seed: {seed} (FAULT_TEST_SEED={seed} to repeat)")
    rng = random.Random(seed)

    anvil = anvil_factory()
    other = anvil_factory(chain_id=1337)
    chain = Chain(anvil.url)
    await chain.setup()
    await Chain(other.url).mine(await chain.height() + 5)
    token = await chain.deploy("TestToken", "Test Token", "TKN", 6)
    await chain.mint(token, chain.payer, 10**30)

    proxies = {
        "a": FaultProxy(anvil.url, other_chain=other.url, fault_rate=FAULT_RATE,
                        rng=random.Random(rng.random()), timeout_delay_s=RPC_TIMEOUT_MS / 500),
        "b": FaultProxy(anvil.url, fault_rate=FAULT_RATE, rng=random.Random(rng.random()),
                        timeout_delay_s=RPC_TIMEOUT_MS / 500),
    }
    for p in proxies.values():
        await p.start(services.free_port())

    uid = uuid.uuid4().hex[:10]
    watched = [new_address(f"{uid}-{i}") for i in range(4)]
    stranger = new_address(f"{uid}-stranger")
    port = services.free_port()
    metrics = f"http://127.0.0.1:{port}"
    raw = watcher_config(
        bootstrap_servers=kafka.bootstrap_servers, uid=uid,
        endpoints=[(name, p.url) for name, p in proxies.items()],
        start_block=await chain.height(), metrics_port=port,
        tokens=[{"contract": str(token.address), "symbol": "TKN", "decimals": 6}],
        confirmations=REQUIRED, reorg_window=32, finality_depth=20)
    raw["chains"]["eth"]["rpc_timeout_ms"] = RPC_TIMEOUT_MS
    raw["chains"]["eth"]["rpc_max_attempts"] = 6
    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse(raw)
    await ensure_topics(cfg.kafka)
    await produce(kafka.bootstrap_servers, cfg.kafka.topics.address_registrations,
                  [registration("eth", a, f"customer-{i}") for i, a in enumerate(watched)])
    await chain.mine(5)

    daemon = Daemon(config, tmp_path / "watcher.log", metrics)
    sending = Sending()
    modes: Counter[str] = Counter()
    started = time.monotonic()
    until = started + CHAOS_SECONDS
    try:
        tasks = [
            asyncio.create_task(kills(daemon, rng, until)),
            asyncio.create_task(drive(chain, token, watched, stranger,
                                      random.Random(rng.random()), until, sending)),
            asyncio.create_task(episodes(proxies["a"], random.Random(rng.random()), until,
                                         modes)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        chaos_s = time.monotonic() - started

        # The endpoints turn honest and the chain stands still; the last run catches up.
        for p in proxies.values():
            p.set_mode("normal")
            p.fault_rate = 0.0
        await chain.mine(max(REQUIRED.values()) + 3)
        height = await chain.height()
        deadline = time.monotonic() + 90
        while True:
            daemon.check_alive()
            with contextlib.suppress(OSError, TimeoutError, AssertionError):
                if await scrape(metrics, "watcher_processed_height", chain="eth") == height:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"the watcher did not reach height {height} within 90s "
                                     f"(seed {seed}); log tail:\n{daemon.tail()}")
            await asyncio.sleep(0.2)  # polling: the daemon's progress has no event
        status, body = await http_get(f"{metrics}/readyz")
        assert status == 200, f"/readyz after catching up: {status} {body}"
        assert daemon.terminate() == 0, f"exit code after SIGTERM; log:\n{daemon.tail()}"
    finally:
        daemon.close()
        for p in proxies.values():
            await p.stop()

    reader = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.deposits)
    await reader.start()
    try:
        events = await reader.read_to_end()
    finally:
        await reader.stop()
    canonical = {n: await chain.block_hash_at(n) for n in range(height + 1)}
    receipts = {s.txid: await chain.receipt(s.txid) for s, *_ in sending.deposits}
    injected = proxies["a"].injected + proxies["b"].injected
    print(f"seed {seed}: {chaos_s:.0f}s of chaos, {daemon.kills} SIGKILLs "
          f"({daemon.kills_while_ready} while ready), {len(sending.deposits)} deposits, "
          f"{len(sending.reorgs)} reorgs, {len(events)} events, final height {height}; "
          f"faults injected {dict(injected)}; episodes {dict(modes)}; requests "
          f"{ {n: p.requests for n, p in proxies.items()} }")
    problems = check(events, canonical, height, sending, receipts)
    assert not problems, (f"seed {seed}: {len(problems)} problems:\n" + "\n".join(problems[:40])
                          + f"\nstream:\n{summary(events, 80)}")
    assert daemon.kills >= MIN_KILLS
    # The run proves something only if every kind of lie was told at least once.
    missing = [f for f in (*ANSWER_FAULTS, "down", "wrong_chain") if injected[f] == 0]
    assert not missing, f"seed {seed}: faults never injected: {missing}"
