"""No secret reaches the logs: ``watcher run`` against real Kafka and anvil, with secrets in
the environment, a deposit flowing and one endpoint failing, and its whole output scanned.

Secrets set: the SASL password (environment), an API-key path segment and a query-string
key in the endpoint URLs (environment override of ``endpoints``; credentials embedded as
``user:password@`` are refused by the configuration, and basic-auth credentials of UTXO
nodes come from files or the environment and are masked like the SASL password). The second
endpoint is a proxy to anvil that, once the watcher follows, answers every call with a
JSON-RPC error echoing its own path and query, as some providers do ("invalid key …"):
the watcher logs that error, so without redaction the API keys would reach the log.
Logging at debug level, JSON lines (production format), then once more as console lines.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.services import AnvilService, KafkaService, ServiceManager
from tests.support.solidity import new_address, watcher_config

pytestmark = pytest.mark.integration

SASL = "Sasl-" + uuid.uuid4().hex[:12]
PATH_KEY = uuid.uuid4().hex  # 32 hex digits, like an Infura project id
QUERY_KEY = "Qk" + uuid.uuid4().hex[:14]
SECRETS = (SASL, PATH_KEY, QUERY_KEY)


def metric(port: int, name: str, **labels: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


class LeakyProxy:
    """Forwards JSON-RPC to anvil until ``fail`` is set, then echoes the request's path and
    query (the API key) in a JSON-RPC error for every call."""

    def __init__(self, upstream: str) -> None:
        self.fail = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if proxy.fail.is_set():
                    calls = json.loads(body)
                    items = calls if isinstance(calls, list) else [calls]
                    errors = [{"jsonrpc": "2.0", "id": c.get("id"), "error": {
                        "code": -32005, "message": f"daily limit reached for {self.path}"}} for c in items]
                    answer = json.dumps(errors if isinstance(calls, list) else errors[0]).encode()
                else:
                    req = urllib.request.Request(upstream, data=body,
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        answer = resp.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def leaky(anvil: AnvilService) -> Iterator[LeakyProxy]:
    proxy = LeakyProxy(anvil.url)
    try:
        yield proxy
    finally:
        proxy.close()


def run_watcher(tmp_path: Path, kafka: KafkaService, anvil: AnvilService, leaky: LeakyProxy,
                port: int, *, json_logs: bool) -> tuple[int, str]:
    uid = uuid.uuid4().hex[:8]
    to = new_address(f"log-secrets-{uid}")
    start = int(anvil.rpc("eth_blockNumber"), 16)
    raw = watcher_config(bootstrap_servers=kafka.bootstrap_servers, uid=uid,
                         endpoints=[("placeholder", "http://127.0.0.1:1")], start_block=start,
                         metrics_port=port, tokens=[], confirmations={"ETH": 2},
                         addresses_file=str(tmp_path / f"addresses-{uid}.yaml"))
    raw["logging"] = {"level": "debug", "json": json_logs}
    (tmp_path / f"addresses-{uid}.yaml").write_text(f'eth:\n  - "{to}"\n')
    cfg_path = tmp_path / f"watcher-{uid}.yaml"
    cfg_path.write_text(json.dumps(raw))
    host_port = anvil.url.split("//", 1)[1].rstrip("/")
    endpoints = [
        {"name": "anvil", "url": f"http://{host_port}/?apikey={QUERY_KEY}"},
        {"name": "leaky",
         "url": f"http://127.0.0.1:{leaky.port}/v3/{PATH_KEY}?key={QUERY_KEY}"},
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER__")}
    env["WATCHER__KAFKA__SASL_PASSWORD"] = SASL
    env["WATCHER__CHAINS__ETH__ENDPOINTS"] = json.dumps(endpoints)
    proc = subprocess.Popen([sys.executable, "-m", "watcher.cli", "run", "-c", str(cfg_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        payer = anvil.rpc("eth_accounts")[0]
        deadline = time.monotonic() + 90
        while metric(port, "watcher_processed_height", chain="eth") is None:
            assert proc.poll() is None, f"watcher exited: {proc.stdout.read() if proc.stdout else ''}"
            assert time.monotonic() < deadline, "watcher did not start following within 90 s"
            time.sleep(0.2)  # polling the metrics endpoint: the process offers nothing to wait on
        leaky.fail.set()
        anvil.rpc("eth_sendTransaction", {"from": payer, "to": to, "value": hex(10**18)})
        anvil.rpc("anvil_mine", "0x3")
        while (metric(port, "watcher_deposit_events_total", chain="eth",
                      type="deposit.confirmed") or 0) < 1:
            assert proc.poll() is None, "watcher exited before confirming the deposit"
            assert time.monotonic() < deadline, "no deposit.confirmed within 90 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out


@pytest.mark.parametrize("json_logs", [True, False], ids=["json", "console"])
def test_a_full_run_never_logs_a_secret(tmp_path: Path, kafka: KafkaService, anvil: AnvilService,
                                        leaky: LeakyProxy, services: ServiceManager,
                                        json_logs: bool) -> None:
    code, out = run_watcher(tmp_path, kafka, anvil, leaky, services.free_port(), json_logs=json_logs)
    assert code == 0, out[-3000:]
    # It did log, the failing endpoint included: the scan below is not over nothing.
    echoed = [line for line in out.splitlines() if "daily limit reached for" in line]
    assert echoed and all("leaky" in line for line in echoed), out
    if json_logs:
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        assert len(lines) == len(out.splitlines()), "every line is one JSON object"
        assert any(x.get("chain") == "eth" for x in lines)
    leaked = [s for s in SECRETS if s in out]
    assert not leaked, f"secrets in the log: {leaked}\n{out[-3000:]}"
