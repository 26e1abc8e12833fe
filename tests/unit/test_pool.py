"""The chain-agnostic endpoint pool over fake clients: states, failover, retries, identity."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from watcher.core.endpoints import EndpointPolicy, EndpointState
from watcher.errors import AnswerCheck, ChainError, ChainIdentityMismatch, ErrorKind, NodeAnswerInvalid
from watcher.metrics import REGISTRY
from watcher.runtime.pool import EndpointPool
from watcher.runtime.retry import RetryPolicy
from watcher.types import BlockHash, ChainHead

S = EndpointState
R = ErrorKind.RETRIABLE


@dataclass
class FakeClient:
    name: str
    chain_ok: bool = True
    down: bool = False
    height: int = 10
    answers: list[object] = field(default_factory=list)
    """What ``value()`` answers in turn: a value or an exception to raise."""
    identified: int = 0
    asked: int = 0

    async def identify(self) -> None:
        self.identified += 1
        if self.down:
            raise ChainError(R, "connection refused")
        if not self.chain_ok:
            raise ChainIdentityMismatch(f"endpoint {self.name} serves chain id 1")

    async def head(self) -> ChainHead:
        if self.down:
            raise ChainError(R, "connection refused")
        return ChainHead(self.height, BlockHash(f"0x{self.height:064x}"), None)

    async def value(self) -> object:
        self.asked += 1
        if self.down:
            raise ChainError(R, "HTTP 502")
        item = self.answers.pop(0) if self.answers else self.name
        if isinstance(item, BaseException):
            raise item
        return item

    async def close(self) -> None:
        return None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(chain: str, *clients: FakeClient, attempts: int = 4, tolerance: int = 0,
         clock: Clock | None = None) -> EndpointPool[FakeClient]:
    return EndpointPool(chain, list(clients),
                        policy=EndpointPolicy(lag_tolerance_blocks=tolerance, cooldown_s=60,
                                              unreachable_retry_s=5),
                        retry=RetryPolicy(max_attempts=attempts).without_waiting(),
                        clock=clock or Clock())


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def states(pool: EndpointPool[FakeClient]) -> dict[str, EndpointState]:
    return {n: v.state for n, v in pool.states().items()}


async def test_refresh_identifies_then_follows_the_first_alive() -> None:
    a, b = FakeClient("a"), FakeClient("b")
    pool = make("p-start", a, b)
    assert states(pool) == {"a": S.UNVERIFIED, "b": S.UNVERIFIED}
    assert metric("watcher_endpoint_state", chain="p-start", endpoint="a", state="unverified") == 1
    head = await pool.refresh()
    assert head.number == 10 and pool.followed == "a"
    assert states(pool) == {"a": S.ALIVE, "b": S.ALIVE}
    assert metric("watcher_endpoint_state", chain="p-start", endpoint="a", state="alive") == 1
    assert metric("watcher_endpoint_state", chain="p-start", endpoint="a", state="unverified") == 0
    await pool.refresh()
    assert (a.identified, b.identified) == (1, 1)  # identity is checked once while alive


async def test_lagging_endpoint_is_never_followed() -> None:
    a, b = FakeClient("a", height=5), FakeClient("b", height=9)
    pool = make("p-lag", a, b, tolerance=2)
    head = await pool.refresh()
    assert head.number == 9 and pool.followed == "b"
    assert states(pool) == {"a": S.LAGGING, "b": S.ALIVE}
    assert pool.states()["a"].problem == "head 5 behind best 9"
    assert await pool.ask(FakeClient.value, what="v") == "b"
    a.height = 8
    await pool.refresh()
    assert states(pool)["a"] is S.ALIVE and pool.followed == "b"  # no flapping back


async def test_wrong_chain_at_start_and_after_recovery_is_a_state_never_a_crash() -> None:
    clock = Clock()
    a, b = FakeClient("a", down=True), FakeClient("b")
    pool = make("p-wrong", a, b, clock=clock)
    await pool.refresh()
    assert states(pool) == {"a": S.UNREACHABLE, "b": S.ALIVE} and pool.followed == "b"
    # a comes back, but serving another chain: the defect of issue #6 raised out of head().
    a.down, a.chain_ok = False, False
    clock.now += 5
    head = await pool.refresh()
    assert head.number == 10 and pool.followed == "b"
    assert states(pool)["a"] is S.WRONG_CHAIN
    assert "serves chain id 1" in (pool.states()["a"].problem or "")
    # re-verified only after the cool-down, and then serves again once right
    a.chain_ok = True
    clock.now += 30
    await pool.refresh()
    assert states(pool)["a"] is S.WRONG_CHAIN
    clock.now += 30
    await pool.refresh()
    assert states(pool)["a"] is S.ALIVE


async def test_all_wrong_chain_raises_retriable_chain_error() -> None:
    pool = make("p-allwrong", FakeClient("a", chain_ok=False))
    with pytest.raises(ChainError) as info:
        await pool.refresh()
    assert info.value.kind is R and "a wrong_chain" in str(info.value)


async def test_rejected_answer_is_asked_elsewhere_and_sets_the_liar_aside() -> None:
    a = FakeClient("a", answers=[NodeAnswerInvalid("logs missing", check=AnswerCheck.LOGS)])
    b = FakeClient("b")
    pool = make("p-liar", a, b)
    await pool.refresh()
    assert await pool.ask(FakeClient.value, what="logs") == "b"
    assert states(pool)["a"] is S.MISBEHAVING
    assert pool.states()["a"].problem == "logs: [retriable] a: logs missing"
    assert metric("watcher_node_answers_rejected_total", chain="p-liar", endpoint="a",
                  check="logs") == 1
    assert metric("watcher_rpc_retries_total", chain="p-liar", endpoint="a",
                  kind="retriable") == 1
    assert pool.followed == "b"


async def test_unreachable_endpoint_is_identified_again_before_it_serves() -> None:
    clock = Clock()
    a, b = FakeClient("a"), FakeClient("b")
    pool = make("p-reid", a, b, clock=clock)
    await pool.refresh()
    a.down = True
    assert await pool.ask(FakeClient.value, what="v") == "b"
    assert states(pool)["a"] is S.UNREACHABLE
    a.down = False
    assert await pool.ask(FakeClient.value, what="v") == "b"   # not before identified
    clock.now += 5
    await pool.refresh()
    assert a.identified == 2 and states(pool)["a"] is S.ALIVE


async def test_none_alive_identifies_inside_ask_and_gives_up_bounded() -> None:
    a = FakeClient("a")
    pool = make("p-none", a, attempts=3)
    await pool.refresh()
    a.down = True
    with pytest.raises(ChainError) as info:
        await pool.ask(FakeClient.value, what="block 0xab")
    assert info.value.kind is R and info.value.endpoint == "a"  # the last error, not a vaguer one
    assert "HTTP 502" in str(info.value)
    assert a.asked == 1 and a.identified == 3  # one call, then two identify-and-give-up rounds
    a.down = False
    assert await pool.ask(FakeClient.value, what="v") == "a"  # recovered inside ask


async def test_nothing_ever_asked_gives_a_generic_retriable_error() -> None:
    pool = make("p-never", FakeClient("a", down=True), attempts=2)
    with pytest.raises(ChainError) as info:
        await pool.ask(FakeClient.value, what="block 0xab")
    assert info.value.kind is R and "block 0xab: no endpoint alive (a unreachable)" in str(
        info.value)


async def test_final_error_is_raised_at_once_and_keeps_the_endpoint() -> None:
    a = FakeClient("a", answers=[ChainError(ErrorKind.FINAL, "invalid params")])
    pool = make("p-final", a, FakeClient("b"))
    await pool.refresh()
    with pytest.raises(ChainError) as info:
        await pool.ask(FakeClient.value, what="v")
    assert info.value.kind is ErrorKind.FINAL and info.value.endpoint == "a"
    assert a.asked == 1 and states(pool)["a"] is S.ALIVE


async def test_a_client_bug_is_a_retriable_chain_error() -> None:
    a = FakeClient("a", answers=[KeyError("boom"), KeyError("boom")])
    pool = make("p-bug", a, attempts=2)
    await pool.refresh()
    with pytest.raises(ChainError) as info:
        await pool.ask(FakeClient.value, what="v")
    assert info.value.kind is R and "KeyError" in str(info.value)


async def test_ask_each_reports_every_endpoint() -> None:
    a, b, c = FakeClient("a"), FakeClient("b", answers=[ChainError(R, "502")]), FakeClient("c")
    pool = make("p-each", a, b, c)
    await pool.refresh()
    got = await pool.ask_each(FakeClient.value, what="hash at 5")
    assert got["a"] == "a" and got["c"] == "c"
    err = got["b"]
    assert isinstance(err, ChainError) and err.endpoint == "b"
    assert states(pool)["b"] is S.UNREACHABLE
    assert set(await pool.ask_each(FakeClient.value)) == {"a", "c"}
    with pytest.raises(ValueError, match="unknown endpoint"):
        await pool.ask_each(FakeClient.value, names=["zz"])


def test_pool_rejects_no_or_duplicate_endpoints() -> None:
    with pytest.raises(ValueError, match="at least one"):
        make("p-empty")
    with pytest.raises(ValueError, match="unique"):
        make("p-dup", FakeClient("a"), FakeClient("a"))
