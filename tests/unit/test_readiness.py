"""Readiness: what makes /readyz fail, table-driven."""

from __future__ import annotations

import pytest

from watcher.core.endpoints import EndpointState, EndpointView
from watcher.runtime.follower import FollowerStatus
from watcher.runtime.health import endpoint_states, readiness


def ep(state: EndpointState, problem: str | None = None) -> EndpointView:
    return EndpointView(state, since=0.0, checked_at=0.0, problem=problem)


def status(**kw: object) -> FollowerStatus:
    st = FollowerStatus(started=True, last_ok_at=100.0)
    for k, v in kw.items():
        setattr(st, k, v)
    return st


@pytest.mark.parametrize(("name", "st", "regs", "now", "ready", "reason"), [
    ("following", status(), True, 110.0, True, ""),
    ("registrations still loading", status(), False, 110.0, False, "registrations"),
    ("not started", status(started=False), True, 110.0, False, "not started"),
    ("halted by a deep reorg", status(halted_reason="reorg beyond the window"), True, 110.0, False,
     "halted"),
    ("no success for too long", status(last_error="node down"), True, 200.0, False, "node down"),
    ("never a success since start", status(last_ok_at=0.0, started_at=100.0, last_error="behind"), True,
     200.0, False, "since start (100s)"),
    ("one endpoint set aside, one alive", status(endpoints={
        "a": ep(EndpointState.WRONG_CHAIN), "b": ep(EndpointState.ALIVE)}), True, 110.0, True, ""),
    ("no endpoint alive", status(endpoints={
        "a": ep(EndpointState.WRONG_CHAIN, "serves chain id 5"), "b": ep(EndpointState.LAGGING)}),
     True, 110.0, False, "no endpoint alive: a wrong_chain (serves chain id 5), b lagging"),
    ("quorum disagrees", status(quorum_problem="1 deposit block(s) lack 2 endpoints agreeing"),
     True, 110.0, False, "confirmations held: 1 deposit block(s) lack 2"),
])
def test_readiness(name: str, st: FollowerStatus, regs: bool, now: float, ready: bool, reason: str) -> None:
    r = readiness({"eth": st}, {"eth": 60.0}, regs, now)
    assert r.ready is ready
    assert reason in " ".join(r.reasons)


def test_readyz_body_names_each_endpoint_state() -> None:
    st = status(endpoints={"a": ep(EndpointState.MISBEHAVING), "b": ep(EndpointState.ALIVE)})
    assert endpoint_states({"eth": st}) == {"eth": {"a": "misbehaving", "b": "alive"}}
