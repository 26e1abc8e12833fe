"""The one retry layer for node calls, on tenacity.

A :class:`RetryPolicy` runs an attempt again only on a RETRIABLE
:class:`watcher.errors.ChainError` (a :class:`NodeAnswerInvalid` is one), with
exponential backoff and full jitter, bounded both by ``max_attempts`` and by
``deadline_s`` (no sleep is started that would end past the deadline, and an
attempt still running at the deadline is cancelled: a RETRIABLE error). Any
other error, a FINAL one included, is raised at once and unchanged; when the
attempts or the time run out the last error is raised as it is, never wrapped
in tenacity's ``RetryError``. Every retry is reported to ``on_retry`` (the pool
counts it in ``watcher_rpc_retries_total{chain,endpoint,kind}``).

Tests turn the waiting off with :meth:`RetryPolicy.without_waiting`: same
attempts and decisions, no sleep.

:func:`until_kafka_answers` is the start-up counterpart for Kafka: a step a
start cannot do without (ensuring the topics, fencing a chain's producer) is
tried again on a RETRIABLE :class:`watcher.errors.SinkError` for a bounded time,
so a broker that is restarting, or is back from a pause and not yet
registered, delays the start instead of failing it. Kafka retries after the
start belong to each step's own loop (``watcher/kafka``, the follower).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_none,
    wait_random_exponential,
)

from watcher.config import ChainConfig
from watcher.errors import ChainError, ErrorKind, SinkError

T = TypeVar("T")

log = logging.getLogger(__name__)

KAFKA_START_BUDGET_S = 60.0
"""How long a start waits for Kafka before it fails (exit 1): a rolling broker restart is
over well within it, and Kubernetes' startup probe (300 s in the chart) is not reached."""


def is_retriable(exc: BaseException) -> bool:
    """Only a classified, RETRIABLE chain error is worth asking again (anywhere)."""
    return isinstance(exc, ChainError) and exc.kind is ErrorKind.RETRIABLE


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    """Attempts in all, the first included."""
    deadline_s: float = 30.0
    """No retry sleep may end later than this after the first attempt started."""
    backoff_base_s: float = 0.05
    backoff_cap_s: float = 2.0
    wait: bool = True
    """False: retry without sleeping (tests)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.deadline_s <= 0 or self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError("deadline and backoff must be positive")

    @classmethod
    def from_config(cls, cfg: ChainConfig) -> RetryPolicy:
        return cls(max_attempts=cfg.rpc_max_attempts, deadline_s=3 * cfg.rpc_timeout_ms / 1000)

    def without_waiting(self) -> RetryPolicy:
        return replace(self, wait=False)

    async def run(self, attempt: Callable[[], Awaitable[T]], *,
                  on_retry: Callable[[ChainError], None] | None = None) -> T:
        """``await attempt()`` until it succeeds or the policy gives up (see module doc)."""

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            if on_retry is not None and isinstance(exc, ChainError):
                on_retry(exc)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s

        async def bounded() -> T:
            # The deadline bounds the attempts too, not only the sleeps between them.
            try:
                async with asyncio.timeout_at(deadline):
                    return await attempt()
            except TimeoutError:
                if loop.time() < deadline:
                    raise  # the attempt's own timeout, not ours
                raise ChainError(ErrorKind.RETRIABLE,
                                 f"no answer within the {self.deadline_s:g} s deadline") from None

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(self.deadline_s),
            wait=(wait_random_exponential(multiplier=self.backoff_base_s, max=self.backoff_cap_s)
                  if self.wait else wait_none()),
            retry=retry_if_exception(is_retriable),
            before_sleep=before_sleep,
            reraise=True,
        )
        result: T = await retrying(bounded)
        return result


def _kafka_retriable(exc: BaseException) -> bool:
    return isinstance(exc, SinkError) and exc.kind is ErrorKind.RETRIABLE


async def until_kafka_answers(what: str, attempt: Callable[[], Awaitable[T]], *,
                              budget_s: float = KAFKA_START_BUDGET_S,
                              wait: bool = True) -> T:
    """``await attempt()`` again while it raises a RETRIABLE :class:`SinkError`, with
    exponential backoff (0.25 s doubling, at most 5 s, full jitter) and a warning naming
    ``what`` before each wait; no wait is started that would end past ``budget_s``.

    Any other error (FINAL, FENCED, a :class:`ConfigError`) is raised at once, unchanged;
    when the budget runs out the last RETRIABLE error is raised as it is. Each attempt is
    bounded by its own timeouts (the step's Kafka timeouts), not by this budget.
    """

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s: Kafka not ready (attempt %d, next in %.1f s): %s", what,
                    state.attempt_number, delay, exc)

    async def call() -> T:
        # tenacity awaits only what it sees is a coroutine function: a lambda returning a
        # coroutine would be "called" and its coroutine returned unawaited.
        return await attempt()

    retrying = AsyncRetrying(
        stop=stop_before_delay(budget_s),
        wait=wait_random_exponential(multiplier=0.25, max=5.0) if wait else wait_none(),
        retry=retry_if_exception(_kafka_retriable),
        before_sleep=before_sleep,
        reraise=True,
    )
    result: T = await retrying(call)
    return result
