"""CPU per JSON-RPC POST: aiohttp versus :class:`watcher.runtime.httpclient.HttpClient`.

Each round sends the same 1000 two-block ``eth_getBlockByNumber`` batches (~250 kB answers)
to the in-memory replay server (pinned to core 1) over 4 keep-alive connections, and prints
wall time and this process's CPU seconds per client. When ``h11`` is importable (it is not
a dependency), a third client parses the same responses with h11 over the same asyncio
Protocol plumbing: the figure that decided for the hand parser.

    .venv/bin/python -m bench.http_transport [--rounds 3] [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import resource
import time
from typing import Any

import orjson

from bench.chaingen import chain_dir
from bench.replay_server import ReplayServer
from watcher.runtime.httpclient import HttpClient

CONCURRENCY = 4


def _body(n: int) -> bytes:
    return orjson.dumps([{"jsonrpc": "2.0", "id": i, "method": "eth_getBlockByNumber",
                          "params": [hex(n + i), True]} for i in range(2)])


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _lanes(post: Any, n_req: int) -> int:
    async def lane(k: int) -> int:
        total = 0
        for r in range(k, n_req, CONCURRENCY):
            status, raw = await post(_body(3 + (2 * r) % 1990))
            assert status == 200
            total += len(raw)
        return total
    return sum(await asyncio.gather(*[lane(k) for k in range(CONCURRENCY)]))


async def run_aiohttp(url: str, n_req: int) -> int:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16),
                                    headers={"Content-Type": "application/json"})

    async def post(body: bytes) -> tuple[int, bytes]:
        async with session.post(url, data=body,
                                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            return resp.status, await resp.read()
    try:
        return await _lanes(post, n_req)
    finally:
        await session.close()


async def run_httpclient(url: str, n_req: int) -> int:
    client = HttpClient(url, connections=16, headers={"Content-Type": "application/json"})
    try:
        return await _lanes(lambda body: client.post(body, 30.0), n_req)
    finally:
        await client.close()


async def run_h11(url: str, n_req: int) -> int:
    h11: Any = importlib.import_module("h11")  # optional, untyped here: not a dependency

    host, port = url.split("//")[1].rstrip("/").split(":")

    class Proto(asyncio.Protocol):
        def __init__(self) -> None:
            self.conn = h11.Connection(h11.CLIENT)
            self.fut: asyncio.Future[tuple[int, bytes]] | None = None
            self.status = 0
            self.body = bytearray()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.conn.receive_data(data)
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    return
                if isinstance(event, h11.Response):
                    self.status = event.status_code
                elif isinstance(event, h11.Data):
                    self.body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert self.fut is not None
                    self.fut.set_result((self.status, bytes(self.body)))
                    self.conn.start_next_cycle()
                    return

        async def post(self, body: bytes) -> tuple[int, bytes]:
            self.fut = asyncio.get_running_loop().create_future()
            self.body = bytearray()
            self.transport.write(self.conn.send(h11.Request(
                method="POST", target="/", headers=[
                    ("Host", f"{host}:{port}"), ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body)))])) + self.conn.send(h11.Data(data=body))
                + self.conn.send(h11.EndOfMessage()))
            return await self.fut

    loop = asyncio.get_running_loop()
    conns = [(await loop.create_connection(Proto, host, int(port)))[1]
             for _ in range(CONCURRENCY)]

    async def lane(k: int) -> int:
        total = 0
        for r in range(k, n_req, CONCURRENCY):
            status, raw = await conns[k].post(_body(3 + (2 * r) % 1990))
            assert status == 200
            total += len(raw)
        return total
    try:
        return sum(await asyncio.gather(*[lane(k) for k in range(CONCURRENCY)]))
    finally:
        for c in conns:
            c.transport.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    clients = {"aiohttp": run_aiohttp, "httpclient": run_httpclient}
    try:
        importlib.import_module("h11")
        clients["h11"] = run_h11
    except ImportError:
        print("h11 not installed: its column is skipped")
    import aiohttp  # noqa: F401  (imported before timing: import cost is not per POST)

    with ReplayServer(chain_dir(), cpu=1) as rs:
        figures: dict[str, list[float]] = {name: [] for name in clients}
        for rnd in range(args.rounds):
            for name, run in clients.items():
                c0, t0 = _cpu(), time.perf_counter()
                total = asyncio.run(run(rs.url, args.requests))
                wall, cpu = time.perf_counter() - t0, _cpu() - c0
                figures[name].append(cpu)
                print(f"round {rnd} {name:10s} {wall:5.2f}s wall {cpu:5.2f}s cpu "
                      f"{1000 * cpu / args.requests:.3f} ms cpu/POST {total / 1e6:.0f} MB",
                      flush=True)
        for name, cpus in figures.items():
            cpus.sort()
            print(f"median {name:10s} {1000 * cpus[len(cpus) // 2] / args.requests:.3f} "
                  f"ms cpu/POST")


if __name__ == "__main__":
    main()
