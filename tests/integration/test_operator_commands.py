"""The operator's commands and the life cycle, on real Kafka and anvil, the watcher a subprocess.

* SIGTERM during catch-up under load (a few hundred blocks with deposits, ``batch_size``
  2) exits 0 within the grace period; the next start loses and duplicates nothing
  (the read_committed stream checked as the SIGKILL chaos test checks it).
* ``watcher status`` reads the running daemon.
* ``watcher audit`` reports that range clean, and catches a deposit deleted from and
  one added to a copy of the deposits topic; ``watcher rescan`` re-derives the same
  confirmed events (dry run) and, published into an empty topic, passes the audit.
* A chain halted by a reorg deeper than its window is inspected, resumed with
  ``watcher halt resume``, and follows again.
* A start while Kafka refuses connections waits for it instead of exiting 1, and a SIGTERM
  during that wait exits 0 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from web3.contract import AsyncContract

from tests.integration.test_crash_recovery import REQUIRED, Daemon, Sending, check, python
from tests.support.kafka import read_all
from tests.support.services import AnvilFactory, KafkaService, ServiceManager, devstack
from tests.support.solidity import (
    Chain,
    http_get,
    new_address,
    produce,
    registration,
    scrape,
    summary,
    watcher_config,
)
from watcher.config import WatcherConfig, parse
from watcher.kafka.client import ensure_topics

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 10


@dataclass
class Proc:
    code: int
    out: str
    err: str


async def cli(*argv: str, timeout_s: float = 120.0) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        python(), "-m", "watcher.cli", *argv, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return Proc(proc.returncode, out.decode(), err.decode())


async def status_of(daemon: Daemon) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, TimeoutError):
        code, body = await http_get(f"{daemon.metrics}/status", 1.0)
        if code == 200:
            chain = orjson.loads(body)["chains"]["eth"]
            return chain if isinstance(chain, dict) else None
    return None


async def wait_status(daemon: Daemon, what: str, ok: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.check_alive()
        st = await status_of(daemon)
        if st is not None and ok(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s}s (last /status {st}); log:\n"
                                 f"{daemon.tail()}")
        await asyncio.sleep(0.05)  # polling: the daemon's progress has no event


@dataclass
class History:
    """An anvil with a few hundred blocks of deposits, and a config for them."""

    chain: Chain
    cfg: WatcherConfig
    config: Path
    daemon: Daemon
    sending: Sending
    start: int
    token: AsyncContract
    caught_up: bool = False


async def build_history(kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
                        tmp: Path, *, window: int = 32, finality_depth: int = 20,
                        batch_size: int = 2) -> History:
    anvil = anvil_factory()
    chain = Chain(anvil.url)
    await chain.setup()
    token = await chain.deploy("TestToken", "Test Token", "TKN", 6)
    await chain.mint(token, chain.payer, 10**30)
    uid = uuid.uuid4().hex[:10]
    port = services.free_port()
    start = await chain.height() + 1
    raw = watcher_config(
        bootstrap_servers=kafka.bootstrap_servers, uid=uid, endpoints=[("anvil", anvil.url)],
        start_block=start, metrics_port=port,
        tokens=[{"contract": str(token.address), "symbol": "TKN", "decimals": 6}],
        confirmations=REQUIRED, reorg_window=window, finality_depth=finality_depth)
    raw["chains"]["eth"]["batch_size"] = batch_size
    raw["shutdown_grace_s"] = GRACE_S
    config = tmp / "watcher.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = parse(raw)
    await ensure_topics(cfg.kafka)
    return History(chain, cfg, config, Daemon(config, tmp / "watcher.log", f"http://127.0.0.1:{port}"),
                   Sending(), start, token)


async def deposits(h: History, token_contract: AsyncContract, watched: Sequence[str], count: int) -> None:
    for i in range(count):
        to = watched[i % len(watched)]
        if i % 3 == 2:
            amount = 1000 + i
            h.sending.deposits.append((await h.chain.token_transfer(token_contract, to, amount),
                                       "TKN", to, amount))
        else:
            amount = 10**15 + i
            h.sending.deposits.append((await h.chain.send_eth(to, amount), "ETH", to, amount))
        await h.chain.mine(2)


async def check_exactly_once(h: History, height: int) -> list[dict[str, Any]]:
    """The committed deposit events up to ``height``, checked as the SIGKILL chaos test checks
    them (each deposit's lifecycle once, on canonical blocks, nothing lost or doubled)."""
    events = [orjson.loads(r.value) for r in await read_all(h.cfg.kafka, h.cfg.kafka.topics.deposits)
              if r.value is not None]
    canonical = {n: await h.chain.block_hash_at(n) for n in range(height + 1)}
    receipts = {s.txid: await h.chain.receipt(s.txid) for s, *_ in h.sending.deposits}
    problems = check(events, canonical, height, h.sending, receipts)
    assert not problems, "\n".join(problems[:40]) + f"\n{summary(events)}"
    return events


@pytest.fixture(scope="module")
async def history(kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[History]:
    h = await build_history(kafka, anvil_factory, services, tmp_path_factory.mktemp("history"))
    watched = [new_address(f"{h.cfg.kafka.client_id}-{i}") for i in range(3)]
    await produce(kafka.bootstrap_servers, h.cfg.kafka.topics.address_registrations,
                  [registration("eth", a, f"customer-{i}") for i, a in enumerate(watched)])
    await deposits(h, h.token, watched, 120)
    await h.chain.mine(5)
    try:
        yield h
    finally:
        h.daemon.close()


async def catch_up(h: History) -> int:
    """Runs the daemon until it processed anvil's tip, then stops it with SIGTERM."""
    height = await h.chain.height()
    if not h.caught_up:
        h.daemon.start()
        await wait_status(h.daemon, f"processed height {height}",
                          lambda st: st.get("processed_height") == height)
        assert h.daemon.terminate() == 0
        h.caught_up = True
    return height


async def test_sigterm_during_catch_up_drains_and_loses_nothing(history: History) -> None:
    h = history
    height = await h.chain.height()
    assert height - h.start > 300
    h.daemon.start()
    st = await wait_status(h.daemon, "catch-up under way",
                           lambda st: (st.get("processed_height") or 0) >= h.start + 40)
    assert st["processed_height"] < height - 20, "caught up before the SIGTERM: not under load"
    assert h.daemon.proc is not None
    stopped_at = time.monotonic()
    code = h.daemon.terminate(timeout_s=GRACE_S + 5)
    elapsed = time.monotonic() - stopped_at
    assert code == 0, h.daemon.tail()
    assert elapsed < GRACE_S, f"SIGTERM to exit took {elapsed:.1f}s"
    print(f"SIGTERM at processed height {st['processed_height']} of {height}: exit 0 in {elapsed:.2f}s")

    # The next start goes on from the committed checkpoint; `watcher status` reads it.
    h.daemon.start()
    await wait_status(h.daemon, "catching up after the restart",
                      lambda st: st.get("processed_height") == height)
    shown = await cli("status", "--url", h.daemon.metrics)
    assert shown.code == 0, shown.err
    row = shown.out.splitlines()[1].split()
    assert row[:5] == ["eth", "caught_up", str(height), str(height), "0"], shown.out
    assert "endpoint anvil" in shown.out
    as_json = orjson.loads((await cli("status", "--url", h.daemon.metrics, "--json")).out)
    assert as_json["chains"]["eth"]["pending_deposits"] == 0
    assert h.daemon.terminate() == 0
    h.caught_up = True

    events = await check_exactly_once(h, height)
    assert sum(e["type"] == "deposit.confirmed" for e in events) == len(h.sending.deposits)


async def test_sigterm_while_kafka_hangs_mid_commit_exits_0_within_the_grace_period(
        kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
        tmp_path: Path) -> None:
    """The in-flight step cannot finish (Kafka stopped with SIGSTOP mid catch-up): it is
    cancelled at the end of the drain, the process still exits 0 within the grace period,
    and after Kafka is back the next start loses and duplicates nothing."""
    h = await build_history(kafka, anvil_factory, services, tmp_path, batch_size=2)
    watched = [new_address(f"{h.cfg.kafka.client_id}-{i}") for i in range(2)]
    await produce(kafka.bootstrap_servers, h.cfg.kafka.topics.address_registrations,
                  [registration("eth", a) for a in watched])
    await deposits(h, h.token, watched, 60)
    await h.chain.mine(5)
    height = await h.chain.height()
    kafka_pid = devstack().read_proc(services.state_dir, "kafka").pid
    d = h.daemon
    try:
        d.start()
        st = await wait_status(d, "catch-up under way",
                               lambda st: (st.get("processed_height") or 0) >= h.start + 20)
        assert st["processed_height"] < height - 20
        os.kill(kafka_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.5)  # the next commit is now waiting on a broker that is not there
            stopped_at = time.monotonic()
            code = d.terminate(timeout_s=GRACE_S + 5)
            elapsed = time.monotonic() - stopped_at
        finally:
            os.kill(kafka_pid, signal.SIGCONT)
        assert code == 0, d.tail()
        assert elapsed < GRACE_S, f"SIGTERM to exit took {elapsed:.1f}s"
        log = d.log.read_text()
        assert "followers still busy at the end of the drain; cancelling them" in log
        print(f"SIGTERM with Kafka stopped: exit 0 in {elapsed:.2f}s")
        d.start()
        await wait_status(d, "catching up after Kafka is back",
                          lambda st: st.get("processed_height") == height, timeout_s=90)
        assert d.terminate() == 0
    finally:
        d.close()
    await check_exactly_once(h, height)


async def copy_topic(h: History, name: str, drop: set[str], add: list[dict[str, Any]]) -> str:
    topic = f"{h.cfg.kafka.topics.deposits}.{name}"
    await ensure_topics(replace(h.cfg.kafka, topics=replace(h.cfg.kafka.topics, deposits=topic)))
    records = [(r.key or b"", r.value) for r in await read_all(h.cfg.kafka, h.cfg.kafka.topics.deposits)
               if r.value is not None and orjson.loads(r.value)["event_id"] not in drop]
    records += [(doc["deposit_id"].encode(), orjson.dumps(doc)) for doc in add]
    await produce(h.cfg.kafka.bootstrap_servers, topic, records)
    return topic


async def test_audit_finds_a_deleted_and_an_added_deposit_and_rescan_rederives(
        history: History) -> None:
    h = history
    height = await catch_up(h)
    args = ["-c", str(h.config), "--chain", "eth", "--from", str(h.start), "--to", str(height)]

    began = time.monotonic()
    clean = await cli("audit", *args)
    print(f"audit of {height - h.start + 1} blocks, {len(h.sending.deposits)} deposits: "
          f"{time.monotonic() - began:.1f}s (process start included)")
    assert clean.code == 0, clean.out + clean.err
    assert clean.out == "" and "0 findings (clean)" in clean.err
    assert f"{len(h.sending.deposits)} deposits on the chain" in clean.err

    events = [orjson.loads(r.value) for r in await read_all(h.cfg.kafka, h.cfg.kafka.topics.deposits)
              if r.value is not None]
    confirmed = [e for e in events if e["type"] == "deposit.confirmed"]
    victim = confirmed[len(confirmed) // 2]
    same_deposit = {e["event_id"] for e in events if e["deposit_id"] == victim["deposit_id"]}
    fake = dict(confirmed[0], deposit_id="eth:0x" + "ab" * 32 + ":tx", txid="0x" + "ab" * 32,
                event_id="f" * 32)
    copy = await copy_topic(h, "tampered", same_deposit, [fake])
    tampered = await cli("audit", *args, "--topic", copy)
    assert tampered.code == 1, tampered.out + tampered.err
    lines = tampered.out.splitlines()
    assert len(lines) == 2, tampered.out
    assert any(line.startswith(f"missing: {victim['deposit_id']} block {victim['block_number']}")
               for line in lines), tampered.out
    assert any(line.startswith(f"extra: {fake['deposit_id']}") for line in lines), tampered.out
    doc = orjson.loads((await cli("audit", *args, "--topic", copy, "--json")).out)
    assert sorted(f["kind"] for f in doc["findings"]) == ["extra", "missing"]

    # Rescan, dry run: the same confirmed event ids as the follower's.
    dry = await cli("rescan", *args, "--dry-run")
    assert dry.code == 0, dry.err
    rederived = [orjson.loads(line) for line in dry.out.splitlines()]
    assert {e["event_id"] for e in rederived} == {e["event_id"] for e in confirmed}
    assert f"rescan eth: {height - h.start + 1}/{height - h.start + 1} blocks" in dry.err

    # Published into an empty topic, the rescan alone passes the audit.
    empty = await copy_topic(h, "rescanned", {e["event_id"] for e in events}, [])
    began = time.monotonic()
    published = await cli("rescan", *args, "--topic", empty)
    print(f"rescan (published) of {height - h.start + 1} blocks: {time.monotonic() - began:.1f}s")
    assert published.code == 0, published.err
    assert (await cli("audit", *args, "--topic", empty)).code == 0
    # A range above the processed height is a usage error, named.
    above = await cli("audit", "-c", str(h.config), "--chain", "eth", "--from", str(h.start),
                      "--to", str(height + 1000))
    assert above.code == 2 and "above the processed height" in above.err


async def test_halted_chain_is_inspected_resumed_and_follows_again(
        kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
        tmp_path: Path) -> None:
    h = await build_history(kafka, anvil_factory, services, tmp_path, window=5, finality_depth=4,
                            batch_size=10)
    alice = new_address(f"{h.cfg.kafka.client_id}-alice")
    await produce(kafka.bootstrap_servers, h.cfg.kafka.topics.address_registrations,
                  [registration("eth", alice, "alice")])
    await h.chain.mine(3)
    d = h.daemon
    try:
        d.start()
        await wait_status(d, "started", lambda st: st.get("state") == "caught_up")
        lost_confirmed = await h.chain.send_eth(alice, 111)
        await h.chain.mine(3)
        lost_pending = await h.chain.send_eth(alice, 222)
        height = await h.chain.height()
        await wait_status(d, "following", lambda st: st.get("processed_height") == height)
        refused = await cli("halt", "resume", "-c", str(h.config), "--chain", "eth",
                            "--from-block", str(height), "--reason", "test")
        assert refused.code == 1 and "not halted" in refused.err, refused.err

        fork = lost_confirmed.block_number  # the branch below the window bottom is replaced
        await h.chain.reorg(height - fork + 1)
        await h.chain.mine(1)
        await wait_status(d, "halted", lambda st: st.get("state") == "halted")

        inspected = await cli("halt", "inspect", "-c", str(h.config), "--chain", "eth")
        assert inspected.code == 0, inspected.err
        assert inspected.out.startswith("daemon: halted: reorg beyond the window"), inspected.out
        assert "checkpoint: window " in inspected.out, inspected.out
        assert "fork lies below the window bottom" in inspected.out, inspected.out

        resumed = await cli("halt", "resume", "-c", str(h.config), "--chain", "eth",
                            "--from-block", str(fork), "--reason", "fork checked with the node operator")
        assert resumed.code == 0, resumed.err
        assert f"resumed eth at block {fork}: 2 deposits reverted" in resumed.err
        assert "operator resumed the chain" in resumed.err
        assert d.terminate() == 0  # fenced and halted: it stops cleanly

        d.start()
        fresh = await h.chain.send_eth(alice, 333)
        await h.chain.mine(3)
        height = await h.chain.height()
        await wait_status(d, "following after the resume",
                          lambda st: st.get("processed_height") == height and st["state"] == "caught_up")
        assert await scrape(d.metrics, "watcher_operator_resumes_total", chain="eth") == 1
        assert d.terminate() == 0
    finally:
        d.close()
    events = [orjson.loads(r.value) for r in await read_all(h.cfg.kafka, h.cfg.kafka.topics.deposits)
              if r.value is not None]
    by_tx: dict[str, list[tuple[str, str | None]]] = {}
    for e in events:
        by_tx.setdefault(e["txid"], []).append((e["type"], e.get("previous_type")))
    # Confirmed (with or without a pending first, as the daemon happened to see it), then
    # reverted by the resume; the pending one reverted too; the new deposit confirmed.
    assert by_tx[lost_confirmed.txid][-2:] == [("deposit.confirmed", None),
                                               ("deposit.reverted", "deposit.confirmed")], summary(events)
    assert by_tx[lost_pending.txid] == [("deposit.pending", None),
                                        ("deposit.reverted", "deposit.pending")], summary(events)
    assert by_tx[fresh.txid][-1] == ("deposit.confirmed", None), summary(events)
    assert set(by_tx) == {lost_confirmed.txid, lost_pending.txid, fresh.txid}



def bootstrap_through(h: History, port: int) -> None:
    """The watcher's config bootstraps from ``127.0.0.1:port`` instead of the broker."""
    raw = yaml.safe_load(h.config.read_text())
    raw["kafka"]["bootstrap_servers"] = f"127.0.0.1:{port}"
    h.config.write_text(yaml.safe_dump(raw))


async def wait_for_kafka_retry(d: Daemon) -> float:
    """Waits until the daemon logged a start-up try against Kafka; when it started."""
    started = time.monotonic()
    while "Kafka not ready" not in (d.log.read_text() if d.log.exists() else ""):
        d.check_alive()
        assert time.monotonic() - started < 30, f"no retry logged; log:\n{d.tail()}"
        await asyncio.sleep(0.05)
    return started


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_a_start_while_kafka_refuses_connections_waits_for_it(
        kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
        tmp_path: Path) -> None:
    """Kafka not listening yet (a rolling restart, or a broker back from a pause and not yet
    registered): the start tries again, a warning at each try, instead of exiting 1. The
    watcher bootstraps through a port that refuses connections for its first 3 s and then
    forwards to the broker (which advertises its own address for everything after)."""
    h = await build_history(kafka, anvil_factory, services, tmp_path, batch_size=2)
    watched = [new_address(f"{h.cfg.kafka.client_id}-0")]
    await produce(kafka.bootstrap_servers, h.cfg.kafka.topics.address_registrations,
                  [registration("eth", a) for a in watched])
    await deposits(h, h.token, watched, 3)
    await h.chain.mine(5)
    height = await h.chain.height()
    port = services.free_port()
    bootstrap_through(h, port)
    host, kport = kafka.bootstrap_servers.rsplit(":", 1)

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        broker_r, broker_w = await asyncio.open_connection(host, int(kport))
        await asyncio.gather(_forward(client_r, broker_w), _forward(broker_r, client_w))

    d = h.daemon
    server: asyncio.Server | None = None
    try:
        d.start()
        started = await wait_for_kafka_retry(d)
        await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
        d.check_alive()
        server = await asyncio.start_server(forward, "127.0.0.1", port)
        await wait_status(d, "following once Kafka answers",
                          lambda st: st.get("processed_height") == height, timeout_s=90)
        assert d.terminate() == 0
        log = d.log.read_text()
        assert "ensuring topics: Kafka not ready (attempt 1," in log, log
    finally:
        d.close()
        if server is not None:
            server.close()
    events = await check_exactly_once(h, height)
    assert sorted(e["txid"] for e in events if e["type"] == "deposit.confirmed") == sorted(
        s.txid for s, *_ in h.sending.deposits)


async def test_sigterm_while_a_start_waits_for_kafka_exits_0_at_once(
        kafka: KafkaService, anvil_factory: AnvilFactory, services: ServiceManager,
        tmp_path: Path) -> None:
    """Kafka never answers (nothing listens on the bootstrap port): the start waits, and a
    SIGTERM ends the wait at once with exit 0, not at the end of the grace period."""
    h = await build_history(kafka, anvil_factory, services, tmp_path, batch_size=2)
    bootstrap_through(h, services.free_port())
    d = h.daemon
    try:
        d.start()
        await wait_for_kafka_retry(d)
        stopped_at = time.monotonic()
        code = d.terminate(timeout_s=GRACE_S + 5)
        elapsed = time.monotonic() - stopped_at
        assert code == 0, d.tail()
        assert elapsed < 3, f"SIGTERM to exit took {elapsed:.1f}s (grace {GRACE_S}s)"
    finally:
        d.close()
