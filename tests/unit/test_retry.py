"""The one retry policy: what is retried, how often, for how long."""

from __future__ import annotations

import asyncio
import time

import pytest

from watcher.errors import ChainError, ConfigError, ErrorKind, NodeAnswerInvalid, SinkError
from watcher.runtime.retry import RetryPolicy, until_kafka_answers


class Flaky:
    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self, *_: object) -> str:
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


async def test_a_kafka_start_step_is_tried_again_while_the_broker_is_not_ready(
        caplog: pytest.LogCaptureFixture) -> None:
    flaky = Flaky(SinkError(R, "NodeNotReadyError"), SinkError(R, "timeout"))
    with caplog.at_level("WARNING", logger="watcher.runtime.retry"):
        got = await until_kafka_answers("ensuring topics", flaky, wait=False)
    assert got == "ok" and flaky.calls == 3
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2 and all(m.startswith("ensuring topics: Kafka not ready") for m in warned)
    assert "(attempt 1," in warned[0] and warned[0].endswith("NodeNotReadyError")


@pytest.mark.parametrize("error", [SinkError(ErrorKind.FINAL, "topic policy"),
                                   SinkError(ErrorKind.FENCED, "fenced"),
                                   ConfigError("kafka.topics.checkpoints", "delete policy"),
                                   ChainError(R, "a node, not Kafka"), KeyError("bug")])
async def test_a_kafka_start_step_fails_at_once_on_anything_but_a_retriable_kafka_error(
        error: BaseException) -> None:
    flaky = Flaky(error)
    with pytest.raises(type(error)) as info:
        await until_kafka_answers("ensuring topics", flaky, wait=False)
    assert info.value is error and flaky.calls == 1


async def test_a_kafka_start_step_gives_up_after_its_budget_with_the_last_error() -> None:
    errors = [SinkError(R, f"not ready {i}") for i in range(1000)]
    flaky = Flaky(*errors)
    started = time.monotonic()
    with pytest.raises(SinkError) as info:
        await until_kafka_answers("ensuring topics", flaky, budget_s=0.3)
    elapsed = time.monotonic() - started
    # Waits of up to 0.25 s, 0.5 s...: no wait is started that would end past the budget.
    assert 1 <= flaky.calls <= 4 and elapsed < 0.3 + 0.1
    assert info.value is errors[flaky.calls - 1]


async def test_a_kafka_start_step_given_as_a_lambda_is_awaited_and_retried() -> None:
    flaky = Flaky(SinkError(R, "not ready"))
    # What the watcher passes: a plain function returning a coroutine (not a coroutine
    # function), as `lambda: ensure_topics(cfg.kafka, chains=...)` is.
    got = await until_kafka_answers("ensuring topics", lambda: flaky(99), wait=False)
    assert got == "ok" and flaky.calls == 2
