"""The JSON-RPC HTTP client (watcher/runtime/httpclient.py) against a local asyncio server
written here, which sends exactly the bytes each test needs (framings, faults, closes)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from chains.bitcoin.rpc import BitcoinRpcClient
from chains.evm.rpc import EvmRpcClient
from watcher.config import Endpoint
from watcher.errors import ChainError, ErrorKind
from watcher.runtime.httpclient import (
    ConnectionClosed,
    HttpClient,
    ProtocolViolation,
    ResponseTooLarge,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """Accepts connections and hands each to ``handler``; records what came in."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_now = 0
        self.max_open = 0
        self.requests: list[tuple[bytes, dict[str, str], bytes]] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (line, headers, Content-Length body), recorded; None at EOF."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head[:-4].split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append((lines[0], headers, body))
        return body


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def keep_alive_echo() -> Handler:
    """Answers every request on the connection with its own body."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      srv: Server) -> None:
        while (body := await srv.read_request(reader)) is not None:
            writer.write(ok(body))
            await writer.drain()
    return handler


def once(response: bytes, *, close: bool = True, hold: float = 0.0) -> Handler:
    """Reads one request, writes ``response`` (then waits ``hold`` s), closes if asked."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(response)
        await writer.drain()
        if hold:
            await asyncio.sleep(hold)
        if not close:
            await reader.read()
    return handler


Serve = Callable[[Handler], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[Server] = []

    async def start(handler: Handler) -> Server:
        srv = Server(handler)
        await srv.start()
        servers.append(srv)
        return srv
    yield start
    for srv in servers:
        await srv.stop()


def url(srv: Server, path: str = "/") -> str:
    return f"http://127.0.0.1:{srv.port}{path}"


# ------------------------------------------------------------------ framing and keep-alive


async def test_keep_alive_reuses_one_connection_and_sends_a_well_formed_post(serve: Serve) -> None:
    srv = await serve(keep_alive_echo())
    client = HttpClient(url(srv, "/rpc?key=abc"), connections=4,
                        headers={"Content-Type": "application/json"})
    for i in range(3):
        assert await client.post(b'{"n":%d}' % i, 5.0) == (200, b'{"n":%d}' % i)
    await client.close()
    assert srv.connections == 1
    line, headers, body = srv.requests[0]
    assert line == b"POST /rpc?key=abc HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{srv.port}"
    assert headers["content-length"] == "7" and body == b'{"n":0}'
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


async def test_chunked_response_with_extension_and_trailer(serve: Serve) -> None:
    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n" b"1;ext=1\r\n \r\n" b"A\r\n0123456789\r\n"
                b"0\r\nX-Trailer: y\r\n\r\n")

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      srv: Server) -> None:
        while await srv.read_request(reader) is not None:
            for i in range(0, len(response), 7):  # dribbled: every boundary split somewhere
                writer.write(response[i:i + 7])
                await writer.drain()
                await asyncio.sleep(0)
    srv = await serve(handler)
    client = HttpClient(url(srv))
    assert await client.post(b"{}", 5.0) == (200, b"hello 0123456789")
    assert await client.post(b"{}", 5.0) == (200, b"hello 0123456789")
    await client.close()
    assert srv.connections == 1


async def test_response_without_length_is_read_to_the_close(serve: Serve) -> None:
    srv = await serve(once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
                           b"[1,2,3]"))
    client = HttpClient(url(srv))
    assert await client.post(b"{}", 5.0) == (200, b"[1,2,3]")
    assert await client.post(b"{}", 5.0) == (200, b"[1,2,3]")  # a new connection: closed
    assert srv.connections == 2
    await client.close()


async def test_connection_close_header_is_honoured(serve: Serve) -> None:
    srv = await serve(once(ok(b"x", b"Connection: close\r\n"), close=False))
    client = HttpClient(url(srv))
    assert await client.post(b"{}", 5.0) == (200, b"x")
    assert await client.post(b"{}", 5.0) == (200, b"x")
    assert srv.connections == 2
    await client.close()


async def test_interim_100_continue_is_skipped(serve: Serve) -> None:
    srv = await serve(once(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done")))
    client = HttpClient(url(srv))
    assert await client.post(b"{}", 5.0) == (200, b"done")
    await client.close()


async def test_concurrent_requests_stay_within_the_connection_bound(serve: Serve) -> None:
    async def slow_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        srv: Server) -> None:
        while (body := await srv.read_request(reader)) is not None:
            await asyncio.sleep(0.02)
            writer.write(ok(body))
    srv = await serve(slow_echo)
    client = HttpClient(url(srv), connections=2)
    got = await asyncio.gather(*[client.post(b"%d" % i, 5.0) for i in range(8)])
    assert [b for _, b in got] == [b"%d" % i for i in range(8)]
    assert srv.max_open == 2 and srv.connections == 2
    await client.close()


# ------------------------------------------------------------------ limits and faults


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2000000000\r\n\r\n" + b"x" * 100,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"x" * 1024
    + b"\r\n" + b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000,
], ids=["content-length", "chunked", "read-to-close"])
async def test_a_body_above_the_cap_is_refused(serve: Serve, response: bytes) -> None:
    srv = await serve(once(response, close=False))
    client = HttpClient(url(srv), max_response_bytes=1500)
    with pytest.raises(ResponseTooLarge):
        await client.post(b"{}", 5.0)
    await client.close()


async def test_headers_without_end_above_the_limit_are_a_protocol_violation(serve: Serve) -> None:
    srv = await serve(once(b"HTTP/1.1 200 OK\r\n" + b"X-Junk: " + b"j" * 70_000, close=False))
    client = HttpClient(url(srv))
    with pytest.raises(ProtocolViolation):
        await client.post(b"{}", 5.0)
    await client.close()


@pytest.mark.parametrize("response", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n",
    b"HTTP/1.1 200 OK\r\n folded: header\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n\x1f\x8b",
])
async def test_malformed_responses_are_protocol_violations(serve: Serve, response: bytes) -> None:
    srv = await serve(once(response, close=False))
    client = HttpClient(url(srv))
    with pytest.raises(ProtocolViolation):
        await client.post(b"{}", 5.0)
    await client.close()


async def test_total_timeout(serve: Serve) -> None:
    srv = await serve(once(b"", close=False))  # reads the request, never answers
    client = HttpClient(url(srv))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await client.post(b"{}", 0.3)
    assert 0.25 < time.monotonic() - started < 3
    await client.close()


async def test_close_mid_body_is_an_error_and_never_resent(serve: Serve) -> None:
    srv = await serve(once(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10))
    client = HttpClient(url(srv))
    with pytest.raises(ConnectionClosed, match="middle"):
        await client.post(b"{}", 5.0)
    assert len(srv.requests) == 1
    await client.close()


async def test_reset_mid_body_is_an_error_and_never_resent(serve: Serve) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    srv: Server) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nxx")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()  # RST, not FIN
    srv = await serve(reset)
    client = HttpClient(url(srv))
    with pytest.raises((ConnectionResetError, ConnectionClosed)):
        await client.post(b"{}", 5.0)
    assert len(srv.requests) == 1
    await client.close()


async def test_a_fresh_connection_closed_before_answering_is_not_resent(serve: Serve) -> None:
    srv = await serve(once(b""))  # reads the request, closes without a byte
    client = HttpClient(url(srv))
    with pytest.raises(ConnectionClosed, match="before the response began"):
        await client.post(b"{}", 5.0)
    assert len(srv.requests) == 1 and srv.connections == 1
    await client.close()


async def test_a_reused_connection_closed_before_answering_is_resent_once(serve: Serve) -> None:
    async def answers_once_per_connection(reader: asyncio.StreamReader,
                                          writer: asyncio.StreamWriter, srv: Server) -> None:
        body = await srv.read_request(reader)
        writer.write(ok(body or b""))
        await writer.drain()
        await srv.read_request(reader)  # a second request on this connection: dropped unread
    srv = await serve(answers_once_per_connection)
    client = HttpClient(url(srv))
    assert await client.post(b"1", 5.0) == (200, b"1")
    assert await client.post(b"2", 5.0) == (200, b"2")  # resent on a new connection
    assert srv.connections == 2
    assert [b for _, _, b in srv.requests] == [b"1", b"2", b"2"]
    await client.close()


async def test_the_resend_happens_only_once(serve: Serve) -> None:
    state = {"n": 0}

    async def answers_only_the_first_request(reader: asyncio.StreamReader,
                                             writer: asyncio.StreamWriter, srv: Server) -> None:
        body = await srv.read_request(reader)
        state["n"] += 1
        if state["n"] == 1:
            writer.write(ok(body or b""))
            await writer.drain()
            await srv.read_request(reader)
    srv = await serve(answers_only_the_first_request)
    client = HttpClient(url(srv))
    assert await client.post(b"1", 5.0) == (200, b"1")
    with pytest.raises(ConnectionClosed):
        await client.post(b"2", 5.0)
    assert [b for _, _, b in srv.requests] == [b"1", b"2", b"2"]
    await client.close()


async def test_refused_connection_is_an_os_error(serve: Serve) -> None:
    srv = await serve(keep_alive_echo())
    await srv.stop()
    await asyncio.sleep(0.05)
    client = HttpClient(url(srv))
    with pytest.raises(OSError):
        await client.post(b"{}", 5.0)


async def test_the_request_target_is_percent_encoded_where_it_must_be(serve: Serve) -> None:
    srv = await serve(keep_alive_echo())
    client = HttpClient(url(srv, "/a b/é/%41?k=v w"))
    await client.post(b"{}", 5.0)
    await client.close()
    assert srv.requests[0][0] == b"POST /a%20b/%C3%A9/%41?k=v%20w HTTP/1.1"


def test_bad_urls_name_the_part_not_the_url() -> None:
    for bad, part in [("ftp://h/SECRET", "scheme"), ("http:///SECRET", "host"),
                      ("http://h:99999/SECRET", "port")]:
        with pytest.raises(ValueError, match=part) as info:
            HttpClient(bad)
        assert "SECRET" not in str(info.value)


# ------------------------------------------------------------------ auth and TLS


async def test_basic_auth_from_userinfo_and_from_the_endpoint(serve: Serve) -> None:
    srv = await serve(keep_alive_echo())
    client = HttpClient(f"http://us%40er:p%3Ass@127.0.0.1:{srv.port}/")
    await client.post(b"{}", 5.0)
    await client.close()
    # base64("us@er:p:ss"), computed by hand.
    assert srv.requests[0][1]["authorization"] == "Basic dXNAZXI6cDpzcw=="
    assert srv.requests[0][1]["host"] == f"127.0.0.1:{srv.port}"

    async def core(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   srv: Server) -> None:
        while (body := await srv.read_request(reader)) is not None:
            rid = orjson.loads(body)["id"]
            writer.write(ok(orjson.dumps({"result": 7, "error": None, "id": rid})))
    btc = await serve(core)
    rpc = BitcoinRpcClient("btc", Endpoint("core", url(btc), username="user", password="pass"),
                           "regtest", timeout_s=5)
    assert await rpc.call("getblockcount") == 7
    await rpc.close()
    assert btc.requests[0][1]["authorization"] == "Basic dXNlcjpwYXNz"  # base64("user:pass")


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None,
                    reason="no openssl CLI to make a self-signed certificate (neither "
                           "cryptography nor trustme is installed)")
async def test_https_verifies_the_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv = Server(keep_alive_echo())
    await srv.start(server_ctx)
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        client = HttpClient(f"https://localhost:{srv.port}/", ssl_context=trusting)
        assert await client.post(b"tls", 5.0) == (200, b"tls")
        assert await client.post(b"again", 5.0) == (200, b"again")
        await client.close()
        assert srv.connections == 1
        # The default context does not trust a self-signed certificate.
        with pytest.raises(ssl.SSLCertVerificationError):
            await HttpClient(f"https://localhost:{srv.port}/").post(b"x", 5.0)
    finally:
        await srv.stop()


# ------------------------------------------------------------------ classification at the edge


def evm(srv_url: str) -> EvmRpcClient:
    return EvmRpcClient("eth", Endpoint("primary", srv_url), chain_id=1, timeout_s=2)


@pytest.mark.parametrize(("status", "kind"), [
    (500, ErrorKind.RETRIABLE), (502, ErrorKind.RETRIABLE), (503, ErrorKind.RETRIABLE),
    (429, ErrorKind.RETRIABLE), (400, ErrorKind.FINAL), (405, ErrorKind.FINAL),
])
async def test_http_statuses_are_classified_as_before(serve: Serve, status: int,
                                                      kind: ErrorKind) -> None:
    srv = await serve(once(b"HTTP/1.1 %d Whatever\r\nContent-Length: 4\r\n\r\nnope" % status,
                           close=False))
    client = evm(url(srv))
    with pytest.raises(ChainError) as info:
        await client.call("eth_blockNumber", [])
    assert info.value.kind is kind and f"HTTP status {status}" in str(info.value)
    await client.close()


@pytest.mark.parametrize("handler", [
    once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"),
    once(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999999\r\n\r\n"),
    once(b"garbage\r\n\r\n"),
    once(b""),
], ids=["closed-mid-body", "too-large", "not-http", "closed-before"])
async def test_transport_faults_are_retriable_and_never_name_the_url(serve: Serve,
                                                                     handler: Handler) -> None:
    srv = await serve(handler)
    client = evm(url(srv, "/v2/SECRETKEY"))
    with pytest.raises(ChainError) as info:
        await client.call("eth_blockNumber", [])
    assert info.value.kind is ErrorKind.RETRIABLE
    assert "SECRETKEY" not in str(info.value) and str(srv.port) not in str(info.value)
    assert "primary" in str(info.value)
    await client.close()


async def test_refused_and_timeout_are_retriable_without_the_url(serve: Serve) -> None:
    silent = await serve(once(b"", close=False))
    client = EvmRpcClient("eth", Endpoint("primary", url(silent, "/SECRETKEY")), chain_id=1,
                          timeout_s=0.2)
    with pytest.raises(ChainError, match="timed out") as info:
        await client.call("eth_blockNumber", [])
    assert info.value.kind is ErrorKind.RETRIABLE and "SECRETKEY" not in str(info.value)
    await client.close()
    gone = await serve(keep_alive_echo())
    await gone.stop()
    await asyncio.sleep(0.05)
    client = evm(url(gone, "/SECRETKEY"))
    with pytest.raises(ChainError, match="Connection refused") as info:
        await client.call("eth_blockNumber", [])
    assert info.value.kind is ErrorKind.RETRIABLE and "SECRETKEY" not in str(info.value)
    assert str(gone.port) not in str(info.value)
