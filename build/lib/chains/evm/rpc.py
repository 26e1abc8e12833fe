"""JSON-RPC over HTTP for a pool of endpoints: batches, failover, and the only retry loop.

The bulk path avoids web3 entirely: requests are serialized and answers parsed
with orjson, once per HTTP body. Each endpoint has one ``aiohttp`` session
with keep-alive.

Calls go to the followed endpoint. A RETRIABLE failure (transport, 5xx, 429,
a node missing a block, an answer that fails our checks) is retried on the
next healthy endpoint in the configured order, with exponential backoff and
full jitter, bounded by ``max_attempts`` and by a total deadline; a FINAL
failure is raised at once. Every retry counts in ``RPC_RETRIES``, every failed
attempt in ``RPC_ERRORS`` with its kind, every round trip in ``RPC_LATENCY``.

URLs never appear in exceptions, logs or labels: only endpoint names.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import aiohttp
import orjson

from chains.evm.errors import RpcError, http_error, rpc_error_from_object, transport_error
from watcher.config import ChainConfig, Endpoint
from watcher.errors import ChainError, ErrorKind, NodeAnswerInvalid
from watcher.metrics import RPC_ERRORS, RPC_LATENCY, RPC_RETRIES

T = TypeVar("T")

Call = tuple[str, Sequence[Any]]
"""(method, params) of one JSON-RPC call."""

_DECODE_FAILURES = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def raise_errors(replies: Sequence[Any]) -> list[Any]:
    """The results of a batch, raising the first error object a node answered."""
    for reply in replies:
        if isinstance(reply, RpcError):
            raise reply
    return list(replies)


def _batch_label(calls: Sequence[Call]) -> str:
    return "batch:" + "+".join(sorted({method for method, _ in calls}))


class _Connection:
    """One endpoint: its session (created on first use) and its metric children."""

    def __init__(self, chain: str, endpoint: Endpoint, limit: int) -> None:
        self.chain = chain
        self.name = endpoint.name
        self._url = endpoint.url
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._latency: dict[str, Any] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300,
                                             keepalive_timeout=60)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"Content-Type": "application/json"})
        return self._session

    def _observe(self, label: str, seconds: float) -> None:
        child = self._latency.get(label)
        if child is None:
            child = RPC_LATENCY.labels(self.chain, self.name, label)
            self._latency[label] = child
        child.observe(seconds)

    async def post(self, body: bytes, label: str, timeout_s: float) -> Any:
        """One HTTP round trip; the decoded JSON answer, or a classified :class:`ChainError`."""
        session = self._get_session()
        started = time.perf_counter()
        try:
            async with session.post(self._url, data=body,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise transport_error(exc, self.name) from None
        self._observe(label, time.perf_counter() - started)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if status != 200:
                raise http_error(status, self.name) from None
            raise NodeAnswerInvalid("answer is not JSON", self.name) from None
        if status != 200:
            err = answer.get("error") if isinstance(answer, dict) else None
            if err is None or status >= 500 or status == 429:
                raise http_error(status, self.name)
            raise rpc_error_from_object(err, self.name)
        return answer

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class RpcPool:
    """The endpoints of one chain, with routing state set by the adapter's head rounds."""

    def __init__(
        self,
        chain: str,
        endpoints: Sequence[Endpoint],
        *,
        timeout_s: float,
        max_attempts: int,
        deadline_s: float | None = None,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 2.0,
        connections_per_endpoint: int = 16,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint is required")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.chain = chain
        self._conns = {e.name: _Connection(chain, e, connections_per_endpoint) for e in endpoints}
        self._names = tuple(e.name for e in endpoints)
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._deadline_s = deadline_s if deadline_s is not None else 3 * timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._ids = itertools.count(1)
        self._followed = self._names[0]
        self._usable: set[str] = set(self._names)
        self._healthy: set[str] = set(self._names)
        self._retries = RPC_RETRIES.labels(chain)

    @classmethod
    def from_config(cls, cfg: ChainConfig) -> RpcPool:
        return cls(cfg.id, cfg.endpoints, timeout_s=cfg.rpc_timeout_ms / 1000,
                   max_attempts=cfg.rpc_max_attempts,
                   connections_per_endpoint=max(4, 2 * cfg.max_concurrency))

    # ------------------------------------------------------------ routing

    @property
    def names(self) -> tuple[str, ...]:
        """Endpoint names in the configured order."""
        return self._names

    @property
    def followed(self) -> str:
        return self._followed

    @property
    def healthy(self) -> frozenset[str]:
        return frozenset(self._healthy & self._usable)

    def set_usable(self, names: Collection[str]) -> None:
        """Endpoints that may serve unpinned calls (identity verified, capable)."""
        self._usable = {n for n in self._names if n in names}

    def route(self, followed: str, healthy: Collection[str]) -> None:
        """Follow ``followed``; fail over only to ``healthy`` endpoints (in sync)."""
        if followed not in self._conns:
            raise ValueError(f"unknown endpoint {followed!r}")
        self._followed = followed
        self._healthy = {n for n in self._names if n in healthy}

    def _pick(self) -> str:
        if self._followed in self._usable:
            return self._followed
        for name in self._names:
            if name in self._usable:
                self._followed = name
                return name
        raise ChainError(ErrorKind.RETRIABLE, f"chain {self.chain}: no usable endpoint")

    def _fail_over(self, failed: str) -> str:
        """The next healthy endpoint after ``failed`` in the configured order, else ``failed``."""
        self._healthy.discard(failed)
        n = len(self._names)
        start = self._names.index(failed)
        for k in range(1, n):
            name = self._names[(start + k) % n]
            if name in self._healthy and name in self._usable:
                if self._followed == failed:
                    self._followed = name
                return name
        return failed if failed in self._usable else self._pick()

    # ------------------------------------------------------------ calls

    async def call(self, method: str, params: Sequence[Any], *, endpoint: str | None = None,
                   attempts: int | None = None) -> Any:
        """The result of one call; an error answer is raised."""
        return await self.call_decoded(method, params, _identity, endpoint=endpoint,
                                       attempts=attempts)

    async def call_decoded(self, method: str, params: Sequence[Any], decode: Callable[[Any], T],
                           *, endpoint: str | None = None, attempts: int | None = None) -> T:
        """``decode(result)`` of one call; a :class:`ChainError` from ``decode`` (a check that
        failed) is retried like any other failure of its kind."""
        rid = next(self._ids)
        body = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                             "params": list(params)})

        def finish(answer: Any, name: str) -> T:
            return decode(_single_result(answer, rid, name))

        return await self._run(body, method, finish, endpoint, attempts)

    async def batch(self, calls: Sequence[Call], *, endpoint: str | None = None,
                    attempts: int | None = None) -> list[Any]:
        """Results of a batch in the order of ``calls``; the first error answer is raised."""
        return await self.batch_decoded(calls, raise_errors, endpoint=endpoint, attempts=attempts)

    async def batch_decoded(self, calls: Sequence[Call], decode: Callable[[list[Any]], T], *,
                            endpoint: str | None = None, attempts: int | None = None) -> T:
        """``decode(replies)`` of one batch POST, where a reply is a result or the
        :class:`RpcError` the node answered for that call."""
        if not calls:
            return decode([])
        first = next(self._ids)
        for _ in range(len(calls) - 1):
            next(self._ids)
        body = orjson.dumps([
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": list(params)}
            for i, (method, params) in enumerate(calls)
        ])
        count = len(calls)

        def finish(answer: Any, name: str) -> T:
            return decode(_batch_replies(answer, first, count, name))

        return await self._run(body, _batch_label(calls), finish, endpoint, attempts)

    async def _run(self, body: bytes, label: str, finish: Callable[[Any, str], T],
                   endpoint: str | None, attempts: int | None) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._deadline_s
        max_attempts = attempts if attempts is not None else self._max_attempts
        if endpoint is not None and endpoint not in self._conns:
            raise ValueError(f"unknown endpoint {endpoint!r}")
        name = endpoint if endpoint is not None else self._pick()
        attempt = 0
        while True:
            attempt += 1
            timeout_s = min(self._timeout_s, max(deadline - loop.time(), 0.001))
            try:
                answer = await self._conns[name].post(body, label, timeout_s)
                try:
                    return finish(answer, name)
                except ChainError:
                    raise
                except _DECODE_FAILURES as exc:
                    raise NodeAnswerInvalid(
                        f"malformed answer to {label} ({type(exc).__name__})", name) from None
            except ChainError as exc:
                err = _with_endpoint(exc, name)
                RPC_ERRORS.labels(self.chain, name, err.kind.value).inc()
                if err.kind is not ErrorKind.RETRIABLE or attempt >= max_attempts:
                    raise err from None
                delay = random.uniform(
                    0.0, min(self._backoff_cap_s, self._backoff_base_s * 2 ** (attempt - 1)))
                if loop.time() + delay >= deadline:
                    raise err from None
                self._retries.inc()
                if endpoint is None:
                    name = self._fail_over(name)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()


def _identity(value: Any) -> Any:
    return value


def _with_endpoint(exc: ChainError, name: str) -> ChainError:
    if exc.endpoint:
        return exc
    if isinstance(exc, RpcError):
        return RpcError(exc.kind, exc.code, exc.rpc_message, name, exc.too_large)
    if isinstance(exc, NodeAnswerInvalid):
        return NodeAnswerInvalid(str(exc), name)
    return ChainError(exc.kind, str(exc), name)


def _reply(item: dict[str, Any], name: str) -> Any:
    err = item.get("error")
    if err is not None:
        return rpc_error_from_object(err, name)
    if "result" not in item:
        raise NodeAnswerInvalid("answer has neither result nor error", name)
    return item["result"]


def _single_result(answer: Any, rid: int, name: str) -> Any:
    if not isinstance(answer, dict):
        raise NodeAnswerInvalid("answer to a call is not an object", name)
    if answer.get("id") != rid:
        if answer.get("error") is not None and answer.get("id") is None:
            raise rpc_error_from_object(answer["error"], name)
        raise NodeAnswerInvalid("answer carries another id", name)
    reply = _reply(answer, name)
    if isinstance(reply, RpcError):
        raise reply
    return reply


def _batch_replies(answer: Any, first: int, count: int, name: str) -> list[Any]:
    if isinstance(answer, dict):
        # A node refusing the batch as a whole (too large, batches unsupported).
        err = answer.get("error")
        if err is not None:
            raise rpc_error_from_object(err, name)
        raise NodeAnswerInvalid("answer to a batch is not a list", name)
    if not isinstance(answer, list) or len(answer) != count:
        raise NodeAnswerInvalid("answer to a batch has another number of items", name)
    replies: list[Any] = [None] * count
    seen = [False] * count
    for item in answer:
        rid = item.get("id") if isinstance(item, dict) else None
        if type(rid) is not int or not first <= rid < first + count or seen[rid - first]:
            raise NodeAnswerInvalid("batch answer with a missing, unknown or repeated id", name)
        seen[rid - first] = True
        replies[rid - first] = _reply(item, name)
    return replies
