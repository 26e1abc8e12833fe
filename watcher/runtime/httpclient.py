"""A small asyncio HTTP/1.1 client for JSON-RPC: one target URL, a keep-alive pool, POST and GET.

Why not aiohttp: importing it costs the daemon ~0.28 s of CPU before the first block
(its connector builds two SSL contexts at import) and ~0.3 ms per 250 kB POST; this
client is one ``asyncio.Protocol`` per connection with a hand parser (see
``bench/http_transport.py`` for the figures, and why not ``h11``).

Guarantees:

* at most ``connections`` requests (and so connections) at once per client; an idle
  connection is reused (LIFO) while younger than ``keepalive_s``;
* ``http`` and ``https`` (stdlib :mod:`ssl`; the default verifying context is created on
  the first https connection, never at import);
* Basic auth from ``auth`` or else the URL's userinfo; a ``Host`` header; request bodies
  with ``Content-Length``; responses with ``Content-Length``, ``chunked``, or neither (read
  to the close);
* ``timeout_s`` bounds the whole request (waiting for a connection slot included);
* a response body above ``max_response_bytes`` is :class:`ResponseTooLarge` (read no
  further; the connection is dropped), so a node cannot exhaust memory;
* a request is sent again once, on a new connection, only when a *reused* keep-alive
  connection was closed (or reset) before any byte of the response came back: the server
  dropped an idle connection as we wrote, so it never read the request. Every other
  failure is raised, never retried here (withdrawals are broadcast through this client);
* the URL (which may hold an API key) and the credentials are in no exception message.

Errors, classified once at each chain family's edge (``chains/evm/errors.py``)::

    HttpError                    every failure this module detects itself
    ├── ConnectionClosed         the server closed the connection before the response ended
    ├── ProtocolViolation        not HTTP/1.x as spoken here: status line, header, length,
    │                            chunk framing, an oversized header block
    └── ResponseTooLarge         the body passed max_response_bytes
    TimeoutError                 (builtin) the request's total timeout ran out
    OSError                      (builtin) refused, unreachable, reset, TLS (ssl.SSLError)
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Mapping
from urllib.parse import quote, unquote, urlsplit

__all__ = [
    "ConnectionClosed",
    "HttpClient",
    "HttpError",
    "ProtocolViolation",
    "ResponseTooLarge",
]

DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024
"""A 2-block batch with receipts is ~250 kB and a traced block a few MB; 256 MiB leaves a
wide margin for legitimate answers while bounding what a broken node can make us hold."""

MAX_HEADER_BYTES = 64 * 1024
"""Status line and headers together: a node's are a few hundred bytes."""

_HEX_DIGITS = b"0123456789abcdefABCDEF"


class HttpError(Exception):
    """Base of the failures this client detects; messages never hold a URL or credential."""


class ConnectionClosed(HttpError):
    """The server closed the connection before the response was complete."""


class ProtocolViolation(HttpError):
    """The server's bytes are not an HTTP/1.x response as this client reads them."""


class ResponseTooLarge(HttpError):
    """The response body is larger than the configured cap."""


_default_context: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """The verifying context of every https client without one of its own, made once, lazily
    (loading the CA store costs tens of ms: only a daemon with an https endpoint pays it)."""
    global _default_context  # noqa: PLW0603 (a lazily built process-wide constant)
    if _default_context is None:
        _default_context = ssl.create_default_context()
    return _default_context


class _Response:
    """The parser's state for one response on one connection."""

    __slots__ = ("body", "chunk_left", "close_after", "got", "length", "mode", "parts",
                 "status", "trailers")

    def __init__(self) -> None:
        self.status = 0
        self.mode = ""  # "" (headers pending), "length", "chunked", "close"
        self.length = 0
        self.chunk_left = -1  # -1: a chunk-size line is next
        self.trailers = False
        self.body = bytearray()
        self.parts: list[bytes] = []
        """A Content-Length body as received, joined once at the end (one copy)."""
        self.got = 0
        self.close_after = False


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: one request at a time, the response parsed as bytes arrive."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._resp: _Response | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False
        self.received = 0
        """Bytes received since the current request was sent (0: surely nothing came back)."""
        self.idle_since = time.monotonic()
        self.reused = False
        self.generation = 0
        """The client's generation it was opened in: a connection outliving a close() is
        dropped, not pooled."""
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop it was opened in (a pooled connection of an ended loop is dropped)."""

    # -------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self._waiter is None:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.close()
            return
        try:
            resp = self._resp
            if resp is not None and resp.mode == "length":
                # The hot path: a node's answer has a length; its bytes are kept as they came.
                resp.parts.append(data)
                resp.got += len(data)
                self._length_body(resp)
                return
            self._buf += data
            self._parse()
        except HttpError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self._finish_at_close()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            self._finish_at_close()
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc if isinstance(exc, OSError) else
                                       ConnectionClosed(type(exc).__name__))
            self._waiter = None

    # -------------------------------------------------------------- requests

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self._transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        self._resp = _Response()
        self.received = 0
        self._transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    @property
    def usable(self) -> bool:
        return (not self.closed and self._transport is not None
                and not self._transport.is_closing())

    # -------------------------------------------------------------- parsing

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _finish_at_close(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        resp = self._resp
        if resp is not None and resp.mode == "close":
            self._waiter = None
            self.closed = True
            waiter.set_result((resp.status, bytes(resp.body)))
            return
        self._waiter = None
        self.closed = True
        waiter.set_exception(ConnectionClosed(
            "closed before the response began" if self.received == 0 else
            "closed in the middle of the response"))

    def _parse(self) -> None:
        resp = self._resp
        assert resp is not None
        buf = self._buf
        while resp.mode == "":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise ProtocolViolation("response header block too large")
                return
            if end > MAX_HEADER_BYTES:
                raise ProtocolViolation("response header block too large")
            head = bytes(buf[:end])
            del buf[:end + 4]
            self._headers(resp, head)
        if resp.mode == "length":
            if buf:
                resp.parts.append(bytes(buf))
                resp.got = len(buf)
                buf.clear()
            self._length_body(resp)
        elif resp.mode == "chunked":
            self._chunks(resp)
        else:  # "close": everything up to the end of the connection
            resp.body += buf
            buf.clear()
            if len(resp.body) > self._max_body:
                raise ResponseTooLarge(f"response body above {self._max_body} bytes")

    def _length_body(self, resp: _Response) -> None:
        if resp.got < resp.length:
            return
        if resp.got > resp.length:
            # Bytes after the response with nothing asked: the framing is off.
            raise ProtocolViolation("bytes after the response body")
        parts = resp.parts
        self._complete(resp, parts[0] if len(parts) == 1 else b"".join(parts))

    def _headers(self, resp: _Response, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")):
            raise ProtocolViolation("not an HTTP/1.x status line")
        code = status_line[9:12]
        if not code.isdigit() or (len(status_line) > 12 and status_line[12:13] != b" "):
            raise ProtocolViolation("malformed status code")
        status = int(code)
        keep_alive = status_line.startswith(b"HTTP/1.1")
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise ProtocolViolation("malformed header line")
            key = name.lower()
            if key == b"content-length":
                text = value.strip()
                if not text.isdigit():
                    raise ProtocolViolation("malformed Content-Length")
                if length is not None and int(text) != length:
                    raise ProtocolViolation("conflicting Content-Length headers")
                length = int(text)
            elif key == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings[-1] != b"chunked" or any(c not in (b"chunked", b"identity")
                                                    for c in codings):
                    raise ProtocolViolation("unsupported Transfer-Encoding")
                chunked = True
            elif key == b"content-encoding":
                if value.strip().lower() not in (b"", b"identity"):
                    # Never asked for (no Accept-Encoding is sent): the body would be read
                    # as JSON while compressed.
                    raise ProtocolViolation("unrequested Content-Encoding")
            elif key == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
        if 100 <= status < 200:
            return  # an interim answer (100 Continue): the real one follows
        resp.status = status
        resp.close_after = not keep_alive
        if status in (204, 304):
            resp.mode, resp.length = "length", 0
        elif chunked:
            resp.mode = "chunked"  # chunked wins over a Content-Length (RFC 9112 6.3)
            resp.close_after = True if length is not None else resp.close_after
        elif length is not None:
            if length > self._max_body:
                raise ResponseTooLarge(f"response body of {length} bytes above "
                                       f"{self._max_body}")
            resp.mode, resp.length = "length", length
        else:
            resp.mode, resp.close_after = "close", True

    def _chunks(self, resp: _Response) -> None:
        buf = self._buf
        while True:
            if resp.trailers:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEADER_BYTES:
                        raise ProtocolViolation("chunked trailers too large")
                    return
                line = bytes(buf[:end])
                del buf[:end + 2]
                if not line:
                    if buf:
                        raise ProtocolViolation("bytes after the response body")
                    self._complete(resp, bytes(resp.body))
                    return
                continue
            if resp.chunk_left < 0:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise ProtocolViolation("chunk size line too long")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[:end + 2]
                if not size_text or size_text.strip(_HEX_DIGITS):
                    raise ProtocolViolation("malformed chunk size")
                size = int(size_text, 16)
                if size == 0:
                    resp.trailers = True
                    continue
                if len(resp.body) + size > self._max_body:
                    raise ResponseTooLarge(f"response body above {self._max_body} bytes")
                resp.chunk_left = size
            need = resp.chunk_left + 2
            if len(buf) < need:
                return
            if buf[need - 2:need] != b"\r\n":
                raise ProtocolViolation("chunk not followed by CRLF")
            resp.body += buf[:need - 2]
            del buf[:need]
            resp.chunk_left = -1

    def _complete(self, resp: _Response, body: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        if resp.close_after:
            self.close()
        self.idle_since = time.monotonic()
        if waiter is not None and not waiter.done():
            waiter.set_result((resp.status, body))


class HttpClient:
    """Requests to one URL over a bounded keep-alive pool (the module docstring says how)."""

    def __init__(self, url: str, *, connections: int = 16,
                 auth: tuple[str, str] | None = None,
                 headers: Mapping[str, str] | None = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
                 keepalive_s: float = 30.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        """``url``: ``http://`` or ``https://``; its userinfo, when there is one and ``auth``
        is None, is the Basic auth. A bad URL raises ValueError naming the part, not the URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError("URL scheme must be http or https")
        if not parts.hostname:
            raise ValueError("URL has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("URL port is not a number in 0-65535") from None
        if connections < 1:
            raise ValueError("connections must be >= 1")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = port if port is not None else (443 if self._tls else 80)
        self._ssl_context = ssl_context
        host_header = f"[{self._host}]" if ":" in self._host else self._host
        if port is not None:
            host_header += f":{port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if auth is None and parts.username is not None:
            auth = (unquote(parts.username), unquote(parts.password or ""))
        fixed = [f"Host: {host_header}"]
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            fixed.append(f"Authorization: Basic {token}")
        for name, value in (headers or {}).items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r}: no CR or LF allowed")
            fixed.append(f"{name}: {value}")
        # Anything that is not already a legal request-target character is percent-encoded
        # (a space would otherwise split the request line); existing escapes are kept.
        self._target = quote(target, safe="/?#[]@!$&'()*+,;=:%~-._").encode("ascii")
        self._fixed_headers = ("\r\n".join(fixed) + "\r\n").encode("latin-1")
        self._max_body = max_response_bytes
        self._keepalive_s = keepalive_s
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[_Connection] = []
        self._generation = 0

    async def post(self, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """One POST of ``body`` (``Content-Length`` framed): (status, response body)."""
        return await self.request(b"POST", body, timeout_s)

    async def get(self, timeout_s: float) -> tuple[int, bytes]:
        return await self.request(b"GET", None, timeout_s)

    async def request(self, method: bytes, body: bytes | None,
                      timeout_s: float) -> tuple[int, bytes]:
        """(status, body) of one request; raises what the module docstring lists."""
        head = b"%s %s HTTP/1.1\r\n%s" % (method, self._target, self._fixed_headers)
        if body is not None:
            head += b"Content-Length: %d\r\n\r\n" % len(body)
            request = head + body
        else:
            request = head + b"\r\n"
        async with asyncio.timeout(timeout_s), self._slots:
            conn = await self._connection()
            try:
                result = await self._exchange(conn, request)
            except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
                if not (conn.reused and conn.received == 0):
                    raise
                # A keep-alive connection the server dropped as we wrote: it never read
                # the request (no byte came back), so sending it once more is safe.
                conn = await self._open()
                result = await self._exchange(conn, request)
            return result

    async def _exchange(self, conn: _Connection, request: bytes) -> tuple[int, bytes]:
        clean = False
        try:
            result = await conn.send(request)
            clean = True
        finally:
            if not clean or not conn.usable or conn.generation != self._generation:
                conn.abort()  # a cancelled, failed or closing exchange: state unknown
            else:
                conn.reused = True
                self._idle.append(conn)
        return result

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.pop()
            if conn.loop is not loop:
                continue  # opened in an event loop that has ended: unusable, and unclosable
            if conn.usable and now - conn.idle_since < self._keepalive_s:
                return conn
            conn.abort()
        return await self._open()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        max_body = self._max_body
        if self._tls:
            context = self._ssl_context or default_ssl_context()
            _, conn = await loop.create_connection(lambda: _Connection(max_body), self._host,
                                                   self._port, ssl=context,
                                                   server_hostname=self._host)
        else:
            _, conn = await loop.create_connection(lambda: _Connection(max_body), self._host,
                                                   self._port)
        conn.generation = self._generation
        return conn

    async def close(self) -> None:
        """Closes the idle connections; requests in flight drop theirs when they end. The
        client stays usable (a later request opens a new connection)."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
