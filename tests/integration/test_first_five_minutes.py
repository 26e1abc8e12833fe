"""The first five minutes of a new user: the shipped local configuration, the watcher
started as `make up` starts it, the traffic generator, and `watcher tail -c
config/local.yaml` showing ETH, token and BTC deposit events within two minutes.

Everything runs as the user runs it, in subprocesses: ``watcher run`` and ``watcher tail``
on ``config/local.yaml`` unchanged, pointed at this session's services only by the
``WATCHER__…`` environment overrides the configuration supports (the contract ports may be
taken by a developer's own stack), and ``deploy/local/traffic.py`` with its port options.
``deploy/local/up.sh`` itself binds the contract ports; the report of issue #9 pastes a
run of it on a clean clone.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.btc_e2e import new_uid
from tests.support.services import AnvilFactory, BtcdService, KafkaService, ServiceManager
from tests.support.solidity import topic_names

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WATCHER = Path(sys.executable).with_name("watcher")
TRAFFIC = ROOT / "deploy" / "local" / "traffic.py"
CONFIG = ROOT / "config" / "local.yaml"
WITHIN_S = 120.0
WANTED = {("eth", "ETH"), ("eth", "TKN"), ("btc", "BTC")}


def stop(proc: subprocess.Popen[str], timeout_s: float = 30.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's stdout lines, read by a thread (None at its end)."""
    out: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line.rstrip("\n"))
        out.put(None)
    threading.Thread(target=pump, daemon=True).start()
    return out


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]
    """The user's environment plus the overrides pointing config/local.yaml here."""
    anvil: str
    metrics: str


@pytest.fixture
def stack(kafka: KafkaService, anvil_factory: AnvilFactory, btcd: BtcdService,
          services: ServiceManager) -> Stack:
    anvil = anvil_factory()
    uid = new_uid()
    port = services.free_port()
    return Stack({
        **os.environ,
        "WATCHER__KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "WATCHER__KAFKA__TOPICS": json.dumps(topic_names(uid)),
        "WATCHER__KAFKA__TRANSACTIONAL_ID_PREFIX": f"first5-{uid}",
        "WATCHER__METRICS__PORT": str(port),
        "WATCHER__CHAINS__ETH__ENDPOINTS": json.dumps([{"name": "anvil", "url": anvil.url}]),
        # The same dev-only credential files config/local.yaml names (the session's btcd
        # uses the dev stack's credentials).
        "WATCHER__CHAINS__BTC__ENDPOINTS": json.dumps([{
            "name": "btcd", "url": btcd.rpc_url, "username_file": "local/btcd-rpc-user",
            "password_file": "local/btcd-rpc-password"}]),
    }, anvil.url, f"http://127.0.0.1:{port}")


def wait_ready(url: str, watcher: subprocess.Popen[str], log: Path, timeout_s: float = 90) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if watcher.poll() is not None:
            pytest.fail(f"watcher exited with {watcher.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)  # polling: readiness has no event to wait on
    pytest.fail(f"watcher not ready in {timeout_s}s:\n{log.read_text()[-3000:]}")


def test_tail_shows_eth_token_and_btc_deposits_within_two_minutes(
        stack: Stack, kafka: KafkaService, btcd: BtcdService, tmp_path: Path) -> None:
    env = stack.env
    topics = json.loads(env["WATCHER__KAFKA__TOPICS"])
    log = tmp_path / "watcher.log"
    with log.open("w") as fh:
        watcher = subprocess.Popen([str(WATCHER), "run", "--config", str(CONFIG)], env=env,
                                   stdout=fh, stderr=subprocess.STDOUT, text=True)
    procs: list[subprocess.Popen[str]] = [watcher]
    try:
        wait_ready(stack.metrics, watcher, log)
        started = time.monotonic()
        traffic_log = tmp_path / "traffic.log"
        tail = subprocess.Popen([str(WATCHER), "tail", "-c", str(CONFIG)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(tail)
        traffic = subprocess.Popen(
            [sys.executable, str(TRAFFIC), "--interval", "3", "--anvil", stack.anvil,
             "--btcd", btcd.rpc_url, "--kafka", kafka.bootstrap_servers,
             "--registrations-topic", topics["address_registrations"]],
            stdout=subprocess.DEVNULL, stderr=traffic_log.open("w"), text=True)
        procs.append(traffic)
        lines = lines_of(tail)
        seen: dict[tuple[str, str], float] = {}
        shown: list[str] = []
        while not seen.keys() >= WANTED:
            left = started + WITHIN_S - time.monotonic()
            if left <= 0:
                break
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"watcher tail ended: {shown[-20:]}")
            shown.append(line)
            words = line.split()
            # "<emitted_at> <chain> deposit.<type> <amount> <asset> to <address> ..."
            if len(words) > 4 and words[2].startswith("deposit."):
                seen.setdefault((words[1], words[4]), time.monotonic() - started)
        figures = ", ".join(f"{c}/{a} after {t:.1f}s" for (c, a), t in sorted(seen.items()))
        print(f"\nfirst deposit line per chain/asset: {figures}")
        assert seen.keys() >= WANTED, (
            f"within {WITHIN_S}s watcher tail showed {sorted(seen)} only; last lines:\n"
            + "\n".join(shown[-20:]) + f"\ntraffic log:\n{traffic_log.read_text()[-2000:]}")
        assert traffic.poll() is None, traffic_log.read_text()[-3000:]
    finally:
        codes = [stop(p) for p in reversed(procs)]
    assert codes[-1] == 0, f"watcher exited with {codes[-1]}:\n{log.read_text()[-3000:]}"
