"""A JSON-RPC replay server answering a recorded chain from memory, so the node is not the bottleneck.

Serve (a separate process; data from ``python -m bench.chaingen``)::

    .venv/bin/python -m bench.replay_server --port 8600                # default chain dir
    .venv/bin/python -m bench.replay_server --data bench/.data/chain-2000x170 --port 0 --cpu 1
    .venv/bin/python -m bench.replay_server --head 100 --advance-interval 0.5   # a "live" chain

It prints one line ``READY http://127.0.0.1:<port> head=<n> blocks=<n>`` on stdout when it
answers (``--port 0`` picks a free port).  From Python, ``ReplayServer(data_dir)`` starts
it as a subprocess and gives ``.url`` (a context manager; ``.set_head(n)``).

Measure its raw rate (batched eth_getBlockByHash full over all blocks, bytes only and
orjson-parsed; then eth_getBlockReceipts batches and eth_getLogs 100-block windows)::

    .venv/bin/python -m bench.replay_server --measure http://127.0.0.1:8600 [--batch 50]

Methods (single and batch requests): eth_chainId, net_version, web3_clientVersion,
eth_blockNumber, eth_getBlockByNumber (number | latest | pending | safe (head-32) |
finalized (head-64) | earliest), eth_getBlockByHash, eth_getTransactionByHash,
eth_getTransactionReceipt, eth_getBlockReceipts, eth_getLogs (blockHash, or
fromBlock/toBlock clamped to the head; address string or list; topics per position:
null, a topic or a list of topics), and the replay controls replay_setHead [n] (returns
the new head) and replay_stats (requests, calls, bytes, server CPU seconds).  Anything
else is -32601 "method not found" (so debug_traceBlockByHash is "not supported").
Blocks above the head are invisible (null / not found).  ``--max-logs-range N`` makes
eth_getLogs over more than N blocks fail with -32005, like hosted providers.

The server is a raw asyncio.Protocol with a minimal HTTP/1.1 keep-alive parser; each
answer is pre-serialized bytes (orjson) that a reply only concatenates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT_VERSION = "replay-server/1.0 (chain-watcher bench)"
_SENTINEL = "\x00REPLAY-TXS\x00"
_SENTINEL_JSON = orjson.dumps(_SENTINEL)


class RpcFault(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(slots=True)
class BlockEntry:
    number: int
    hash: str
    header: bytes  # eth_getBlockByNumber(n, false) result
    full: bytes  # eth_getBlockByHash(h, true) result
    tx_offsets: list[int]  # spans of each transaction inside `full`: [start0, end0, start1, end1, ...]
    receipts: bytes  # eth_getBlockReceipts result
    receipt_offsets: list[int]
    logs_all: bytes  # all logs of the block, as a JSON array
    logs: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)  # (address, topics, log)


def _join_array(parts: list[bytes]) -> tuple[bytes, list[int]]:
    """JSON array of pre-serialized parts, and [start, end) offsets of every part in it."""
    offsets: list[int] = []
    pos = 1
    for p in parts:
        offsets += [pos, pos + len(p)]
        pos += len(p) + 1
    return b"[" + b",".join(parts) + b"]", offsets


class Chain:
    """The recorded chain in memory, as ready-to-send bytes."""

    def __init__(self, data_dir: Path) -> None:
        meta = json.loads((data_dir / "meta.json").read_text())
        self.chain_id = int(meta["chain_id"])
        self.blocks: list[BlockEntry] = []
        self.by_hash: dict[str, int] = {}
        self.tx_index: dict[str, tuple[int, int]] = {}
        with gzip.open(data_dir / "corpus.jsonl.gz", "rb") as fh:
            for line in fh:
                if line.strip():
                    self._add(orjson.loads(line))
        self.head = len(self.blocks) - 1
        self.max_logs_range: int | None = None

    def _add(self, rec: dict[str, Any]) -> None:
        number = int(rec["number"])
        if number != len(self.blocks):
            raise ValueError(f"corpus out of order at block {number}")
        block = rec["block"]
        tx_parts = [orjson.dumps(tx) for tx in block["transactions"]]
        block["transactions"] = _SENTINEL
        shell = orjson.dumps(block)
        pre, post = shell.split(_SENTINEL_JSON)
        txs, tx_off = _join_array(tx_parts)
        full = pre + txs + post
        tx_offsets = [o + len(pre) for o in tx_off]
        receipts, receipt_offsets = _join_array([orjson.dumps(r) for r in rec["receipts"]])
        logs = []
        for lg in rec["logs"]:
            logs.append((lg["address"].lower(), tuple(t.lower() for t in lg["topics"]), orjson.dumps(lg)))
        logs_all, _ = _join_array([raw for _, _, raw in logs])
        bhash = block["hash"].lower()
        self.blocks.append(
            BlockEntry(
                number,
                bhash,
                orjson.dumps(rec["header"]),
                full,
                tx_offsets,
                receipts,
                receipt_offsets,
                logs_all,
                logs,
            )
        )
        self.by_hash[bhash] = number
        for i, tx_hash in enumerate(rec["header"]["transactions"]):
            self.tx_index[tx_hash.lower()] = (number, i)

    # ------------------------------------------------------------------ lookups

    def block_number_param(self, tag: Any) -> int | None:
        """Resolve a block parameter to a visible block number, or None if not visible."""
        if isinstance(tag, str):
            if tag in ("latest", "pending"):
                return self.head
            if tag == "finalized":
                return max(self.head - 64, 0)
            if tag == "safe":
                return max(self.head - 32, 0)
            if tag == "earliest":
                return 0
            try:
                n = int(tag, 16) if tag.startswith(("0x", "0X")) else int(tag)
            except ValueError:
                raise RpcFault(-32602, f"invalid block tag {tag!r}") from None
        elif isinstance(tag, int) and not isinstance(tag, bool):
            n = tag
        elif isinstance(tag, dict) and "blockHash" in tag:
            return self.visible_hash(tag["blockHash"])
        elif isinstance(tag, dict) and "blockNumber" in tag:
            return self.block_number_param(tag["blockNumber"])
        else:
            raise RpcFault(-32602, f"invalid block parameter {tag!r}")
        return n if 0 <= n <= self.head else None

    def visible_hash(self, h: Any) -> int | None:
        if not isinstance(h, str):
            raise RpcFault(-32602, "invalid block hash")
        n = self.by_hash.get(h.lower())
        return n if n is not None and n <= self.head else None

    def block_ref(self, ref: Any) -> int | None:
        """A block number, tag or 32-byte hash (as eth_getBlockReceipts takes)."""
        if isinstance(ref, str) and len(ref) == 66:
            return self.visible_hash(ref)
        return self.block_number_param(ref)


_NULL = b"null"


def _topics_match(spec: list[frozenset[str] | None], topics: tuple[str, ...]) -> bool:
    if len(topics) < len(spec):
        return False
    return all(want is None or have in want for want, have in zip(spec, topics, strict=False))


def _param(params: list[Any], i: int, default: Any = None) -> Any:
    return params[i] if len(params) > i else default


class Handler:
    """Answers JSON-RPC calls with bytes (the serialized `result`)."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.requests = 0
        self.calls = 0
        self.bytes_out = 0
        c = chain
        self.methods: dict[str, Callable[[list[Any]], bytes]] = {
            "eth_chainId": lambda p: orjson.dumps(hex(c.chain_id)),
            "net_version": lambda p: orjson.dumps(str(c.chain_id)),
            "web3_clientVersion": lambda p: orjson.dumps(CLIENT_VERSION),
            "eth_blockNumber": lambda p: orjson.dumps(hex(c.head)),
            "eth_syncing": lambda p: b"false",
            "eth_getBlockByNumber": self.get_block_by_number,
            "eth_getBlockByHash": self.get_block_by_hash,
            "eth_getTransactionByHash": self.get_transaction,
            "eth_getTransactionReceipt": self.get_receipt,
            "eth_getBlockReceipts": self.get_block_receipts,
            "eth_getLogs": self.get_logs,
            "replay_setHead": self.set_head,
            "replay_stats": self.stats,
        }

    def _block(self, n: int | None, full: Any) -> bytes:
        if n is None:
            return _NULL
        b = self.chain.blocks[n]
        return b.full if full else b.header

    def get_block_by_number(self, p: list[Any]) -> bytes:
        return self._block(self.chain.block_number_param(_param(p, 0, "latest")), _param(p, 1, False))

    def get_block_by_hash(self, p: list[Any]) -> bytes:
        return self._block(self.chain.visible_hash(_param(p, 0)), _param(p, 1, False))

    def _tx_pos(self, p: list[Any]) -> tuple[BlockEntry, int] | None:
        h = _param(p, 0)
        if not isinstance(h, str):
            raise RpcFault(-32602, "invalid transaction hash")
        pos = self.chain.tx_index.get(h.lower())
        if pos is None or pos[0] > self.chain.head:
            return None
        return self.chain.blocks[pos[0]], pos[1]

    def get_transaction(self, p: list[Any]) -> bytes:
        pos = self._tx_pos(p)
        if pos is None:
            return _NULL
        b, i = pos
        return b.full[b.tx_offsets[2 * i] : b.tx_offsets[2 * i + 1]]

    def get_receipt(self, p: list[Any]) -> bytes:
        pos = self._tx_pos(p)
        if pos is None:
            return _NULL
        b, i = pos
        return b.receipts[b.receipt_offsets[2 * i] : b.receipt_offsets[2 * i + 1]]

    def get_block_receipts(self, p: list[Any]) -> bytes:
        n = self.chain.block_ref(_param(p, 0, "latest"))
        return _NULL if n is None else self.chain.blocks[n].receipts

    def get_logs(self, p: list[Any]) -> bytes:
        c = self.chain
        f = _param(p, 0, {})
        if not isinstance(f, dict):
            raise RpcFault(-32602, "invalid filter")
        if f.get("blockHash") is not None:
            if "fromBlock" in f or "toBlock" in f:
                raise RpcFault(-32602, "cannot specify both blockHash and fromBlock/toBlock")
            n = c.visible_hash(f["blockHash"])
            if n is None:
                raise RpcFault(-32000, "unknown block")
            lo = hi = n
        else:
            lo_tag, hi_tag = f.get("fromBlock") or "latest", f.get("toBlock") or "latest"
            lo = self._range_end(lo_tag)
            hi = self._range_end(hi_tag)
            if lo > hi:
                if lo > c.head:
                    return b"[]"
                raise RpcFault(-32602, "invalid block range params")
            hi = min(hi, c.head)
            if c.max_logs_range is not None and hi - lo + 1 > c.max_logs_range:
                raise RpcFault(-32005, f"exceed maximum block range: {c.max_logs_range}")
        addr = f.get("address")
        addresses: frozenset[str] | None
        if addr is None or addr == []:
            addresses = None
        elif isinstance(addr, str):
            addresses = frozenset((addr.lower(),))
        elif isinstance(addr, list):
            addresses = frozenset(a.lower() for a in addr)
        else:
            raise RpcFault(-32602, "invalid address filter")
        topics = self._topics(f.get("topics"))
        if addresses is None and not topics:
            chunks = [c.blocks[n].logs_all[1:-1] for n in range(lo, hi + 1) if len(c.blocks[n].logs_all) > 2]
            return b"[" + b",".join(chunks) + b"]"
        out: list[bytes] = []
        for n in range(lo, hi + 1):
            for address, log_topics, raw in c.blocks[n].logs:
                if addresses is not None and address not in addresses:
                    continue
                if topics and not _topics_match(topics, log_topics):
                    continue
                out.append(raw)
        return b"[" + b",".join(out) + b"]"

    def _range_end(self, tag: Any) -> int:
        c = self.chain
        if isinstance(tag, str) and tag.startswith(("0x", "0X")):
            try:
                return int(tag, 16)
            except ValueError:
                raise RpcFault(-32602, f"invalid block tag {tag!r}") from None
        n = c.block_number_param(tag)
        if n is None:
            raise RpcFault(-32000, "unknown block")
        return n

    @staticmethod
    def _topics(spec: Any) -> list[frozenset[str] | None]:
        if spec is None:
            return []
        if not isinstance(spec, list):
            raise RpcFault(-32602, "invalid topics filter")
        out: list[frozenset[str] | None] = []
        for pos in spec:
            if pos is None or pos == []:
                out.append(None)
            elif isinstance(pos, str):
                out.append(frozenset((pos.lower(),)))
            elif isinstance(pos, list):
                out.append(frozenset(t.lower() for t in pos if isinstance(t, str)))
            else:
                raise RpcFault(-32602, "invalid topics filter")
        while out and out[-1] is None:
            out.pop()
        return out

    def set_head(self, p: list[Any]) -> bytes:
        n = _param(p, 0)
        if isinstance(n, str):
            n = int(n, 16) if n.startswith("0x") else int(n)
        if not isinstance(n, int) or not 0 <= n < len(self.chain.blocks):
            raise RpcFault(-32602, f"head must be within 0..{len(self.chain.blocks) - 1}")
        self.chain.head = n
        return orjson.dumps(hex(n))

    def stats(self, p: list[Any]) -> bytes:
        return orjson.dumps(
            {
                "requests": self.requests,
                "calls": self.calls,
                "bytes_out": self.bytes_out,
                "cpu_seconds": time.process_time(),
                "head": self.chain.head,
                "blocks": len(self.chain.blocks),
            }
        )

    # ------------------------------------------------------------------ JSON-RPC envelope

    def _one(self, req: Any, out: list[bytes]) -> None:
        self.calls += 1
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            out += [b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"invalid request"}}']
            return
        rid = orjson.dumps(req.get("id"))
        method = req["method"]
        fn = self.methods.get(method)
        if fn is None:
            out += [
                b'{"jsonrpc":"2.0","id":',
                rid,
                b',"error":{"code":-32601,"message":',
                orjson.dumps(f"the method {method} does not exist/is not available"),
                b"}}",
            ]
            return
        params = req.get("params")
        if params is None:
            params = []
        try:
            if not isinstance(params, list):
                raise RpcFault(-32602, "params must be an array")
            result = fn(params)
        except RpcFault as e:
            out += [
                b'{"jsonrpc":"2.0","id":',
                rid,
                b',"error":',
                orjson.dumps({"code": e.code, "message": e.message}),
                b"}",
            ]
            return
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            out += [
                b'{"jsonrpc":"2.0","id":',
                rid,
                b',"error":',
                orjson.dumps({"code": -32602, "message": f"invalid params: {e}"}),
                b"}",
            ]
            return
        out += [b'{"jsonrpc":"2.0","id":', rid, b',"result":', result, b"}"]

    def handle_body(self, body: bytes) -> list[bytes]:
        """The response body of one HTTP request, as parts to join."""
        self.requests += 1
        try:
            req = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}']
        out: list[bytes] = []
        if isinstance(req, list):
            if not req:
                return [b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"empty batch"}}']
            out.append(b"[")
            for i, r in enumerate(req):
                if i:
                    out.append(b",")
                self._one(r, out)
            out.append(b"]")
        else:
            self._one(req, out)
        return out


# ---------------------------------------------------------------------- HTTP/1.1 protocol

_MAX_HEAD = 64 * 1024


class HttpRpcProtocol(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def _reply(self, status: bytes, parts: list[bytes], keep_alive: bool) -> None:
        assert self.transport is not None
        length = sum(len(p) for p in parts)
        head = (
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(length).encode()
            + (b"\r\n\r\n" if keep_alive else b"\r\nConnection: close\r\n\r\n")
        )
        data = b"".join([head, *parts])
        self.handler.bytes_out += len(data)
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self._reply(b"431 Request Header Fields Too Large", [], False)
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            parts = lines[0].split(b" ")
            if len(parts) != 3:
                self._reply(b"400 Bad Request", [], False)
                return
            method, _path, version = parts
            headers: dict[bytes, bytes] = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(b":")
                headers[k.strip().lower()] = v.strip()
            if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                self._reply(b"411 Length Required", [], False)
                return
            try:
                clen = int(headers.get(b"content-length", b"0"))
            except ValueError:
                self._reply(b"400 Bad Request", [], False)
                return
            total = end + 4 + clen
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            conn = headers.get(b"connection", b"").lower()
            keep_alive = conn != b"close" if version == b"HTTP/1.1" else conn == b"keep-alive"
            if method == b"POST":
                self._reply(b"200 OK", self.handler.handle_body(body), keep_alive)
            elif method == b"GET":
                self._reply(
                    b"200 OK",
                    [orjson.dumps({"server": CLIENT_VERSION, "head": self.handler.chain.head})],
                    keep_alive,
                )
            else:
                self._reply(b"405 Method Not Allowed", [], keep_alive)


async def _advance(chain: Chain, interval: float) -> None:
    while chain.head < len(chain.blocks) - 1:
        await asyncio.sleep(interval)
        chain.head += 1


async def serve(chain: Chain, host: str, port: int, advance_interval: float | None = None) -> None:
    loop = asyncio.get_running_loop()
    handler = Handler(chain)
    server = await loop.create_server(lambda: HttpRpcProtocol(handler), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY http://{host}:{bound} head={chain.head} blocks={len(chain.blocks)}", flush=True)
    tasks = []
    if advance_interval:
        tasks.append(asyncio.create_task(_advance(chain, advance_interval)))
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------------- subprocess helper


class ReplayServer:
    """Run the replay server as a subprocess; a context manager with ``.url``.

    ``cpu`` pins the server to one core (``--cpu``), e.g. the core the watcher does not use.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        port: int = 0,
        head: int | None = None,
        cpu: int | None = None,
        extra_args: Sequence[str] = (),
        python: str = sys.executable,
    ) -> None:
        if data_dir is None:
            from bench.chaingen import chain_dir

            data_dir = chain_dir()
        cmd = [python, "-m", "bench.replay_server", "--data", str(data_dir), "--port", str(port)]
        if head is not None:
            cmd += ["--head", str(head)]
        if cpu is not None:
            cmd += ["--cpu", str(cpu)]
        cmd += list(extra_args)
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"replay server did not start (exit {self.proc.returncode}): {line!r}")
        self.url = line.split()[1]
        self.pid = self.proc.pid

    def call(self, method: str, *params: Any) -> Any:
        host, port = self.url.split("//", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            conn.request(
                "POST",
                "/",
                orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}),
                {"Content-Type": "application/json"},
            )
            reply = orjson.loads(conn.getresponse().read())
        finally:
            conn.close()
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def set_head(self, n: int) -> None:
        self.call("replay_setHead", n)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# ---------------------------------------------------------------------- raw-rate client


def measure(url: str, batch: int = 50, limit: int | None = None, log: bool = True) -> dict[str, float]:
    """Fetch every block (eth_getBlockByHash full) in batches over one connection, parse with orjson.

    Returns blocks/s and transactions/s as the client sees them, and the server's CPU seconds
    (from replay_stats) so the server's own ceiling (blocks per server CPU second) is known.
    """
    from bench.chaingen import Rpc

    rpc = Rpc(url)
    head = int(rpc.call("eth_blockNumber"), 16)
    last = head if limit is None else min(head, limit - 1)
    hashes: list[str] = []
    for lo in range(0, last + 1, 500):
        hdrs = rpc.batch(
            [("eth_getBlockByNumber", [hex(n), False]) for n in range(lo, min(last, lo + 499) + 1)]
        )
        hashes += [h["hash"] for h in hdrs]
    body_parts = [
        orjson.dumps(
            [
                {"jsonrpc": "2.0", "id": i, "method": "eth_getBlockByHash", "params": [h, True]}
                for i, h in enumerate(hashes[lo : lo + batch])
            ]
        )
        for lo in range(0, len(hashes), batch)
    ]
    results: dict[str, float] = {"blocks": float(len(hashes)), "batch": float(batch)}
    for parse in (False, True):
        cpu0 = rpc.call("replay_stats")["cpu_seconds"]
        t0 = time.perf_counter()
        n_txs = 0
        n_bytes = 0
        for body in body_parts:
            rpc.conn.request("POST", rpc.path, body=body, headers={"Content-Type": "application/json"})
            data = rpc.conn.getresponse().read()
            n_bytes += len(data)
            if parse:
                for r in orjson.loads(data):
                    n_txs += len(r["result"]["transactions"])
        el = time.perf_counter() - t0
        server_cpu = rpc.call("replay_stats")["cpu_seconds"] - cpu0
        key = "parsed" if parse else "raw"
        results[f"{key}_blocks_per_s"] = len(hashes) / el
        results[f"{key}_mb_per_s"] = n_bytes / el / 1e6
        results[f"{key}_server_cpu_s"] = server_cpu
        results[f"{key}_server_ceiling_blocks_per_s"] = len(hashes) / server_cpu if server_cpu > 0 else 0.0
        if parse:
            results["parsed_txs_per_s"] = n_txs / el
        if log:
            extra = f", {n_txs / el:,.0f} txs/s" if parse else ""
            print(
                f"{'orjson-parsed' if parse else 'bytes only   '}: {len(hashes)} full blocks in {el:.2f}s = "
                f"{len(hashes) / el:,.0f} blocks/s{extra}, {n_bytes / el / 1e6:,.0f} MB/s; server CPU "
                f"{server_cpu:.2f}s -> server ceiling {results[f'{key}_server_ceiling_blocks_per_s']:,.0f} "
                f"blocks/s",
                flush=True,
            )
    transfer = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    passes: list[tuple[str, int, list[bytes]]] = [
        (
            "eth_getBlockReceipts",
            batch,
            [
                orjson.dumps(
                    [
                        {"jsonrpc": "2.0", "id": n, "method": "eth_getBlockReceipts", "params": [hex(n)]}
                        for n in range(lo, min(last, lo + batch - 1) + 1)
                    ]
                )
                for lo in range(0, last + 1, batch)
            ],
        ),
        (
            "eth_getLogs Transfer",
            100,
            [
                orjson.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "eth_getLogs",
                        "params": [
                            {"fromBlock": hex(lo), "toBlock": hex(min(last, lo + 99)), "topics": [transfer]}
                        ],
                    }
                )
                for lo in range(0, last + 1, 100)
            ],
        ),
    ]
    for name, per_request, bodies in passes:
        cpu0 = rpc.call("replay_stats")["cpu_seconds"]
        t0 = time.perf_counter()
        items = 0
        for body in bodies:
            rpc.conn.request("POST", rpc.path, body=body, headers={"Content-Type": "application/json"})
            reply = orjson.loads(rpc.conn.getresponse().read())
            for r in reply if isinstance(reply, list) else [reply]:
                items += len(r["result"])
        el = time.perf_counter() - t0
        server_cpu = rpc.call("replay_stats")["cpu_seconds"] - cpu0
        key = name.split()[0]
        results[f"{key}_blocks_per_s"] = (last + 1) / el
        results[f"{key}_server_ceiling_blocks_per_s"] = (last + 1) / server_cpu if server_cpu > 0 else 0.0
        if log:
            print(
                f"{name} ({per_request} blocks/request, orjson-parsed): {last + 1} blocks, {items} items in "
                f"{el:.2f}s = {(last + 1) / el:,.0f} blocks/s; server CPU {server_cpu:.2f}s -> "
                f"server ceiling {results[f'{key}_server_ceiling_blocks_per_s']:,.0f} blocks/s",
                flush=True,
            )
    rpc.close()
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="chain directory (default: bench.chaingen.chain_dir())")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8600, help="0 picks a free port (see the READY line)")
    ap.add_argument("--head", type=int, help="expose only blocks 0..HEAD at start")
    ap.add_argument(
        "--advance-interval", type=float, help="then advance the head by one block every N seconds"
    )
    ap.add_argument("--max-logs-range", type=int, help="reject eth_getLogs spanning more blocks (-32005)")
    ap.add_argument("--cpu", type=int, help="pin this process to one CPU")
    ap.add_argument("--measure", metavar="URL", help="client mode: measure the raw full-block rate of URL")
    ap.add_argument("--batch", type=int, default=50, help="blocks per batch request in --measure")
    ap.add_argument("--limit", type=int, help="--measure only the first N blocks")
    args = ap.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.measure:
        print(json.dumps(measure(args.measure, args.batch, args.limit), indent=1))
        return 0
    data = args.data
    if data is None:
        from bench.chaingen import chain_dir

        data = chain_dir()
    t0 = time.monotonic()
    chain = Chain(data)
    chain.max_logs_range = args.max_logs_range
    if args.head is not None:
        chain.head = max(0, min(args.head, len(chain.blocks) - 1))
    print(
        f"replay_server: loaded {len(chain.blocks)} blocks from {data} in {time.monotonic() - t0:.1f}s",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(chain, args.host, args.port, args.advance_interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
