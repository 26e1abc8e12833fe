"""A tiny local HTTP server answering as Bitcoin Core does, from recorded exchanges.

It speaks Core's legacy JSON-RPC server: basic auth (HTTP 401 with an empty body
otherwise), an error answered with HTTP 500 (404 for an unknown method) and the
JSON error object, a batch answered with HTTP 200 and one item per call. The
answers come from ``tests/fixtures/bitcoin/core-*.json``; a request that is not
recorded is answered as Core answers an unknown method, so a test cannot pass on
an answer nobody recorded.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bitcoin"


@dataclass
class FakeCore:
    exchanges: list[dict[str, Any]]
    user: str
    password: str
    requests: list[Any] = field(default_factory=list)
    forced_status: int | None = None
    """Answer every request with this status and a plain-text body (Core's 503 "Work queue
    depth exceeded", for example)."""
    forced_body: bytes = b""
    warming_up: bool = False
    """Answer every call with Core's -28 while it loads its block index."""
    url: str = ""

    def _answer(self, call: Any) -> tuple[int, dict[str, Any]]:
        rid = call.get("id") if isinstance(call, dict) else None
        if self.warming_up:
            return 500, {"result": None, "id": rid,
                         "error": {"code": -28, "message": "Loading block index\u2026"}}
        method = call.get("method")
        params = call.get("params", [])
        wanted = json.dumps(params)  # strict: in Python 0 == False, not on the wire
        for ex in self.exchanges:
            if ex["method"] == method and json.dumps(ex["params"]) == wanted:
                if "error" in ex:
                    status = 404 if ex["error"]["code"] == -32601 else 500
                    return status, {"result": None, "error": ex["error"], "id": rid}
                return 200, {"result": ex["result"], "error": None, "id": rid}
        return 404, {"result": None, "id": rid,
                     "error": {"code": -32601, "message": "Method not found"}}

    async def handle(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        body = json.loads(await request.read())
        self.requests.append(body)
        if self.forced_status is not None:
            return web.Response(status=self.forced_status, body=self.forced_body,
                                content_type="text/html")
        if isinstance(body, list):
            return web.json_response([self._answer(c)[1] for c in body])
        status, answer = self._answer(body)
        return web.json_response(answer, status=status)


@asynccontextmanager
async def serve_core(fixture: str = "core-v27.json", *, user: str = "rpcuser",
                     password: str = "rpc-secret-Q") -> AsyncIterator[FakeCore]:
    doc = json.loads((FIXTURES / fixture).read_text())
    core = FakeCore(doc["exchanges"], user, password)
    app = web.Application()
    app.router.add_post("/", core.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    core.url = str(server.make_url("/"))
    try:
        yield core
    finally:
        await server.close()
