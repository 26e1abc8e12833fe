"""One EVM endpoint over JSON-RPC/HTTP: the family's :class:`watcher.ports.NodeClient`.

Single attempts only: retries, failover and endpoint states belong to
:class:`watcher.runtime.pool.EndpointPool`. The bulk path avoids web3 entirely:
requests are serialized and answers parsed with orjson, once per HTTP body, over
one keep-alive :class:`watcher.runtime.httpclient.HttpClient` pool per endpoint. Every failure leaves as a
classified :class:`ChainError` (:mod:`chains.evm.errors`); a defective answer as a
:class:`NodeAnswerInvalid` with its :class:`AnswerCheck` (a batch with a missing,
repeated or unknown id is ``batch``); answers are matched to requests by id, in
any order. Every round trip counts in ``RPC_LATENCY``.

URLs never appear in exceptions, logs or labels: only endpoint names. The HTTP
exchange is a :data:`Transport` so that tests can put a misbehaving node behind it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import orjson

from chains.evm import answers, parse
from chains.evm.errors import RpcError, http_error, rpc_error_from_object, transport_error
from watcher.config import Endpoint, FinalityMode
from watcher.errors import AnswerCheck, ChainError, ChainIdentityMismatch, ErrorKind, NodeAnswerInvalid
from watcher.metrics import RPC_LATENCY
from watcher.runtime.httpclient import HttpClient, HttpError
from watcher.types import ChainHead

T = TypeVar("T")

Call = tuple[str, Sequence[Any]]
"""(method, params) of one JSON-RPC call."""

Transport = Callable[[bytes, float], Awaitable[tuple[int, bytes]]]
"""One HTTP POST of a body with a timeout: (status, raw body). Raises HttpError/OS/timeout
errors for transport failures, which the client classifies."""

TRACE_CONFIG = {"tracer": "callTracer"}

_DECODE_FAILURES = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def raise_errors(replies: Sequence[Any]) -> list[Any]:
    """The results of a batch, raising the first error object a node answered."""
    for reply in replies:
        if isinstance(reply, RpcError):
            raise reply
    return list(replies)


def _batch_label(calls: Sequence[Call]) -> str:
    return "batch:" + "+".join(sorted({method for method, _ in calls}))


class EvmRpcClient:
    """One endpoint of one EVM chain; every method is one attempt."""

    def __init__(self, chain: str, endpoint: Endpoint, *, chain_id: int, timeout_s: float,
                 finality_mode: FinalityMode = FinalityMode.DEPTH,
                 transport: Transport | None = None, connections: int = 16,
                 observe: Callable[[str, float], None] | None = None) -> None:
        """``observe(label, seconds)`` replaces ``RPC_LATENCY`` (a scan worker's client,
        whose figures the daemon records)."""
        self.chain = chain
        self._name = endpoint.name
        self.chain_id = chain_id
        self.finality_mode = finality_mode
        self.require_traces = False
        """Set by the chain source when traces are on: identity then includes a trace probe."""
        self.known_head: int | None = None
        """The last head this endpoint reported: a ``null`` at or below it is a lie."""
        self._timeout_s = timeout_s
        self._url = endpoint.url if transport is None else None
        self._http: HttpClient | None = None
        self._transport: Transport
        if transport is None:
            # The client's own POST is the transport: no wrapper frame per request.
            self._http = HttpClient(endpoint.url, connections=connections,
                                    headers={"Content-Type": "application/json"})
            self._transport = self._http.post
        else:
            self._transport = transport
        self._ids = itertools.count(1)
        self._latency: dict[str, Any] = {}
        self._observer = observe

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> str | None:
        """The endpoint's URL when this client speaks HTTP itself (None with a test transport);
        handed to a scan worker, never logged."""
        return self._url

    def observe_latency(self, label: str, seconds: float) -> None:
        """Records a round trip made on this endpoint's behalf (by a scan worker)."""
        self._observe(label, seconds)

    # ------------------------------------------------------------ NodeClient

    async def identify(self) -> None:
        """``eth_chainId`` equals the configured id, and, when traces are required,
        ``debug_traceBlockByHash`` with ``callTracer`` works."""
        try:
            chain_id = await self.call("eth_chainId", [])
        except ChainError as exc:
            if exc.kind is ErrorKind.RETRIABLE:
                raise
            raise ChainIdentityMismatch(
                f"chain {self.chain}: endpoint {self.name} cannot report its chain id") from None
        try:
            got = parse.quantity(chain_id, "eth_chainId")
        except NodeAnswerInvalid:
            raise ChainIdentityMismatch(
                f"chain {self.chain}: endpoint {self.name} answered no chain id") from None
        if got != self.chain_id:
            raise ChainIdentityMismatch(
                f"chain {self.chain}: endpoint {self.name} serves chain id {got}, "
                f"configured {self.chain_id}")
        if self.require_traces and not await self.can_trace():
            raise ChainIdentityMismatch(
                f"chain {self.chain}: endpoint {self.name} cannot debug_traceBlockByHash "
                "with callTracer, and traces are on")

    async def can_trace(self) -> bool:
        """Whether this endpoint traces its latest block; RETRIABLE errors are raised."""
        try:
            latest = await self.call("eth_getBlockByNumber", ["latest", False])
            ref = parse.parse_header(latest)
            await self.call("debug_traceBlockByHash", [ref.hash, TRACE_CONFIG])
        except ChainError as exc:
            if exc.kind is ErrorKind.RETRIABLE:
                raise
            return False
        return True

    async def head(self) -> ChainHead:
        calls: list[Call] = [("eth_getBlockByNumber", ["latest", False])]
        if self.finality_mode is FinalityMode.FINALIZED:
            calls.append(("eth_getBlockByNumber", ["finalized", False]))

        def decode(replies: list[Any]) -> ChainHead:
            latest = replies[0]
            if isinstance(latest, RpcError):
                raise latest
            ref = parse.parse_header(latest)
            finalized: int | None = None
            if len(replies) > 1 and replies[1] is not None and not isinstance(replies[1],
                                                                              RpcError):
                # A node without the tag (or failing on it) gives no finalized height.
                finalized = parse.parse_header(replies[1]).number
                if finalized > ref.number:
                    raise NodeAnswerInvalid(f"finalized {finalized} above latest {ref.number}",
                                            check=AnswerCheck.PARENT_LINK)
            return ChainHead(number=ref.number, hash=ref.hash, finalized_number=finalized)

        head = await self.batch_decoded(calls, decode)
        self.known_head = head.number
        return head

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------ calls

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        """The result of one call; an error answer is raised."""
        return await self.call_decoded(method, params, _identity)

    async def call_decoded(self, method: str, params: Sequence[Any],
                           decode: Callable[[Any], T]) -> T:
        """``decode(result)`` of one call; a defect found by ``decode`` is a NodeAnswerInvalid."""
        rid = next(self._ids)
        body = orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method,
                             "params": list(params)})
        answer = await self._post(body, method)
        return self._finish(lambda: decode(_single_result(answer, rid, self.name)), method)

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Results of a batch in the order of ``calls``; the first error answer is raised."""
        return await self.batch_decoded(calls, raise_errors)

    async def batch_decoded(self, calls: Sequence[Call], decode: Callable[[list[Any]], T]) -> T:
        """``decode(replies)`` of one batch POST, where a reply is a result or the
        :class:`RpcError` the node answered for that call, in the order of ``calls``."""
        if not calls:
            return decode([])
        first, body = self._batch_body(calls)
        label = _batch_label(calls)
        answer = await self._post(body, label)
        count = len(calls)
        return self._finish(lambda: decode(_batch_replies(answer, first, count, self.name)),
                            label)

    async def batch_raw_decoded(self, calls: Sequence[Call],
                                decode: Callable[[list[Any]], T], *,
                                contents: bool = False) -> T:
        """Like :meth:`batch_decoded`, but each reply is a result still encoded (a
        ``msgspec.Raw``, for :mod:`chains.evm.answers`) or the :class:`RpcError` answered.

        The envelope is decoded with msgspec and checked as :meth:`batch_decoded` checks
        it (one reply per call, ids matched in any order); an answer that is not a list
        of reply objects (a refused batch, an HTTP error) is classified as there.

        ``contents``: the batch asks block contents (blocks with transactions, logs,
        traces); its results are decoded in the same pass (:func:`answers.contents_batch`):
        a block as a view, logs and traces as lists."""
        if not calls:
            return decode([])
        first, body = self._batch_body(calls)
        label = _batch_label(calls)
        status, raw = await self._exchange(body, label)
        count = len(calls)
        return self._finish(lambda: decode(self._raw_replies(status, raw, first, count,
                                                             contents)), label)

    def _raw_replies(self, status: int, raw: bytes, first: int, count: int,
                     contents: bool = False) -> list[Any]:
        envelopes: Sequence[answers.Envelope | answers.ContentsEnvelope] | None = None
        if status == 200:
            try:
                envelopes = answers.contents_batch(raw) if contents else answers.batch(raw)
            except answers.DecodeError:
                envelopes = None
        if envelopes is None:
            # Not a list of reply objects: the generic path names what it is (a refused
            # batch, an HTTP error, not JSON) and raises; anything it accepts is still odd.
            _batch_replies(self._answer(status, raw), first, count, self.name)
            raise NodeAnswerInvalid("malformed answer to a batch", self.name,
                                    check=AnswerCheck.BATCH)
        if len(envelopes) != count:
            raise NodeAnswerInvalid("answer to a batch has another number of items", self.name,
                                    check=AnswerCheck.BATCH)
        replies: list[Any] = [None] * count
        seen = [False] * count
        for item in envelopes:
            rid = item.id
            if type(rid) is not int or not first <= rid < first + count or seen[rid - first]:
                raise NodeAnswerInvalid("batch answer with a missing, unknown or repeated id",
                                        self.name, check=AnswerCheck.BATCH)
            seen[rid - first] = True
            if item.error is not None:
                replies[rid - first] = rpc_error_from_object(item.error, self.name)
            elif answers.has_no_result(item.result):
                raise NodeAnswerInvalid("answer has neither result nor error", self.name)
            else:
                replies[rid - first] = item.result
        return replies

    def _finish(self, run: Callable[[], T], label: str) -> T:
        try:
            return run()
        except ChainError as exc:
            if not exc.endpoint:
                exc.endpoint = self.name
            raise
        except _DECODE_FAILURES as exc:
            raise NodeAnswerInvalid(f"malformed answer to {label} ({type(exc).__name__})",
                                    self.name) from None

    def _batch_body(self, calls: Sequence[Call]) -> tuple[int, bytes]:
        """The first id of a batch (ids are consecutive) and its encoded request."""
        first = next(self._ids)
        for _ in range(len(calls) - 1):
            next(self._ids)
        return first, orjson.dumps([
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": list(params)}
            for i, (method, params) in enumerate(calls)
        ])

    async def _post(self, body: bytes, label: str) -> Any:
        """One HTTP round trip; the decoded JSON answer, or a classified :class:`ChainError`."""
        status, raw = await self._exchange(body, label)
        return self._answer(status, raw)

    async def _exchange(self, body: bytes, label: str) -> tuple[int, bytes]:
        """One HTTP round trip: (status, raw body), or a classified transport error."""
        started = time.perf_counter()
        try:
            status, raw = await self._transport(body, self._timeout_s)
        except (HttpError, TimeoutError, OSError) as exc:
            raise transport_error(exc, self.name) from None
        self._observe(label, time.perf_counter() - started)
        return status, raw

    def _answer(self, status: int, raw: bytes) -> Any:
        """The decoded JSON answer of a round trip, or its classified :class:`ChainError`."""
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

    def _observe(self, label: str, seconds: float) -> None:
        if self._observer is not None:
            self._observer(label, seconds)
            return
        child = self._latency.get(label)
        if child is None:
            child = RPC_LATENCY.labels(self.chain, self.name, label)
            self._latency[label] = child
        child.observe(seconds)


def _identity(value: Any) -> Any:
    return value


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
        raise NodeAnswerInvalid("answer carries another id", name, check=AnswerCheck.BATCH)
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
        raise NodeAnswerInvalid("answer to a batch is not a list", name, check=AnswerCheck.BATCH)
    if not isinstance(answer, list) or len(answer) != count:
        raise NodeAnswerInvalid("answer to a batch has another number of items", name,
                                check=AnswerCheck.BATCH)
    replies: list[Any] = [None] * count
    seen = [False] * count
    for item in answer:
        rid = item.get("id") if isinstance(item, dict) else None
        if type(rid) is not int or not first <= rid < first + count or seen[rid - first]:
            raise NodeAnswerInvalid("batch answer with a missing, unknown or repeated id", name,
                                    check=AnswerCheck.BATCH)
        seen[rid - first] = True
        replies[rid - first] = _reply(item, name)
    return replies
