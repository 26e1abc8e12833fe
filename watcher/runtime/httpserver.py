"""A minimal asyncio HTTP/1.1 server for GET routes (metrics and health probes), without aiohttp.

Guarantees:

* only ``GET``; another method is ``405`` (``Allow: GET``), an unknown path ``404``, a
  request that is not HTTP/1.x as read here ``400`` (then the connection is closed);
* a request's line and headers together are at most ``max_header_bytes`` (else ``400``);
  a body (which a GET should not have) is read and ignored up to ``max_body_bytes``,
  a longer or chunked one is ``400``;
* a client gets ``header_timeout_s`` to send a request and as long to read the answer,
  and an idle keep-alive connection is closed after ``idle_timeout_s``: slow or silent
  clients hold a connection, never the server;
* a route that raises is ``500`` (logged by class name), never a dead server;
* the query string is ignored (routes match the path), as aiohttp's router did.

A route is a plain callable returning a :class:`Response`; it runs on the event loop, so it
must be quick (the Prometheus exposition of this process is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Response]


def _plain(status: int) -> Response:
    # The same bodies aiohttp answered for these statuses ("404: Not Found").
    return Response(status, f"{status}: {_REASONS.get(status, '')}".encode())


class _BadRequest(Exception):
    pass


class GetServer:
    """Serves ``routes`` (path -> route) on ``host:port`` once :meth:`start` returned."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Route], *,
                 header_timeout_s: float = 10.0, idle_timeout_s: float = 75.0,
                 max_header_bytes: int = 16 * 1024, max_body_bytes: int = 64 * 1024) -> None:
        self.host, self.port = host, port
        self._routes = dict(routes)
        self._header_timeout_s = header_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def bound_port(self) -> int:
        """The port listened on (the one picked when ``port`` was 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                  limit=self._max_header_bytes)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._requests(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or was too slow: nothing to answer
        except Exception as exc:
            # A defect here must cost one connection, never the server (nor leak the text).
            log.error("http connection failed: %s", type(exc).__name__)  # noqa: TRY400
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        first = True
        while True:
            try:
                # Between requests a client may idle; once its first byte came, the rest of
                # the head has header_timeout_s (a slow sender holds no connection for long).
                async with asyncio.timeout(self._header_timeout_s if first
                                           else self._idle_timeout_s):
                    start = await reader.read(1)
                if not start:
                    return
                async with asyncio.timeout(self._header_timeout_s):
                    head = await self._read_head(reader, start)
            except _BadRequest:
                await self._answer(writer, _plain(400), close=True)
                return
            first = False
            try:
                method, path, close = await self._parse(reader, head)
            except _BadRequest:
                await self._answer(writer, _plain(400), close=True)
                return
            if method != "GET":
                await self._answer(writer, _plain(405), close=close, allow=True)
            else:
                await self._answer(writer, self._route(path), close=close)
            if close:
                return

    async def _read_head(self, reader: asyncio.StreamReader, start: bytes) -> bytes:
        try:
            return start + await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            raise _BadRequest from None  # cut short, or longer than max_header_bytes

    async def _parse(self, reader: asyncio.StreamReader, head: bytes) -> tuple[str, str, bool]:
        """(method, path, close after answering) of a request head; reads and drops a body."""
        try:
            lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest from None
        if version not in ("HTTP/1.1", "HTTP/1.0") or not method.isalpha() \
                or not target.startswith("/"):
            raise _BadRequest
        close = version == "HTTP/1.0"
        length = 0
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest
            key, value = name.lower(), value.strip().lower()
            if key == "content-length":
                if not (value.isascii() and value.isdigit()) \
                        or int(value) > self._max_body_bytes:
                    raise _BadRequest
                length = int(value)
            elif key == "transfer-encoding":
                raise _BadRequest
            elif key == "connection":
                tokens = {t.strip() for t in value.split(",")}
                close = "close" in tokens or (close and "keep-alive" not in tokens)
        if length:
            async with asyncio.timeout(self._header_timeout_s):
                await reader.readexactly(length)
        return method, target.split("?", 1)[0], close

    def _route(self, path: str) -> Response:
        route = self._routes.get(path)
        if route is None:
            return _plain(404)
        try:
            return route()
        except Exception as exc:
            # Only the class: a route's message could hold anything (the server lives on).
            log.error("route %s failed: %s", path, type(exc).__name__)  # noqa: TRY400
            return _plain(500)

    async def _answer(self, writer: asyncio.StreamWriter, resp: Response, *, close: bool,
                      allow: bool = False) -> None:
        head = (f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}\r\n"
                f"Content-Type: {resp.content_type}\r\n"
                f"Content-Length: {len(resp.body)}\r\n"
                + ("Allow: GET\r\n" if allow else "")
                + ("Connection: close\r\n" if close else "")
                + "\r\n")
        writer.write(head.encode("latin-1") + resp.body)
        async with asyncio.timeout(self._header_timeout_s):
            await writer.drain()
