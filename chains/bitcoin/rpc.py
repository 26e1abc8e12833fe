"""One Bitcoin JSON-RPC endpoint (Bitcoin Core or btcd): the family's :class:`NodeClient`.

Every difference between the two nodes lives in this module and in
:mod:`chains.bitcoin.errors`, nowhere else:

* which node it is (:class:`Dialect`): learnt in :meth:`identify` from
  ``getnetworkinfo`` (Core) versus btcd's ``-1 Command unimplemented`` there;
* fee estimation: Core's ``estimatesmartfee`` (``{"feerate": BTC/kvB}`` or
  ``{"errors": [...]}``), btcd's ``estimatefee`` (a bare BTC/kB number, ``-1``
  or ``0`` when it has no data), both returned in integer sat/kvB;
* headers by hash: Core answers a stale block's verbose header with
  ``confirmations: -1``, btcd refuses it ("block ... is not in the main
  chain"); both mean "not on the main chain" here, so
  :meth:`main_chain_header` answers None for either;
* heights past the tip: Core's ``-8 Block height out of range``, btcd's
  ``-1 Block number out of range``; both end :meth:`block_hashes` early;
* ``getblock``'s raw form: verbosity ``0`` everywhere but on nodes where the
  parameter is still the boolean ``verbose`` (Dogecoin Core 1.14, forked from
  Core 0.14), learnt in :meth:`identify` on the genesis block;
* error transport: btcd answers errors with HTTP 200 and an ``error`` member,
  the legacy Core server with HTTP 500 (404 for an unknown method) and the
  same JSON body; the body is the answer whatever the status.

Blocks and transactions are always fetched raw (``getblock <hash> 0``,
``getrawtransaction <txid> 0``), identical on both nodes and a seventh of
verbose JSON's size; :mod:`chains.bitcoin.block` parses them. Requests are
JSON-RPC 1.0 envelopes (what both nodes and every Core version accept),
serialized and parsed with orjson, over one keep-alive
:class:`watcher.runtime.httpclient.HttpClient` pool with HTTP basic auth.

This client makes exactly one attempt per call: retries, failover and
endpoint health belong to the chain's endpoint pool. It raises only
:class:`ChainError` (classified once in :mod:`chains.bitcoin.errors`),
:class:`NodeAnswerInvalid` for an answer that fails a check, and
:class:`ChainIdentityMismatch`. No URL or credential is ever logged, put in
an exception or used as a label: only the endpoint's configured name.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from typing import Any

import orjson

from chains.bitcoin.errors import (
    BitcoinRpcError,
    Reason,
    http_error,
    rpc_error_from_object,
    transport_error,
)
from chains.bitcoin.networks import network as network_named
from watcher.config import Endpoint
from watcher.errors import (
    AnswerCheck,
    ChainError,
    ChainIdentityMismatch,
    ErrorKind,
    NodeAnswerInvalid,
)
from watcher.metrics import RPC_LATENCY
from watcher.runtime.httpclient import HttpClient, HttpError
from watcher.types import BlockHash, ChainHead, TxId

Call = tuple[str, Sequence[Any]]

_HASH_RE = re.compile(r"[0-9a-f]{64}\Z")
_SATS_PER_BTC = Decimal(100_000_000)


class Dialect(StrEnum):
    CORE = "core"
    BTCD = "btcd"


@dataclass(frozen=True, slots=True)
class HeaderInfo:
    """A main-chain header as the node describes it (verbose ``getblockheader``)."""

    hash: BlockHash
    height: int
    previous_hash: BlockHash | None
    """None only for the genesis block."""
    merkle_root: str
    time: int


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and _HASH_RE.match(value) is not None


def _hash(value: object, what: str, name: str) -> BlockHash:
    if not _is_hash(value):
        raise NodeAnswerInvalid(f"{what} is not a 64-hex-digit hash", name)
    return BlockHash(str(value))


def _int(value: object, what: str, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise NodeAnswerInvalid(f"{what} is not an integer", name)
    return value


def _hex_bytes(value: object, what: str, name: str) -> bytes:
    if not isinstance(value, str):
        raise NodeAnswerInvalid(f"{what} is not a hex string", name)
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise NodeAnswerInvalid(f"{what} is not a hex string", name) from None


def _rate(value: object) -> int:
    """A fee rate in BTC per 1000 (virtual) bytes as integer sat/kvB, rounded up: btcd's
    estimator answers more than 8 decimals, and a rate (unlike an amount) may round."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("not a number")  # noqa: TRY004 (one error type for every bad rate)
    sats = Decimal(repr(value)) * _SATS_PER_BTC
    return int(sats.to_integral_value(rounding=ROUND_CEILING))


class BitcoinRpcClient:
    """One endpoint of one Bitcoin-family chain, Core or btcd (see the module docstring)."""

    def __init__(self, chain: str, endpoint: Endpoint, network: str, *, timeout_s: float,
                 connections: int = 16) -> None:
        self._chain = chain
        self._name = endpoint.name
        self._network = network
        self._timeout_s = timeout_s
        auth = (None if endpoint.username is None
                else (endpoint.username, endpoint.password or ""))
        self._http = HttpClient(endpoint.url, connections=connections, auth=auth,
                                headers={"Content-Type": "application/json"})
        self._ids = itertools.count(1)
        self._latency: dict[str, Any] = {}
        self._dialect: Dialect | None = None
        self._raw_block_flag: int | bool = 0
        """``getblock``'s second parameter for raw hex: verbosity 0 (Core 0.15+, Litecoin,
        btcd), or ``false`` where it is still the boolean ``verbose`` (Dogecoin 1.14)."""

    @property
    def name(self) -> str:
        return self._name

    @property
    def dialect(self) -> Dialect | None:
        """Which node this is; None until :meth:`identify` succeeded."""
        return self._dialect

    # ------------------------------------------------------------ transport

    def _observe(self, label: str, seconds: float) -> None:
        child = self._latency.get(label)
        if child is None:
            child = RPC_LATENCY.labels(self._chain, self._name, label)
            self._latency[label] = child
        child.observe(seconds)

    async def _post(self, body: bytes, label: str) -> Any:
        """One HTTP round trip: the decoded JSON answer, or a classified :class:`ChainError`."""
        started = time.perf_counter()
        try:
            status, raw = await self._http.post(body, self._timeout_s)
        except (HttpError, TimeoutError, OSError) as exc:
            raise transport_error(exc, self._name) from None
        self._observe(label, time.perf_counter() - started)
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            if status != 200:
                raise http_error(status, self._name) from None
            raise NodeAnswerInvalid("answer is not JSON", self._name) from None
        if status != 200:
            # Legacy Core: HTTP 500 (404 for an unknown method) carrying the error object.
            err = answer.get("error") if isinstance(answer, dict) else None
            if err is None:
                raise http_error(status, self._name)
            raise rpc_error_from_object(err, self._name)
        return answer

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        """The result of one call; an error answer is raised as :class:`BitcoinRpcError`."""
        rid = next(self._ids)
        body = orjson.dumps({"jsonrpc": "1.0", "id": rid, "method": method,
                             "params": list(params)})
        answer = await self._post(body, method)
        if not isinstance(answer, dict):
            raise NodeAnswerInvalid(f"answer to {method} is not an object", self._name)
        err = answer.get("error")
        if err is not None:
            raise rpc_error_from_object(err, self._name)
        if answer.get("id") != rid:
            raise NodeAnswerInvalid(f"answer to {method} carries another id", self._name,
                                    AnswerCheck.BATCH)
        if "result" not in answer:
            raise NodeAnswerInvalid(f"answer to {method} has no result", self._name)
        return answer["result"]

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """One POST of several calls; each item is a result or the :class:`BitcoinRpcError`
        the node answered for that call, in the order of ``calls``."""
        if not calls:
            return []
        first = next(self._ids)
        for _ in range(len(calls) - 1):
            next(self._ids)
        body = orjson.dumps([
            {"jsonrpc": "1.0", "id": first + i, "method": method, "params": list(params)}
            for i, (method, params) in enumerate(calls)])
        label = "batch:" + "+".join(sorted({m for m, _ in calls}))
        answer = await self._post(body, label)
        if isinstance(answer, dict) and answer.get("error") is not None:
            raise rpc_error_from_object(answer["error"], self._name)
        count = len(calls)
        if not isinstance(answer, list) or len(answer) != count:
            raise NodeAnswerInvalid("answer to a batch has another number of items",
                                    self._name, AnswerCheck.BATCH)
        replies: list[Any] = [None] * count
        seen = [False] * count
        for item in answer:
            rid = item.get("id") if isinstance(item, dict) else None
            if type(rid) is not int or not first <= rid < first + count or seen[rid - first]:
                raise NodeAnswerInvalid("batch answer with a missing, unknown or repeated id",
                                        self._name, AnswerCheck.BATCH)
            seen[rid - first] = True
            assert isinstance(item, dict)
            err = item.get("error")
            if err is not None:
                replies[rid - first] = rpc_error_from_object(err, self._name)
            elif "result" not in item:
                raise NodeAnswerInvalid("batch item has neither result nor error", self._name)
            else:
                replies[rid - first] = item["result"]
        return replies

    # ------------------------------------------------------------ NodeClient

    async def identify(self) -> None:
        """Checks ``getblockhash 0`` against the configured network's genesis hash, then
        learns the dialect. A node of another network raises :class:`ChainIdentityMismatch`
        naming the endpoint; an unreachable one a RETRIABLE :class:`ChainError`."""
        expected = network_named(self._network).genesis_hash
        try:
            got = await self.call("getblockhash", [0])
        except BitcoinRpcError as exc:
            if exc.kind is ErrorKind.RETRIABLE:
                raise
            raise ChainIdentityMismatch(
                f"chain {self._chain}: endpoint {self._name} cannot report its genesis "
                f"block ({exc.reason.value})") from None
        if not _is_hash(got):
            raise ChainIdentityMismatch(
                f"chain {self._chain}: endpoint {self._name} answered no genesis hash")
        if got != expected:
            raise ChainIdentityMismatch(
                f"chain {self._chain}: endpoint {self._name} serves genesis {got}, "
                f"not that of network {self._network} ({expected})")
        self._dialect = await self._learn_dialect()
        self._raw_block_flag = await self._learn_raw_block_flag(got)

    async def _learn_raw_block_flag(self, genesis: str) -> int | bool:
        """Asks for the (small) genesis block raw with verbosity 0, else with ``false``."""
        try:
            await self.call("getblock", [genesis, 0])
            return 0
        except BitcoinRpcError as exc:
            if exc.kind is ErrorKind.RETRIABLE:
                raise
        await self.call("getblock", [genesis, False])  # its error, if any, is the answer
        return False

    async def _learn_dialect(self) -> Dialect:
        try:
            info = await self.call("getnetworkinfo")
        except BitcoinRpcError as exc:
            if exc.reason is Reason.METHOD_NOT_FOUND:
                return Dialect.BTCD  # btcd: "Command unimplemented" (it has getinfo instead)
            if exc.kind is ErrorKind.FINAL:
                return Dialect.CORE  # refused, not absent: only fee estimation depends on it
            raise
        if isinstance(info, dict) and "btcd" in str(info.get("subversion", "")).lower():
            return Dialect.BTCD
        return Dialect.CORE

    async def head(self) -> ChainHead:
        """The tip from ``getblockchaininfo``: height and hash read together, never torn
        between two calls by a block arriving in between (both nodes have it)."""
        info = await self.call("getblockchaininfo")
        if not isinstance(info, dict):
            raise NodeAnswerInvalid("getblockchaininfo is not an object", self._name)
        return ChainHead(number=_int(info.get("blocks"), "getblockchaininfo.blocks", self._name),
                         hash=_hash(info.get("bestblockhash"),
                                    "getblockchaininfo.bestblockhash", self._name))

    async def close(self) -> None:
        await self._http.close()

    # ------------------------------------------------------------ chain reads

    async def best_block_hash(self) -> BlockHash:
        return _hash(await self.call("getbestblockhash"), "getbestblockhash", self._name)

    async def block_count(self) -> int:
        return _int(await self.call("getblockcount"), "getblockcount", self._name)

    async def block_hashes(self, start: int, count: int) -> list[BlockHash]:
        """Main-chain hashes at heights ``start ..`` (one batch), ending early at the tip."""
        replies = await self.batch([("getblockhash", [h]) for h in range(start, start + count)])
        hashes: list[BlockHash] = []
        for reply in replies:
            if isinstance(reply, BitcoinRpcError):
                if reply.reason is Reason.OUT_OF_RANGE:
                    break
                raise reply
            hashes.append(_hash(reply, "getblockhash", self._name))
        return hashes

    async def hashes_at(self, heights: Sequence[int]) -> dict[int, BlockHash]:
        """Main-chain hash at each of ``heights`` (one batch); heights past the tip are left
        out."""
        wanted = list(heights)
        replies = await self.batch([("getblockhash", [h]) for h in wanted])
        out: dict[int, BlockHash] = {}
        for height, reply in zip(wanted, replies, strict=True):
            if isinstance(reply, BitcoinRpcError):
                if reply.reason is Reason.OUT_OF_RANGE:
                    continue
                raise reply
            out[height] = _hash(reply, "getblockhash", self._name)
        return out

    async def raw_headers(self, hashes: Sequence[BlockHash]) -> list[bytes | None]:
        """The 80-byte serialized headers (``getblockheader <h> false``, which both nodes
        serve for side-chain blocks too), None where the node has no such block."""
        replies = await self.batch([("getblockheader", [h, False]) for h in hashes])
        out: list[bytes | None] = []
        for reply in replies:
            if isinstance(reply, BitcoinRpcError):
                if reply.reason is Reason.NOT_FOUND:
                    out.append(None)
                    continue
                raise reply
            raw = _hex_bytes(reply, "getblockheader", self._name)
            if len(raw) != 80:
                raise NodeAnswerInvalid("a block header is not 80 bytes", self._name)
            out.append(raw)
        return out

    async def main_chain_header(self, block_hash: BlockHash) -> HeaderInfo | None:
        """The verbose header of ``block_hash`` if it is on the node's main chain, else None
        (unknown to the node, or on a side branch: Core's ``confirmations: -1``, btcd's
        "not in the main chain")."""
        try:
            obj = await self.call("getblockheader", [block_hash, True])
        except BitcoinRpcError as exc:
            if exc.reason in (Reason.NOT_FOUND, Reason.NOT_IN_MAIN_CHAIN):
                return None
            raise
        if not isinstance(obj, dict):
            raise NodeAnswerInvalid("getblockheader is not an object", self._name)
        if _int(obj.get("confirmations"), "getblockheader.confirmations", self._name) < 0:
            return None
        got = _hash(obj.get("hash"), "getblockheader.hash", self._name)
        if got != block_hash:
            raise NodeAnswerInvalid("getblockheader answered another block", self._name,
                                    AnswerCheck.BLOCK_HASH)
        height = _int(obj.get("height"), "getblockheader.height", self._name)
        prev = obj.get("previousblockhash")
        if prev is None and height != 0:
            raise NodeAnswerInvalid("header above genesis without a parent", self._name)
        return HeaderInfo(
            hash=got, height=height,
            previous_hash=None if prev is None else _hash(prev, "previousblockhash", self._name),
            merkle_root=_hash(obj.get("merkleroot"), "getblockheader.merkleroot", self._name),
            time=_int(obj.get("time"), "getblockheader.time", self._name))

    async def raw_block(self, block_hash: BlockHash) -> bytes | None:
        """The serialized block (``getblock <hash> 0``, served for side-chain blocks too),
        None when the node does not have it. The caller checks its hash and merkle root."""
        try:
            result = await self.call("getblock", [block_hash, self._raw_block_flag])
        except BitcoinRpcError as exc:
            if exc.reason is Reason.NOT_FOUND:
                return None
            raise
        raw = _hex_bytes(result, "getblock", self._name)
        if len(raw) < 81:
            raise NodeAnswerInvalid("a raw block shorter than its header", self._name)
        return raw

    async def raw_blocks(self, hashes: Sequence[BlockHash]) -> list[bytes | None]:
        """Several serialized blocks in one batch POST (as :meth:`raw_block` each): fewer
        round trips when blocks are small; keep batches small for full-size blocks."""
        flag = self._raw_block_flag
        replies = await self.batch([("getblock", [h, flag]) for h in hashes])
        out: list[bytes | None] = []
        for reply in replies:
            if isinstance(reply, BitcoinRpcError):
                if reply.reason is Reason.NOT_FOUND:
                    out.append(None)
                    continue
                raise reply
            raw = _hex_bytes(reply, "getblock", self._name)
            if len(raw) < 81:
                raise NodeAnswerInvalid("a raw block shorter than its header", self._name)
            out.append(raw)
        return out

    async def raw_transactions(self, txids: Sequence[TxId]) -> list[bytes | None]:
        """Serialized transactions (``getrawtransaction <txid> 0``, one batch), None for
        those the node does not know (left the mempool, or no ``txindex``)."""
        replies = await self.batch([("getrawtransaction", [t, 0]) for t in txids])
        out: list[bytes | None] = []
        for reply in replies:
            if isinstance(reply, BitcoinRpcError):
                if reply.reason is Reason.NOT_FOUND:
                    out.append(None)
                    continue
                raise reply
            out.append(_hex_bytes(reply, "getrawtransaction", self._name))
        return out

    async def raw_transaction(self, txid: TxId) -> bytes | None:
        return (await self.raw_transactions([txid]))[0]

    async def mempool_txids(self) -> list[TxId]:
        """The ids in the node's mempool (``getrawmempool``, not verbose: 65 bytes each)."""
        result = await self.call("getrawmempool", [False])
        if not isinstance(result, list):
            raise NodeAnswerInvalid("getrawmempool is not a list", self._name)
        for item in result:
            if not _is_hash(item):
                raise NodeAnswerInvalid("getrawmempool holds a non-txid", self._name)
        return [TxId(t) for t in result]

    async def send_raw_transaction(self, raw: bytes) -> TxId:
        """Hands a signed transaction to the node; its txid. A refusal is raised with its
        reason (ALREADY_KNOWN, UNDERPRICED, CONFLICT, INPUTS_SPENT ...); the caller must
        compare the txid with its own computation."""
        result = await self.call("sendrawtransaction", [raw.hex()])
        if not _is_hash(result):
            raise NodeAnswerInvalid("sendrawtransaction answered no txid", self._name)
        return TxId(str(result))

    async def estimate_fee_rate(self, target_blocks: int) -> int | None:
        """Fee rate for confirmation within ``target_blocks``, in sat per 1000 virtual bytes;
        None when the node has no estimate yet."""
        if self._dialect is None:
            raise ChainError(ErrorKind.RETRIABLE, "endpoint not identified yet", self._name)
        try:
            if self._dialect is Dialect.CORE:
                obj = await self.call("estimatesmartfee", [target_blocks])
                if not isinstance(obj, dict):
                    raise NodeAnswerInvalid("estimatesmartfee is not an object", self._name)
                if "feerate" not in obj:
                    return None  # {"errors": ["Insufficient data or no feerate found"], ...}
                rate = _rate(obj["feerate"])
            else:
                rate = _rate(await self.call("estimatefee", [target_blocks]))
        except ValueError:
            raise NodeAnswerInvalid("fee estimate is not an amount in BTC", self._name) from None
        return rate if rate > 0 else None  # btcd: -1 or 0 without data

