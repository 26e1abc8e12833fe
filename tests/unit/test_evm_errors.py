"""Classification of EVM node failures, and how the kinds drive the endpoint pool's retries.

The client and pool tests run against an in-process aiohttp server that plays a node.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from chains.evm import answers
from chains.evm.errors import (
    RpcError,
    classify_exception,
    classify_http_status,
    classify_rpc_error,
    http_error,
    rpc_error_from_object,
    transport_error,
)
from chains.evm.rpc import Call, EvmRpcClient, raise_errors
from watcher.config import Endpoint
from watcher.core.endpoints import BehindBest, HeadSeen, IdentityOk
from watcher.errors import ChainError, ErrorKind, NodeAnswerInvalid
from watcher.metrics import REGISTRY
from watcher.runtime.httpclient import ConnectionClosed, ProtocolViolation, ResponseTooLarge
from watcher.runtime.pool import EndpointPool
from watcher.runtime.retry import RetryPolicy

R, F = ErrorKind.RETRIABLE, ErrorKind.FINAL


@pytest.mark.parametrize(("code", "message", "kind"), [
    (-32005, "limit exceeded", R),
    (-32005, "request rate exceeded", R),
    (429, "Too Many Requests", R),
    (-32000, "header not found", R),
    (-32000, "unknown block", R),
    (-32001, "Resource not found", R),  # anvil: trace of a block it lacks
    (-32000, "missing trie node abc (path )", R),
    (-32603, "internal error", R),
    (-32000, "something new and strange", R),
    (-32050, "", R),
    (None, "", R),
    (-32000, "request timed out", R),
    (-32601, "Method not found", F),
    (-32601, "the method debug_traceBlockByHash does not exist/is not available", F),
    (-32004, "method not supported", F),
    (-32602, "invalid length 1, expected tuple variant", F),
    (-32602, "invalid argument 0: hex string without 0x prefix", F),
    (-32600, "Invalid request", F),
    (-32700, "parse error", F),
    (3, "execution reverted: no", F),
    (-32000, "execution reverted", F),
    (-32000, "nonce too low", ErrorKind.NONCE_TOO_LOW),
    (-32003, "nonce too low", ErrorKind.NONCE_TOO_LOW),  # anvil's code
    (-32000, "insufficient funds for gas * price + value: address 0x01 have 0 want 21000",
     ErrorKind.FINAL),
    (-32003, "Insufficient funds for gas * price + value", ErrorKind.FINAL),  # anvil
    (-32000, "nonce too low: next nonce 5, tx nonce 4", ErrorKind.NONCE_TOO_LOW),
    (-32000, "already known", ErrorKind.ALREADY_KNOWN),
    (-32010, "Known transaction: 0xabc", ErrorKind.ALREADY_KNOWN),
    (-32000, "replacement transaction underpriced", ErrorKind.UNDERPRICED),
    (-32000, "transaction underpriced: tip needed 1, tip permitted 0", ErrorKind.UNDERPRICED),
    (-32003, "response too large", F),
    (-32600, "batch too large", F),
])
def test_classify_rpc_error(code: int | None, message: str, kind: ErrorKind) -> None:
    assert classify_rpc_error(code, message) is kind


@pytest.mark.parametrize(("status", "kind"), [
    (500, R), (502, R), (503, R), (504, R), (429, R), (408, R),
    (401, R), (403, R), (404, R),  # about this endpoint: another may answer
    (400, F), (405, F), (413, F), (415, F),
])
def test_classify_http_status(status: int, kind: ErrorKind) -> None:
    assert classify_http_status(status) is kind
    assert http_error(status, "a").kind is kind


@pytest.mark.parametrize(("exc", "kind"), [
    (TimeoutError(), R),
    (ConnectionClosed("closed before the response began"), R),
    (ProtocolViolation("malformed chunk size"), R),
    (ResponseTooLarge("response body above 10 bytes"), R),
    (ConnectionResetError(104, "reset"), R),
    (ConnectionRefusedError(111, "refused"), R),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), R),
    (ChainError(ErrorKind.NONCE_TOO_LOW, "x"), ErrorKind.NONCE_TOO_LOW),
    (ValueError("x"), F),
])
def test_classify_exception(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_exception(exc) is kind
    if not isinstance(exc, ChainError | ValueError):
        assert transport_error(exc, "a").kind is kind


@pytest.mark.parametrize(("obj", "code", "kind"), [
    ({"code": -32601, "message": "Method not found"}, -32601, F),
    ({"code": -32000, "message": "header not found"}, -32000, R),
    ({"code": "x", "message": 5}, None, R),
    ("nonce too low", None, ErrorKind.NONCE_TOO_LOW),
    (None, None, R),
])
def test_rpc_error_from_object(obj: object, code: int | None, kind: ErrorKind) -> None:
    err = rpc_error_from_object(obj, "a")
    assert err.code == code and err.kind is kind and err.endpoint == "a"


def test_too_large_is_flagged() -> None:
    assert rpc_error_from_object({"code": -32003, "message": "response too large"}, "a").too_large
    assert isinstance(http_error(413, "a"), RpcError)
    assert not rpc_error_from_object({"code": -32000, "message": "unknown block"}, "a").too_large


def test_transport_error_never_carries_the_url() -> None:
    exc = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h.example", 1, False, True, None, None, None, None),
        ConnectionRefusedError(111, "Connect call failed ('h.example', 1) /v2/SECRET"))
    err = transport_error(exc, "primary")
    assert "SECRET" not in str(err) and "h.example" not in str(err)
    assert "primary" in str(err)


# ------------------------------------------------------------------ the pool against a fake node

Respond = Callable[[Any], tuple[int, Any]]


class FakeNode:
    """An HTTP server answering JSON-RPC through ``respond(payload) -> (status, body)``."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v2/SECRET"

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        payload = orjson.loads(await request.read())
        status, body = self.respond(payload)
        if isinstance(body, float):
            await asyncio.sleep(body)
            body = {"jsonrpc": "2.0", "id": payload["id"], "result": None}
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        return web.Response(status=status, body=data, content_type="application/json")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def ok(result: Callable[[str, list[Any]], Any]) -> Respond:
    def respond(payload: Any) -> tuple[int, Any]:
        if isinstance(payload, list):
            return 200, [{"jsonrpc": "2.0", "id": c["id"], "result": result(c["method"],
                                                                             c["params"])}
                         for c in payload]
        return 200, {"jsonrpc": "2.0", "id": payload["id"],
                     "result": result(payload["method"], payload["params"])}
    return respond


def echo(method: str, params: list[Any]) -> Any:
    return [method, *params]


@pytest.fixture
async def nodes() -> AsyncIterator[list[FakeNode]]:
    made: list[FakeNode] = []
    yield made
    for n in made:
        await n.stop()


async def node(nodes: list[FakeNode], respond: Respond) -> FakeNode:
    n = FakeNode(respond)
    await n.start()
    nodes.append(n)
    return n


class Pool:
    """EVM clients in an :class:`EndpointPool`, taken as identified, asked like one node."""

    def __init__(self, chain: str, urls: Sequence[str], attempts: int, timeout_s: float,
                 deadline_s: float | None) -> None:
        clients = [EvmRpcClient(chain, Endpoint(f"e{i}", u), chain_id=1, timeout_s=timeout_s)
                   for i, u in enumerate(urls)]
        self.pool = EndpointPool(chain, clients, retry=RetryPolicy(
            max_attempts=attempts, deadline_s=deadline_s or 3 * timeout_s,
            backoff_base_s=0.001, backoff_cap_s=0.01))
        for c in clients:
            self.pool.observe(c.name, IdentityOk())

    @property
    def followed(self) -> str:
        return self.pool.serving()[0]

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        return await self.pool.ask(lambda c: c.call(method, params), what=method)

    async def call_decoded(self, method: str, params: Sequence[Any],
                           decode: Callable[[Any], Any]) -> Any:
        return await self.pool.ask(lambda c: c.call_decoded(method, params, decode), what=method)

    async def batch(self, calls: Sequence[Call], via: str = "dict") -> list[Any]:
        """``via="typed"``: the msgspec envelope (``batch_raw_decoded``), results decoded after."""
        if via == "typed":
            def decode(replies: list[Any]) -> list[Any]:
                return [answers.generic(r) for r in raise_errors(replies)]
            return await self.pool.ask(lambda c: c.batch_raw_decoded(calls, decode), what="batch")
        return await self.pool.ask(lambda c: c.batch(calls), what="batch")

    async def close(self) -> None:
        await self.pool.close()


def pool(chain: str, *urls: str, attempts: int = 3, timeout_s: float = 2.0,
         deadline_s: float | None = None) -> Pool:
    return Pool(chain, urls, attempts, timeout_s, deadline_s)


def retries(chain: str) -> float:
    return sum(s.value for m in REGISTRY.collect() if m.name == "watcher_rpc_retries"
               for s in m.samples if s.name == "watcher_rpc_retries_total"
               and s.labels["chain"] == chain)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("via", ["dict", "typed"])
async def test_batch_matches_answers_by_id(nodes: list[FakeNode], via: str) -> None:
    def respond(payload: Any) -> tuple[int, Any]:
        if isinstance(payload, dict):
            return 200, {"jsonrpc": "2.0", "id": payload["id"], "result": payload["params"][0]}
        return 200, [{"jsonrpc": "2.0", "id": c["id"], "result": c["params"][0]}
                     for c in reversed(payload)]
    n = await node(nodes, respond)
    p = pool(f"t-order-{via}", n.url)
    try:
        assert await p.batch([("m", [i]) for i in range(5)], via) == [0, 1, 2, 3, 4]
        assert await p.call("m", [7]) == 7
        assert metric("watcher_rpc_latency_seconds_count", chain=f"t-order-{via}", endpoint="e0",
                      method="batch:m") == 1
        assert metric("watcher_rpc_latency_seconds_count", chain=f"t-order-{via}", endpoint="e0",
                      method="m") == 1
    finally:
        await p.close()


@pytest.mark.parametrize(("name", "mangle"), [
    ("missing", lambda items: items[:-1]),
    ("repeated", lambda items: [items[0], items[0]]),
    ("unknown", lambda items: [items[0], {**items[1], "id": 999}]),
    ("no-result", lambda items: [items[0], {"jsonrpc": "2.0", "id": items[1]["id"]}]),
    ("not-a-list", lambda items: items[0]),
    ("not-objects", lambda items: [1, 2]),
])
@pytest.mark.parametrize("via", ["dict", "typed"])
async def test_batch_answer_defects_are_invalid(nodes: list[FakeNode], name: str,
                                                mangle: Callable[[Any], Any], via: str) -> None:
    def respond(payload: Any) -> tuple[int, Any]:
        return 200, mangle([{"jsonrpc": "2.0", "id": c["id"], "result": 1} for c in payload])
    n = await node(nodes, respond)
    p = pool(f"t-defect-{name}-{via}", n.url, attempts=2)
    try:
        with pytest.raises(NodeAnswerInvalid) as info:
            await p.batch([("m", []), ("m", [])], via)
        assert info.value.kind is R and info.value.endpoint == "e0"
        assert n.requests == 2  # retried: another answer may be sound
    finally:
        await p.close()


@pytest.mark.parametrize("via", ["dict", "typed"])
async def test_item_error_raises_with_its_kind(nodes: list[FakeNode], via: str) -> None:
    def respond(payload: Any) -> tuple[int, Any]:
        return 200, [{"jsonrpc": "2.0", "id": payload[0]["id"], "result": 1},
                     {"jsonrpc": "2.0", "id": payload[1]["id"],
                      "error": {"code": -32601, "message": "Method not found"}}]
    n = await node(nodes, respond)
    chain = f"t-item-{via}"
    p = pool(chain, n.url)
    try:
        with pytest.raises(RpcError) as info:
            await p.batch([("m", []), ("nope", [])], via)
        assert info.value.kind is F and info.value.code == -32601
        assert n.requests == 1  # FINAL: not retried
        assert retries(chain) == 0
        assert metric("watcher_rpc_errors_total", chain=chain, endpoint="e0", kind="final") == 1
    finally:
        await p.close()


@pytest.mark.parametrize("via", ["dict", "typed"])
async def test_batch_refused_as_a_whole(nodes: list[FakeNode], via: str) -> None:
    n = await node(nodes, lambda p: (200, {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "batch too large"}}))
    p = pool(f"t-whole-{via}", n.url)
    try:
        with pytest.raises(RpcError) as info:
            await p.batch([("m", []), ("m", [])], via)
        assert info.value.too_large and info.value.kind is F
    finally:
        await p.close()


async def test_retriable_is_retried_up_to_max_attempts(nodes: list[FakeNode]) -> None:
    n = await node(nodes, lambda p: (503, b"busy"))
    p = pool("t-503", n.url, attempts=4)
    try:
        with pytest.raises(ChainError) as info:
            await p.call("m", [])
        assert info.value.kind is R
        assert n.requests == 4  # the call, then identity checks until the attempts run out
        assert retries("t-503") == 3
        assert metric("watcher_rpc_errors_total", chain="t-503", endpoint="e0",
                      kind="retriable") == 4
    finally:
        await p.close()


async def test_http_error_with_jsonrpc_body(nodes: list[FakeNode]) -> None:
    n = await node(nodes, lambda p: (400, {"jsonrpc": "2.0", "id": p["id"], "error": {
        "code": -32000, "message": "nonce too low"}}))
    p = pool("t-400", n.url)
    try:
        with pytest.raises(RpcError) as info:
            await p.call("eth_sendRawTransaction", ["0x00"])
        assert info.value.kind is ErrorKind.NONCE_TOO_LOW
        assert n.requests == 1
    finally:
        await p.close()


async def test_failover_to_the_next_endpoint(nodes: list[FakeNode]) -> None:
    bad = await node(nodes, lambda p: (502, b"bad gateway"))
    good = await node(nodes, ok(echo))
    p = pool("t-failover", bad.url, good.url)
    try:
        assert await p.call("m", [1]) == ["m", 1]
        assert p.followed == "e1"
        assert await p.call("m", [2]) == ["m", 2]  # stays on the endpoint that works
        assert bad.requests == 1 and good.requests == 2
        assert metric("watcher_rpc_errors_total", chain="t-failover", endpoint="e0",
                      kind="retriable") == 1
        assert metric("watcher_rpc_retries_total", chain="t-failover", endpoint="e0",
                      kind="retriable") == 1
    finally:
        await p.close()


async def test_failed_check_fails_over(nodes: list[FakeNode]) -> None:
    liar = await node(nodes, ok(lambda m, params: "wrong"))
    honest = await node(nodes, ok(lambda m, params: "right"))
    p = pool("t-check", liar.url, honest.url)

    def check(value: Any) -> str:
        if value != "right":
            raise NodeAnswerInvalid("not right")
        return str(value)

    try:
        assert await p.call_decoded("m", [], check) == "right"
        assert metric("watcher_rpc_errors_total", chain="t-check", endpoint="e0",
                      kind="retriable") == 1
    finally:
        await p.close()


async def test_no_failover_to_an_unhealthy_endpoint(nodes: list[FakeNode]) -> None:
    bad = await node(nodes, lambda p: (503, b""))
    lagging = await node(nodes, ok(echo))
    p = pool("t-unhealthy", bad.url, lagging.url, attempts=3)
    p.pool.observe("e1", HeadSeen(1))
    p.pool.observe("e1", BehindBest(9))
    try:
        with pytest.raises(ChainError):
            await p.call("m", [])
        assert lagging.requests == 0 and bad.requests == 3
    finally:
        await p.close()


async def test_asking_each_endpoint_does_not_fail_over(nodes: list[FakeNode]) -> None:
    bad = await node(nodes, lambda p: (503, b""))
    good = await node(nodes, ok(echo))
    p = pool("t-pinned", good.url, bad.url, attempts=2)
    try:
        got = await p.pool.ask_each(lambda c: c.call("m", []), names=["e1"])
        assert isinstance(got["e1"], ChainError) and got["e1"].kind is R
        assert bad.requests == 1 and good.requests == 0
    finally:
        await p.close()


async def test_total_deadline_bounds_retries(nodes: list[FakeNode]) -> None:
    slow = await node(nodes, lambda p: (200, 0.5))  # answers after 0.5 s
    p = pool("t-deadline", slow.url, attempts=50, timeout_s=0.1, deadline_s=0.35)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(ChainError) as info:
            await p.call("m", [])
        assert info.value.kind is R
        assert loop.time() - started < 1.0
        assert slow.requests <= 4
    finally:
        await p.close()


async def test_dead_endpoint_error_names_it_without_url() -> None:
    p = pool("t-dead", "http://127.0.0.1:1/v2/SECRET", attempts=2)
    try:
        with pytest.raises(ChainError) as info:
            await p.call("m", [])
        assert info.value.kind is R and info.value.endpoint == "e0"
        assert "SECRET" not in str(info.value) and "127.0.0.1" not in str(info.value)
        view = p.pool.states()["e0"]
        assert "SECRET" not in (view.problem or "") and "127.0.0.1" not in (view.problem or "")
        assert metric("watcher_rpc_errors_total", chain="t-dead", endpoint="e0",
                      kind="retriable") == 2
    finally:
        await p.close()


async def test_not_json_is_invalid(nodes: list[FakeNode]) -> None:
    n = await node(nodes, lambda p: (200, b"<html>"))
    p = pool("t-html", n.url, attempts=1)
    try:
        with pytest.raises(NodeAnswerInvalid):
            await p.call("m", [])
    finally:
        await p.close()
