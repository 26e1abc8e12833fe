"""The GET-only server behind /metrics and the probes (watcher/runtime/httpserver.py), spoken
to with raw sockets: well-formed, malformed, slow and abusive clients; and that `watcher run`
no longer imports aiohttp."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from watcher.runtime.health import HealthServer
from watcher.runtime.httpserver import GetServer, Response


def _boom() -> Response:
    raise RuntimeError("secret detail")


@pytest.fixture
async def server() -> AsyncIterator[GetServer]:
    srv = GetServer("127.0.0.1", 0, {"/a": lambda: Response(200, b"alpha"), "/boom": _boom},
                    header_timeout_s=0.5, max_header_bytes=2048)
    await srv.start()
    yield srv
    await srv.stop()


async def exchange(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Sends ``data``, returns everything the server answered until it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(read_timeout):
            return await reader.read()
    finally:
        writer.close()


def split(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(status line, body) of each response in ``raw`` (Content-Length framed)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for n, _, v in (ln.partition(b": ") for ln in lines[1:])
                      if n.lower() == b"content-length")
        out.append((lines[0], rest[:length]))
        raw = rest[length:]
    return out


async def test_keep_alive_serves_several_requests_and_ignores_the_query(server: GetServer) -> None:
    raw = await exchange(server.bound_port,
                         b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert split(raw) == [(b"HTTP/1.1 200 OK", b"alpha"), (b"HTTP/1.1 200 OK", b"alpha"),
                          (b"HTTP/1.1 404 Not Found", b"404: Not Found")]


async def test_http_1_0_is_answered_then_closed(server: GetServer) -> None:
    raw = await exchange(server.bound_port, b"GET /a HTTP/1.0\r\n\r\n")
    assert split(raw) == [(b"HTTP/1.1 200 OK", b"alpha")]
    assert b"Connection: close" in raw


async def test_other_methods_are_405(server: GetServer) -> None:
    raw = await exchange(server.bound_port, b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n"
                                            b"Connection: close\r\n\r\nabc")
    assert split(raw) == [(b"HTTP/1.1 405 Method Not Allowed", b"405: Method Not Allowed")]
    assert b"Allow: GET\r\n" in raw


@pytest.mark.parametrize("request_bytes", [
    b"GET /a\r\n\r\n",
    b"GET /a HTTP/2.0\r\n\r\n",
    b"G@T /a HTTP/1.1\r\n\r\n",
    b"GET a HTTP/1.1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nContent-Length: 9999999\r\n\r\n",
    b"GET /a HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",  # a digit to str.isdigit only
    b"GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello
    b"GET /a HTTP/1.1\r\nX: " + b"y" * 4000 + b"\r\n\r\n",   # headers above 2048 bytes
])
async def test_bad_requests_are_400_and_the_server_lives_on(server: GetServer, request_bytes: bytes) -> None:
    raw = await exchange(server.bound_port, request_bytes)
    assert raw.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    ok = await exchange(server.bound_port, b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert split(ok) == [(b"HTTP/1.1 200 OK", b"alpha")]


async def test_a_failing_route_is_500_without_its_message(server: GetServer) -> None:
    raw = await exchange(server.bound_port, b"GET /boom HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n"
                                            b"Connection: close\r\n\r\n")
    assert split(raw) == [(b"HTTP/1.1 500 Internal Server Error", b"500: Internal Server Error"),
                          (b"HTTP/1.1 200 OK", b"alpha")]
    assert b"secret" not in raw


async def test_a_slow_client_is_dropped_without_an_answer(server: GetServer) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await exchange(server.bound_port, b"GET /a HTTP/1.1\r\nHost: x", read_timeout=5)
    assert raw == b"" and loop.time() - started < 3  # closed at the 0.5 s header timeout
    silent = await exchange(server.bound_port, b"", read_timeout=5)
    assert silent == b""


async def test_a_slow_second_request_gets_the_header_timeout_not_the_idle_one() -> None:
    srv = GetServer("127.0.0.1", 0, {"/a": lambda: Response(200, b"alpha")},
                    header_timeout_s=0.3, idle_timeout_s=30)
    await srv.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
        writer.write(b"GET /a HTTP/1.1\r\n\r\nGET /a HTT")  # the second head never ends
        async with asyncio.timeout(5):
            raw = await reader.read()  # closed at 0.3 s, not after the 30 s of idling
        assert split(raw) == [(b"HTTP/1.1 200 OK", b"alpha")]
        writer.close()
    finally:
        await srv.stop()


async def test_stop_closes_idle_keep_alive_connections() -> None:
    srv = GetServer("127.0.0.1", 0, {"/a": lambda: Response(200, b"alpha")})
    await srv.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.bound_port)
    writer.write(b"GET /a HTTP/1.1\r\n\r\n")
    await reader.readuntil(b"alpha")
    async with asyncio.timeout(5):
        await srv.stop()
        assert await reader.read() == b""
    writer.close()


async def test_health_routes_answer_json_and_prometheus_text() -> None:
    srv = HealthServer("127.0.0.1", 0, {}, {}, lambda: False)
    await srv.start()
    try:
        port = srv._server.bound_port
        raw = await exchange(port, b"GET /readyz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"
                                   b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        (ready_line, ready), (live_line, live), (metrics_line, metrics) = split(raw)
        assert ready_line == b"HTTP/1.1 503 Service Unavailable"
        assert json.loads(ready) == {"ready": False, "endpoints": {}, "roles": {},
                                     "reasons": ["address registrations not yet read to the end"]}
        assert live_line == b"HTTP/1.1 200 OK"
        assert json.loads(live) == {"status": "ok", "reasons": []}
        assert metrics_line == b"HTTP/1.1 200 OK" and b"# TYPE " in metrics
        assert b"Content-Type: application/json; charset=utf-8\r\n" in raw
        assert b"Content-Type: text/plain; version=" in raw  # the exposition format
        status = await exchange(port, b"GET /status HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert split(status)[0][0] == b"HTTP/1.1 404 Not Found"  # no status document given
    finally:
        await srv.stop()


def test_watcher_run_imports_no_aiohttp() -> None:
    # The CLI and everything `watcher run` imports on its way (lazily too) for both families,
    # Kafka, the scan workers and withdrawals: aiohttp costs ~0.28 s of CPU at each start.
    code = """
import sys
import watcher.cli, watcher.app
import chains.evm.adapter, chains.evm.scanworker, chains.evm.wallet, chains.evm.tx
import chains.bitcoin.source, chains.bitcoin.wallet, chains.bitcoin.tx
import watcher.kafka.client, watcher.kafka.sink, watcher.kafka.registrations
import watcher.kafka.settled, watcher.kafka.leadership, watcher.kafka.addrsnapshots
import watcher.withdrawals.runtime, watcher.withdrawals.policy, watcher.addresses_file
import watcher.ops.common
loaded = sorted(m for m in sys.modules if m == "aiohttp" or m.startswith("aiohttp."))
print(",".join(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == ""
