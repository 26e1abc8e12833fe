"""The /status document, its route on the health server, and `watcher status` reading it."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest

from watcher.ops.common import fetch_status
from watcher.ops.status import render
from watcher.runtime.follower import FollowerStatus
from watcher.runtime.health import HealthServer
from watcher.runtime.status import EndpointView, endpoints_of, status_document


class Pool:
    names = ("a", "b", "c")
    followed = "b"
    healthy = frozenset({"a", "b"})


class PoolSource:
    pool = Pool()


class Reporting:
    def endpoint_views(self) -> list[EndpointView]:
        return [EndpointView("x", "probing", 7)]


def test_endpoints_from_a_pool_of_followed_and_healthy() -> None:
    heads = {"a": 10, "b": 11}
    views = endpoints_of(PoolSource(), heads.get)
    assert views == [EndpointView("a", "healthy", 10), EndpointView("b", "followed", 11),
                     EndpointView("c", "unhealthy", None)]


def test_endpoints_from_a_source_that_reports_them_itself() -> None:
    assert endpoints_of(Reporting(), lambda _: None) == [EndpointView("x", "probing", 7)]
    assert endpoints_of(object(), lambda _: None) == []


def doc() -> dict[str, Any]:
    st = FollowerStatus(started=True, head_height=120, processed_height=100, pending_deposits=3,
                        pending_withdrawals=2, committed_events=42, last_ok_at=5.0)
    halted = FollowerStatus(started=True, halted_reason="reorg beyond the window: x")
    return status_document({"eth": st, "polygon": halted},
                           {"eth": lambda: endpoints_of(PoolSource(), {"b": 120}.get)}, 1000.0)


def test_status_document() -> None:
    d = doc()
    eth = d["chains"]["eth"]
    assert (eth["state"], eth["lag_blocks"], eth["pending_deposits"]) == ("catching_up", 20, 3)
    assert eth["pending_withdrawals"] == 2
    assert eth["endpoints"][1] == {"name": "b", "state": "followed", "head": 120, "problem": None}
    poly = d["chains"]["polygon"]
    assert (poly["state"], poly["halted_reason"], poly["lag_blocks"]) == (
        "halted", "reorg beyond the window: x", None)


def test_render_is_one_line_per_chain_and_endpoint() -> None:
    lines = render(doc()).splitlines()
    assert lines[0].split() == ["CHAIN", "STATE", "HEAD", "PROCESSED", "LAG", "PENDING", "PAYING",
                                "EVENTS"]
    assert lines[1].split() == ["eth", "catching_up", "120", "100", "20", "3", "2", "42"]
    assert lines[2].split() == ["endpoint", "a", "healthy", "head", "-"]
    assert "halted: reorg beyond the window: x" in lines[6]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_route_serves_the_document_and_the_cli_reads_it() -> None:
    port = free_port()
    server = HealthServer("127.0.0.1", port, {}, {}, lambda: True, status=doc)
    await server.start()
    try:
        got = await fetch_status(f"http://127.0.0.1:{port}")
        assert got["chains"]["eth"]["processed_height"] == 100
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/readyz") as r:
            assert r.status == 200  # /readyz unchanged beside it
    finally:
        await server.stop()


async def test_unreachable_daemon_is_one_clear_error() -> None:
    from watcher.ops.common import Unavailable

    with pytest.raises(Unavailable, match=r"cannot reach the watcher at http://127\.0\.0\.1:"):
        await fetch_status(f"http://127.0.0.1:{free_port()}", timeout_s=2)


def test_endpoint_pool_states_recorded_by_the_follower_come_first() -> None:
    from enum import Enum
    from types import SimpleNamespace

    class State(Enum):
        ALIVE = "alive"
        MISBEHAVING = "misbehaving"

    st = FollowerStatus(started=True)
    # Written through __dict__: the same test type-checks before and after the pool's field.
    vars(st)["endpoints"] = {
        "a": SimpleNamespace(state=State.ALIVE, head=9, problem=None),
        "b": SimpleNamespace(state=State.MISBEHAVING, head=None, problem="block_hash: wrong block")}
    d = status_document({"eth": st}, {"eth": lambda: [EndpointView("x", "followed")]}, 0.0)
    assert d["chains"]["eth"]["endpoints"] == [
        {"name": "a", "state": "alive", "head": 9, "problem": None},
        {"name": "b", "state": "misbehaving", "head": None, "problem": "block_hash: wrong block"}]
    assert "(block_hash: wrong block)" in render(d)
