"""Leadership on real Kafka: one leader per chain, a clean handover, a takeover after a crash.

The in-process part drives :class:`KafkaLeadership` instances directly; the daemon part runs
two real watcher processes for one chain on anvil, SIGKILLs whichever leads, again and
again, and checks that the other takes over within the bound and that the committed
deposit stream is still exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.integration.test_crash_recovery import REQUIRED, Daemon, Sending, check, drive
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
    topic_names,
    watcher_config,
)
from watcher.config import parse
from watcher.kafka.client import ensure_topics
from watcher.kafka.leadership import KafkaLeadership

pytestmark = pytest.mark.integration

SESSION_TIMEOUT_MS = 6_000
TAKEOVER_BOUND_S = 30.0


def _kafka_cfg(kafka: KafkaService, uid: str) -> object:
    raw = watcher_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid,
                         endpoints=[("n", "http://127.0.0.1:1")], start_block=0, metrics_port=1,
                         tokens=[], confirmations={"ETH": 1})
    return parse(raw).kafka


async def wait_healthy(d: Daemon, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        d.check_alive()
        with contextlib.suppress(OSError, TimeoutError):
            if (await http_get(f"{d.metrics}/healthz", 1.0))[0] == 200:
                return
        assert time.monotonic() < deadline, f"not healthy within {timeout_s}s:\n{d.tail()}"
        await asyncio.sleep(0.1)  # polling: start-up has no event


async def _leaders(members: list[KafkaLeadership], timeout_s: float = 20.0) -> list[int]:
    """Indexes of the members that lead, once exactly one does (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        leading = [i for i, m in enumerate(members) if m.is_leader()]
        if len(leading) == 1 or time.monotonic() > deadline:
            return leading
        await asyncio.sleep(0.05)  # polling: the rebalance has no event we can await here


async def test_one_leader_and_a_clean_handover(kafka: KafkaService) -> None:
    kcfg = _kafka_cfg(kafka, uuid.uuid4().hex[:10])
    await ensure_topics(kcfg)  # type: ignore[arg-type]
    members = [KafkaLeadership(kcfg, "eth", session_timeout_ms=SESSION_TIMEOUT_MS)  # type: ignore[arg-type]
               for _ in range(3)]
    other_chain = KafkaLeadership(kcfg, "btc", session_timeout_ms=SESSION_TIMEOUT_MS)  # type: ignore[arg-type]
    try:
        for m in [*members, other_chain]:
            await m.start()
        first = await _leaders(members)
        assert len(first) == 1, f"leaders after start: {first}"
        # Chains are elected apart: the btc group has its own leader.
        await asyncio.wait_for(other_chain.wait_leading(), 20)
        # Still exactly one a while later (it may have moved while the last members joined:
        # the range assignor hands the partition to the first member id, not the old owner).
        await asyncio.sleep(2)
        first = await _leaders(members)
        assert len(first) == 1, f"leaders a while later: {first}"
        started = time.monotonic()
        await members[first[0]].stop()  # leaves the group: the handover is immediate
        rest = [m for i, m in enumerate(members) if i != first[0]]
        second = await _leaders(rest)
        assert len(second) == 1, f"leaders after the leader left: {second}"
        assert time.monotonic() - started < SESSION_TIMEOUT_MS / 1000, "a clean stop hands over at once"
    finally:
        for m in [*members, other_chain]:
            await m.stop()


async def test_the_leader_keeps_the_lead_while_others_join_and_leave(kafka: KafkaService) -> None:
    """A standby replica restarting (a rolling deploy, a crash loop) must not move the lead:
    every move restarts the chain's follower. With the range assignor the partition goes to
    the smallest member id, so about half of these rejoins would move it."""
    kcfg = _kafka_cfg(kafka, uuid.uuid4().hex[:10])
    await ensure_topics(kcfg)  # type: ignore[arg-type]
    leader = KafkaLeadership(kcfg, "eth", session_timeout_ms=SESSION_TIMEOUT_MS)  # type: ignore[arg-type]
    lost: list[float] = []
    try:
        await leader.start()
        await asyncio.wait_for(leader.wait_leading(), 20)
        watch = asyncio.create_task(leader.wait_lost())
        watch.add_done_callback(lambda _t: lost.append(time.monotonic()))
        for round_ in range(6):
            other = KafkaLeadership(kcfg, "eth", session_timeout_ms=SESSION_TIMEOUT_MS)  # type: ignore[arg-type]
            await other.start()
            # Joined once the group settled: the newcomer stands by, the leader still leads.
            await asyncio.sleep(1.5)
            assert leader.is_leader(), f"round {round_}: the lead moved to a newcomer"
            assert not other.is_leader(), f"round {round_}: two leaders"
            await other.stop()  # leaves the group: one more rebalance
            await asyncio.sleep(0.5)
        assert not lost, "the leader stepped down during a rebalance"
        assert leader.is_leader()
        watch.cancel()
    finally:
        await leader.stop()


async def test_two_partitions_refused(kafka: KafkaService) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    uid = uuid.uuid4().hex[:10]
    kcfg = _kafka_cfg(kafka, uid)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic_names(uid)["leadership"], 2, 1)])
    finally:
        await admin.close()
    member = KafkaLeadership(kcfg, "eth", session_timeout_ms=SESSION_TIMEOUT_MS)  # type: ignore[arg-type]
    await member.start()
    try:
        with pytest.raises(Exception, match="exactly one partition"):
            await asyncio.wait_for(member.wait_leading(), 20)
        assert not member.is_leader()
    finally:
        await member.stop()


async def test_two_daemons_sigkill_the_leader(kafka: KafkaService, anvil_factory: AnvilFactory,
                                              services: ServiceManager, tmp_path: Path) -> None:
    seed = int(os.environ.get("LEADER_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"leadership test seed: {seed} (LEADER_TEST_SEED={seed} to repeat)")
    rng = random.Random(seed)
    anvil = anvil_factory()
    chain = Chain(anvil.url)
    await chain.setup()
    token = await chain.deploy("TestToken", "Test Token", "TKN", 6)
    await chain.mint(token, chain.payer, 10**30)
    uid = uuid.uuid4().hex[:10]
    watched = [new_address(f"{uid}-{i}") for i in range(3)]
    stranger = new_address(f"{uid}-stranger")
    daemons: list[Daemon] = []
    cfg = None
    for i in range(2):
        port = services.free_port()
        raw = watcher_config(
            bootstrap_servers=kafka.bootstrap_servers, uid=uid, endpoints=[("anvil", anvil.url)],
            start_block=await chain.height(), metrics_port=port,
            tokens=[{"contract": str(token.address), "symbol": "TKN", "decimals": 6}],
            confirmations=REQUIRED, reorg_window=32, finality_depth=20)
        raw["leadership"] = {"enabled": True, "session_timeout_ms": SESSION_TIMEOUT_MS}
        path = tmp_path / f"watcher-{i}.yaml"
        path.write_text(yaml.safe_dump(raw))
        cfg = parse(raw)
        daemons.append(Daemon(path, tmp_path / f"watcher-{i}.log", f"http://127.0.0.1:{port}"))
    assert cfg is not None
    await ensure_topics(cfg.kafka)
    await produce(kafka.bootstrap_servers, cfg.kafka.topics.address_registrations,
                  [registration("eth", a, f"customer-{i}") for i, a in enumerate(watched)])
    await chain.mine(5)

    async def role(d: Daemon) -> float | None:
        with contextlib.suppress(OSError, TimeoutError, AssertionError):
            return await scrape(d.metrics, "watcher_leader", chain="eth")
        return None

    down: set[int] = set()  # indexes of daemons this test killed and did not restart yet

    async def leader(timeout_s: float) -> Daemon:
        deadline = time.monotonic() + timeout_s
        while True:
            running = [d for i, d in enumerate(daemons) if i not in down]
            for d in running:
                d.check_alive()
            leading = [d for d in running if await role(d) == 1]
            if len(leading) == 1:
                return leading[0]
            assert len(leading) < 2, "two replicas lead at once"
            if time.monotonic() > deadline:
                raise AssertionError(f"no leader within {timeout_s}s; logs:\n"
                                     + "\n".join(d.tail(20) for d in daemons))
            await asyncio.sleep(0.2)  # polling: leadership shows only in metrics

    sending = Sending()
    takeovers: list[float] = []
    kills = 4
    for d in daemons:
        d.start()
    try:
        stop_driving = asyncio.Event()
        driver = asyncio.create_task(drive(chain, token, watched, stranger,
                                           random.Random(rng.random()),
                                           time.monotonic() + 10_000, sending, stop_driving))
        try:
            current = await leader(40)
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                current.kill()
                killed_at = time.monotonic()
                down.add(daemons.index(current))
                survivor = next(d for d in daemons if d is not current)
                new = await leader(TAKEOVER_BOUND_S + 10)
                assert new is survivor
                takeovers.append(time.monotonic() - killed_at)
                current.start()  # back as the standby
                down.clear()
                current = new
        finally:
            # Its step in flight finishes and is logged (a cancel could lose a sent deposit).
            stop_driving.set()
            await driver
        await chain.mine(max(REQUIRED.values()) + 3)
        height = await chain.height()
        deadline = time.monotonic() + 60
        while True:
            lead = await leader(30)
            with contextlib.suppress(OSError, TimeoutError, AssertionError):
                if await scrape(lead.metrics, "watcher_processed_height", chain="eth") == height:
                    break
            assert time.monotonic() < deadline, f"not caught up to {height}:\n{lead.tail()}"
            await asyncio.sleep(0.2)
        for d in daemons:
            # A restarted standby must have installed its signal handlers before SIGTERM.
            await wait_healthy(d)
            assert d.terminate() == 0, d.tail()
    finally:
        for d in daemons:
            d.close()

    reader = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.deposits)
    await reader.start()
    try:
        events = await reader.read_to_end()
    finally:
        await reader.stop()
    canonical = {n: await chain.block_hash_at(n) for n in range(height + 1)}
    receipts = {s.txid: await chain.receipt(s.txid) for s, *_ in sending.deposits}
    print(f"seed {seed}: takeovers after SIGKILL {[round(t, 1) for t in takeovers]} s; "
          f"{len(sending.deposits)} deposits, {len(sending.reorgs)} reorgs, {len(events)} events")
    problems = check(events, canonical, height, sending, receipts)
    assert not problems, "\n".join(problems[:40]) + f"\n{summary(events, 60)}"
    assert max(takeovers) <= TAKEOVER_BOUND_S
