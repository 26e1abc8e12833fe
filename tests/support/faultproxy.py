"""A JSON-RPC proxy that lies the way real endpoints behind load balancers do.

It sits between the watcher and a real node (anvil) and forwards every request, but a
random share of the answers is spoiled, each in a way that a node really does it:

* ``empty_logs``: ``eth_getLogs`` answers ``[]`` (a backend that does not have the block);
* ``null_receipt``: ``eth_getTransactionReceipt`` answers ``null``;
* ``null_block``: ``eth_getBlockByHash`` answers ``null`` for a block that exists;
* ``wrong_block``: ``eth_getBlockByHash`` answers another block;
* ``stale_head``: ``eth_getBlockByNumber("latest")`` answers an older head;
* ``short_batch`` / ``repeated_id``: a batch answer with an item missing or an id twice;
* ``shuffled_batch``: batch items in another order (legal: must be accepted);
* ``http_502``, ``not_json``, ``timeout``: the transport fails.

Besides the per-answer faults, :meth:`FaultProxy.set_mode` switches the whole endpoint to
``down`` (every request answered 502) or ``wrong_chain`` (forwarded to a node of another
chain), which is how a recovering endpoint that comes back serving another network looks.

Only the test that starts it believes its counters; the watcher sees an ordinary URL.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, deque
from typing import Any

import aiohttp
from aiohttp import web

ANSWER_FAULTS = ("empty_logs", "null_receipt", "null_block", "wrong_block", "stale_head",
                 "short_batch", "repeated_id", "shuffled_batch", "http_502", "not_json",
                 "timeout")


class FaultProxy:
    def __init__(self, upstream: str, *, other_chain: str | None = None, fault_rate: float = 0.1,
                 rng: random.Random | None = None, timeout_delay_s: float = 2.0,
                 faults: tuple[str, ...] = ANSWER_FAULTS) -> None:
        self.upstream = upstream
        self.other_chain = other_chain
        self.fault_rate = fault_rate
        self.rng = rng or random.Random()
        self.timeout_delay_s = timeout_delay_s
        self.faults = faults
        self.mode = "normal"
        self.injected: Counter[str] = Counter()
        """Faults actually applied (a fault that did not apply to a request is not counted)."""
        self.requests = 0
        self._heads: deque[Any] = deque(maxlen=8)
        self._blocks: deque[Any] = deque(maxlen=32)
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int, host: str = "127.0.0.1") -> str:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def set_mode(self, mode: str) -> None:
        assert mode in {"normal", "down", "wrong_chain"}, mode
        self.mode = mode

    # ------------------------------------------------------------------ forwarding

    async def _forward(self, body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        target = self.other_chain if self.mode == "wrong_chain" and self.other_chain else \
            self.upstream
        async with self._session.post(target, data=body,
                                      headers={"Content-Type": "application/json"}) as resp:
            return resp.status, await resp.read()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if self.mode == "down":
            self.injected["down"] += 1
            return web.Response(status=502, text="bad gateway")
        if self.mode == "wrong_chain":
            self.injected["wrong_chain"] += 1
        status, raw = await self._forward(body)
        if status != 200 or self.mode != "normal":
            return web.Response(status=status, body=raw, content_type="application/json")
        try:
            req = json.loads(body)
            answer = json.loads(raw)
        except ValueError:
            return web.Response(status=status, body=raw, content_type="application/json")
        self._remember(req, answer)
        # Faults that fit this request (one drawn for a request it cannot spoil would be
        # wasted). A kind of lie not told yet is told at once when a request allows it:
        # some requests are rare (logs only with token transfers), and a run proves
        # something only if every kind was told.
        faults = [f for f in self.faults if self._fits(f, req, answer)]
        untold = any(self.injected[f] == 0 for f in faults)
        if faults and self.fault_rate > 0 and (untold or self.rng.random() < self.fault_rate):
            # The least told lie first: rare request kinds (receipts come only with native
            # deposits) still get every fault that fits them within a short run.
            fewest = min(self.injected[f] for f in faults)
            fault = self.rng.choice([f for f in faults if self.injected[f] == fewest])
            spoiled = await self._spoil(fault, req, answer)
            if spoiled is not None:
                self.injected[fault] += 1
                return spoiled
        return web.json_response(answer)

    # ------------------------------------------------------------------ faults

    def _remember(self, req: Any, answer: Any) -> None:
        for call, reply in _pairs(req, answer):
            result = reply.get("result") if isinstance(reply, dict) else None
            if not isinstance(result, dict):
                continue
            method, params = call.get("method"), call.get("params") or []
            if method == "eth_getBlockByNumber" and params and params[0] == "latest":
                self._heads.append(result)
            if method in ("eth_getBlockByHash", "eth_getBlockByNumber"):
                self._blocks.append(result)

    def _fits(self, fault: str, req: Any, answer: Any) -> bool:
        if fault in ("http_502", "not_json", "timeout"):
            return True
        if fault in ("short_batch", "repeated_id", "shuffled_batch"):
            return isinstance(answer, list) and len(answer) > 1
        wanted = {"empty_logs": "eth_getLogs", "null_receipt": "eth_getTransactionReceipt",
                  "null_block": "eth_getBlockByHash", "wrong_block": "eth_getBlockByHash",
                  "stale_head": "eth_getBlockByNumber"}[fault]
        for call, reply in _pairs(req, answer):
            if call.get("method") != wanted or not isinstance(reply, dict) \
                    or not reply.get("result"):
                continue
            params = call.get("params") or []
            if fault == "stale_head" and (not params or params[0] != "latest"
                                          or len(self._heads) <= 2):
                continue
            return True
        return False

    async def _spoil(self, fault: str, req: Any, answer: Any) -> web.StreamResponse | None:
        if fault == "http_502":
            return web.Response(status=502, text="upstream connect error")
        if fault == "not_json":
            return web.Response(status=200, text="<html>rate limited</html>",
                                content_type="text/html")
        if fault == "timeout":
            await asyncio.sleep(self.timeout_delay_s)
            return web.json_response(answer)
        if isinstance(req, list) and isinstance(answer, list):
            if fault == "short_batch" and len(answer) > 1:
                return web.json_response(answer[:-1])
            if fault == "repeated_id" and len(answer) > 1:
                return web.json_response([*answer[:-1], answer[0]])
            if fault == "shuffled_batch" and len(answer) > 1:
                shuffled = list(answer)
                self.rng.shuffle(shuffled)
                return web.json_response(shuffled)
        changed = False
        for call, reply in _pairs(req, answer):
            if not isinstance(reply, dict) or "result" not in reply:
                continue
            method, params = call.get("method"), call.get("params") or []
            result = reply["result"]
            if fault == "empty_logs" and method == "eth_getLogs" and result:
                reply["result"] = []
                changed = True
            elif (fault, method) in {("null_receipt", "eth_getTransactionReceipt"),
                                     ("null_block", "eth_getBlockByHash")} and result:
                reply["result"] = None
                changed = True
            elif fault == "wrong_block" and method == "eth_getBlockByHash" and result:
                others = [b for b in self._blocks if b.get("hash") != result.get("hash")]
                if others:
                    reply["result"] = self.rng.choice(others)
                    changed = True
            elif fault == "stale_head" and method == "eth_getBlockByNumber" and params \
                    and params[0] == "latest" and len(self._heads) > 2:
                reply["result"] = self._heads[0]
                changed = True
        return web.json_response(answer) if changed else None


def _pairs(req: Any, answer: Any) -> list[tuple[dict[str, Any], Any]]:
    """(call, reply) pairs matched by id, whatever the order of the answer."""
    calls = req if isinstance(req, list) else [req]
    replies = answer if isinstance(answer, list) else [answer]
    by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
    return [(c, by_id.get(c.get("id"))) for c in calls if isinstance(c, dict)]
