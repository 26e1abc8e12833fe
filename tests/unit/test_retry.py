"""The one retry policy: what is retried, how often, for how long."""

from __future__ import annotations

import asyncio
import time

import pytest

from watcher.errors import ChainError, ErrorKind, NodeAnswerInvalid
from watcher.runtime.retry import RetryPolicy


class Flaky:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


R = ErrorKind.RETRIABLE


async def test_retriable_errors_are_retried_and_reported() -> None:
    seen: list[str] = []
    flaky = Flaky(ChainError(R, "502", "e0"), NodeAnswerInvalid("bad", "e1"))
    got = await RetryPolicy(max_attempts=3).without_waiting().run(
        flaky, on_retry=lambda e: seen.append(e.endpoint))
    assert got == "ok" and flaky.calls == 3 and seen == ["e0", "e1"]


async def test_attempts_are_bounded_and_the_last_error_is_raised_unwrapped() -> None:
    last = ChainError(R, "third")
    flaky = Flaky(ChainError(R, "first"), ChainError(R, "second"), last, ChainError(R, "x"))
    with pytest.raises(ChainError) as info:
        await RetryPolicy(max_attempts=3).without_waiting().run(flaky)
    assert info.value is last and flaky.calls == 3


@pytest.mark.parametrize("error", [ChainError(ErrorKind.FINAL, "bad params"), KeyError("bug"),
                                   ChainError(ErrorKind.FENCED, "fenced")])
async def test_other_errors_are_not_retried(error: BaseException) -> None:
    flaky = Flaky(error)
    with pytest.raises(type(error)):
        await RetryPolicy(max_attempts=5).without_waiting().run(flaky)
    assert flaky.calls == 1


async def test_no_sleep_ends_past_the_deadline() -> None:
    # Backoff draws up to 1 s but the deadline is 50 ms: a wait that would end past the
    # deadline is never taken (a draw under 50 ms, 5 % of the time, allows one more try).
    flaky = Flaky(ChainError(R, "a"), ChainError(R, "b"), ChainError(R, "c"))
    started = time.monotonic()
    with pytest.raises(ChainError):
        await RetryPolicy(max_attempts=5, deadline_s=0.05, backoff_base_s=1.0,
                          backoff_cap_s=1.0).run(flaky)
    assert flaky.calls <= 2 and time.monotonic() - started < 0.5


async def test_an_attempt_still_running_at_the_deadline_is_cut_short() -> None:
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(5)
        return "late"

    started = time.monotonic()
    with pytest.raises(ChainError, match="deadline") as info:
        await RetryPolicy(max_attempts=3, deadline_s=0.1).without_waiting().run(slow)
    assert info.value.kind is R and calls == 1 and time.monotonic() - started < 1.0


async def test_backoff_waits_are_real_when_waiting_is_on() -> None:
    flaky = Flaky(ChainError(R, "a"), ChainError(R, "b"))
    got = await RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_cap_s=0.002).run(flaky)
    assert got == "ok" and flaky.calls == 3


def test_policy_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline_s=0)
