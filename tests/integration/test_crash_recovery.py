"""SIGKILL chaos: the watcher daemon killed at random moments while deposits, blocks and
reorgs keep coming; the committed stream must still tell every fact exactly once.

The watcher runs as a subprocess (``python -m watcher.cli run --config FILE``) and is
SIGKILLed at least ``MIN_KILLS`` times, each time restarted after a short random delay.
Meanwhile ETH and token deposits to registered addresses (and noise to others) are sent,
empty blocks mined and ``anvil_reorg`` run (depth 1-3, removed transactions either all
re-mined at random offsets or all dropped). At the end the chain stands still, the
watcher catches up and is stopped with SIGTERM, and the whole deposits topic is read
with ``read_committed`` and checked against anvil.

Reproduce a run with ``CRASH_TEST_SEED=<seed printed by the test>``; ``CRASH_TEST_SECONDS``
sets the chaos phase's length (default 75).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from web3.contract import AsyncContract

from tests.support.oracle import check_stream
from tests.support.services import AnvilFactory, KafkaService, ServiceManager
from tests.support.solidity import (
    Chain,
    Event,
    Sent,
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

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAOS_SECONDS = float(os.environ.get("CRASH_TEST_SECONDS", "75"))
MIN_KILLS = 20
REQUIRED = {"ETH": 3, "TKN": 2}


def python() -> str:
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


class Daemon:
    """The watcher as a subprocess; every run's output appended to one log file."""

    def __init__(self, config: Path, log: Path, metrics: str) -> None:
        self.config, self.log, self.metrics = config, log, metrics
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.kills = 0
        self.kills_while_ready = 0
        self.killed_after: list[float] = []
        self._started_at = 0.0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== run {self.runs} =====\n".encode())
            out.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(
                [python(), "-m", "watcher.cli", "run", "--config", str(self.config)],
                cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        self._started_at = time.monotonic()

    def check_alive(self) -> None:
        """Fails if the daemon exited by itself (it is only ever killed by this test)."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the watcher exited by itself with {self.proc.returncode} "
                                 f"in run {self.runs}; log tail:\n{self.tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.check_alive()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.killed_after.append(time.monotonic() - self._started_at)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.check_alive()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the watcher did not stop within {timeout_s}s of SIGTERM; "
                                 f"log tail:\n{self.tail()}") from None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Sending:
    """Everything sent to anvil during the chaos, and what happened to the chain."""

    deposits: list[tuple[Sent, str, str, int]] = field(default_factory=list)
    """(sent, asset, to address, amount) to watched addresses."""
    noise: list[Sent] = field(default_factory=list)
    reorgs: list[tuple[int, int]] = field(default_factory=list)
    """(depth, transactions re-mined)."""
    dropped: int = 0
    blocks_mined: int = 0


async def drive(chain: Chain, token: AsyncContract, watched: Sequence[str], stranger: str,
                rng: random.Random, until: float, log: Sending,
                stop: asyncio.Event | None = None) -> None:
    """Deposits, noise, empty blocks and reorgs in random order until ``until``, or until
    ``stop`` is set. Stop it so, never by cancelling: a step cancelled after its transaction
    was sent leaves a mined deposit out of ``log``, and the oracle then calls its events
    unexpected."""
    stop = stop or asyncio.Event()
    last_reorg = time.monotonic()
    while time.monotonic() < until and not stop.is_set():
        roll = rng.random()
        if roll < 0.35:
            to, amount = rng.choice(watched), rng.randrange(1, 10**18)
            log.deposits.append((await chain.send_eth(to, amount), "ETH", to, amount))
        elif roll < 0.60:
            to, amount = rng.choice(watched), rng.randrange(1, 10**9)
            log.deposits.append((await chain.token_transfer(token, to, amount), "TKN", to,
                                 amount))
        elif roll < 0.70:
            log.noise.append(await chain.send_eth(stranger, rng.randrange(1, 10**15)))
        elif roll < 0.88 or time.monotonic() - last_reorg < 2.5:
            n = rng.randint(1, 3)
            await chain.mine(n)
            log.blocks_mined += n
        else:
            await reorg(chain, rng, log)
            last_reorg = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.02, 0.25))


async def reorg(chain: Chain, rng: random.Random, log: Sending) -> None:
    depth = rng.randint(1, 3)
    height = await chain.height()
    txids: list[str] = []
    for n in range(height - depth + 1, height + 1):
        block = await chain.rpc("eth_getBlockByNumber", hex(n), False)
        txids.extend(str(t) for t in block["transactions"])
    # All removed transactions come back (nonces in order) or none does (all dropped).
    remine = bool(txids) and rng.random() < 0.6
    pairs: list[tuple[str, int]] = []
    if remine:
        offsets = sorted(rng.randrange(depth) for _ in txids)
        pairs = [(await chain.raw_transaction(t), o) for t, o in zip(txids, offsets, strict=True)]
    else:
        log.dropped += len(txids)
    await chain.reorg(depth, pairs)
    log.reorgs.append((depth, len(pairs)))


async def wait_ready(daemon: Daemon, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.check_alive()
        with contextlib.suppress(OSError, TimeoutError):
            status, _ = await http_get(f"{daemon.metrics}/readyz", 1.0)
            if status == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"run {daemon.runs} not ready within {timeout_s}s; log tail:\n"
                                 f"{daemon.tail()}")
        await asyncio.sleep(0.05)  # polling: the daemon's readiness has no event


async def chaos_kills(daemon: Daemon, rng: random.Random, until: float) -> None:
    """Kill at a random moment of each run, restart after a short random pause; at least
    MIN_KILLS times, and on until ``until``. A quarter of the kills fall anywhere in the
    first 2.5 s (start-up: fencing, checkpoint loading), the rest within 2.5 s of the run
    being ready (following: fetching, committing)."""
    while daemon.kills < MIN_KILLS or time.monotonic() < until:
        daemon.start()
        if rng.random() < 0.25:
            await asyncio.sleep(rng.uniform(0.2, 2.5))
        else:
            await wait_ready(daemon)
            daemon.kills_while_ready += 1
            await asyncio.sleep(rng.uniform(0.0, 2.5))
        daemon.kill()
        await asyncio.sleep(rng.uniform(0.05, 0.6))
    daemon.start()


async def test_sigkill_chaos(kafka: KafkaService, anvil_factory: AnvilFactory,
                             services: ServiceManager, tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"crash test seed: {seed} (CRASH_TEST_SEED={seed} to repeat)")
    rng = random.Random(seed)

    anvil = anvil_factory()
    chain = Chain(anvil.url)
    await chain.setup()
    token = await chain.deploy("TestToken", "Test Token", "TKN", 6)
    await chain.mint(token, chain.payer, 10**30)
    uid = uuid.uuid4().hex[:10]
    watched = [new_address(f"{uid}-{i}") for i in range(4)]
    stranger = new_address(f"{uid}-stranger")
    port = services.free_port()
    metrics = f"http://127.0.0.1:{port}"
    raw = watcher_config(
        bootstrap_servers=kafka.bootstrap_servers, uid=uid, endpoints=[("anvil", anvil.url)],
        start_block=await chain.height(), metrics_port=port,
        tokens=[{"contract": str(token.address), "symbol": "TKN", "decimals": 6}],
        confirmations=REQUIRED, reorg_window=32, finality_depth=20)
    config = tmp_path / "watcher.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse(raw)
    await ensure_topics(cfg.kafka)
    await produce(kafka.bootstrap_servers, cfg.kafka.topics.address_registrations,
                  [registration("eth", a, f"customer-{i}") for i, a in enumerate(watched)])
    # The start block must stay below every reorg: a fork under the window's bottom halts.
    await chain.mine(5)

    daemon = Daemon(config, tmp_path / "watcher.log", metrics)
    sending = Sending()
    started = time.monotonic()
    until = started + CHAOS_SECONDS
    try:
        killer = asyncio.create_task(chaos_kills(daemon, rng, until))
        driver = asyncio.create_task(drive(chain, token, watched, stranger,
                                           random.Random(rng.random()), until, sending))
        try:
            await asyncio.gather(killer, driver)
        finally:
            for task in (killer, driver):
                task.cancel()
            await asyncio.gather(killer, driver, return_exceptions=True)
        chaos_s = time.monotonic() - started

        # The chain stands still; the last run catches up.
        await chain.mine(max(REQUIRED.values()) + 3)
        height = await chain.height()

        async def caught_up() -> bool:
            daemon.check_alive()
            try:
                return await scrape(metrics, "watcher_processed_height", chain="eth") == height
            except (OSError, TimeoutError, AssertionError):
                return False
        deadline = time.monotonic() + 60
        while not await caught_up():
            if time.monotonic() > deadline:
                raise AssertionError(f"the watcher did not reach height {height} within 60s "
                                     f"(seed {seed}); log tail:\n{daemon.tail()}")
            await asyncio.sleep(0.2)  # polling: the daemon's progress has no event
        status, body = await http_get(f"{metrics}/readyz")
        assert status == 200, f"/readyz after catching up: {status} {body}"
        assert daemon.terminate() == 0, f"exit code after SIGTERM; log:\n{daemon.tail()}"
    finally:
        daemon.close()

    reader = TopicReader(kafka.bootstrap_servers, cfg.kafka.topics.deposits)
    await reader.start()
    try:
        events = await reader.read_to_end()
    finally:
        await reader.stop()
    canonical = {n: await chain.block_hash_at(n) for n in range(height + 1)}
    receipts = {s.txid: await chain.receipt(s.txid) for s, *_ in sending.deposits}

    print(f"seed {seed}: {chaos_s:.0f}s of chaos, {daemon.kills} SIGKILLs "
          f"({daemon.kills_while_ready} of them while ready; after "
          f"{min(daemon.killed_after):.1f}-{max(daemon.killed_after):.1f}s of run), "
          f"{len(sending.deposits)} deposits sent, {len(sending.noise)} noise, "
          f"{len(sending.reorgs)} reorgs {sending.reorgs}, {sending.dropped} txs dropped, "
          f"{len(events)} events, final height {height}")
    problems = check(events, canonical, height, sending, receipts)
    assert not problems, (f"seed {seed}: {len(problems)} problems:\n" + "\n".join(problems[:40])
                          + f"\nstream:\n{summary(events, 80)}")
    assert daemon.kills >= MIN_KILLS


def check(events: list[Event], canonical: dict[int, str | None], height: int, sending: Sending,
          receipts: dict[str, dict[str, Any] | None]) -> list[str]:
    """The oracle (``tests/support/oracle.py``) over what one chaos run sent; the other chaos
    tests (lying endpoints, two replicas, operator commands) judge their runs with it too."""
    return check_stream(events, canonical, height, sending.deposits,
                        {s.txid for s in sending.noise}, receipts, REQUIRED)
