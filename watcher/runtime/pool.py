"""One chain's endpoints: identity checks, head rounds, states, failover and retries.

Chain-agnostic. A chain family supplies only its :class:`watcher.ports.NodeClient`
per endpoint ("ask this endpoint"); the :class:`EndpointPool` owns everything else::

    pool = EndpointPool(chain, clients, policy=EndpointPolicy(...), retry=RetryPolicy(...))
    head = await pool.refresh()                       # one head round: ChainHead of the followed
    block = await pool.ask(lambda c: c.block(h), what="block")   # followed, retried, failed over
    views = await pool.ask_each(lambda c: c.hash_at(n))          # every serving endpoint once
    pool.states()                                     # name -> EndpointView, for /readyz
    await pool.close()

Guarantees:

* **Only ChainError leaves it.** An identity mismatch is the endpoint's state
  (``wrong_chain``), never an exception; any other exception a client raises is a
  bug in the client and is reported as a RETRIABLE ChainError naming the endpoint
  (and logged with its traceback), so no node can stop a follower.
* **Only alive endpoints serve.** States follow :mod:`watcher.core.endpoints`: a
  failed call makes the endpoint ``unreachable`` and a rejected answer
  (:class:`NodeAnswerInvalid`) makes it ``misbehaving``; either way it is identified
  again before it serves again (an endpoint that comes back on another chain is set
  aside). The followed endpoint is never one lagging the best head of the round.
* **A rejected answer is asked again elsewhere**, never taken as "nothing there":
  :meth:`ask` retries RETRIABLE errors (NodeAnswerInvalid included) on the next alive
  endpoint, under one :class:`watcher.runtime.retry.RetryPolicy` (bounded attempts and
  time, full-jitter backoff). FINAL errors are raised at once.
* **Counted once, logged once per episode.** Each rejected answer counts in
  ``watcher_node_answers_rejected_total{chain,endpoint,check}``, each retry in
  ``watcher_rpc_retries_total{chain,endpoint,kind}``, each failure in
  ``watcher_rpc_errors_total``; ``watcher_endpoint_state{chain,endpoint,state}`` is 1
  for the current state. A log line is written when an endpoint changes state, not
  per failed call. Endpoints are only ever named by their configured name.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

from watcher.core import endpoints as fsm
from watcher.core.endpoints import EndpointPolicy, EndpointState, EndpointView
from watcher.errors import (
    ChainError,
    ChainIdentityMismatch,
    ErrorKind,
    NodeAnswerInvalid,
)
from watcher.metrics import (
    ANSWERS_REJECTED,
    ENDPOINT_HEAD,
    ENDPOINT_IN_SYNC,
    ENDPOINT_STATE,
    RPC_ERRORS,
    RPC_RETRIES,
)
from watcher.ports import NodeClient
from watcher.runtime.retry import RetryPolicy
from watcher.types import ChainHead

C = TypeVar("C", bound=NodeClient)
T = TypeVar("T")

log = logging.getLogger(__name__)


class EndpointPool(Generic[C]):
    """The endpoints of one chain, in their configured order (the first is preferred)."""

    def __init__(self, chain: str, clients: Sequence[C], *,
                 policy: EndpointPolicy | None = None, retry: RetryPolicy | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not clients:
            raise ValueError(f"chain {chain}: at least one endpoint is required")
        names = [c.name for c in clients]
        if len(set(names)) != len(names):
            raise ValueError(f"chain {chain}: endpoint names must be unique")
        self.chain = chain
        self.policy = policy if policy is not None else EndpointPolicy()
        self.retry = retry if retry is not None else RetryPolicy()
        self._clients: dict[str, C] = {c.name: c for c in clients}
        self._order = tuple(names)
        self._clock = clock
        now = clock()
        self._views: dict[str, EndpointView] = {n: fsm.initial(now) for n in names}
        self._heads: dict[str, ChainHead] = {}
        self._followed: str | None = None
        for n in names:
            self._publish_state(n, None, self._views[n])

    # ------------------------------------------------------------ reading

    @property
    def names(self) -> tuple[str, ...]:
        return self._order

    @property
    def followed(self) -> str | None:
        """The endpoint the last :meth:`refresh` chose; None before, or when none serves."""
        return self._followed

    def client(self, name: str) -> C:
        return self._clients[name]

    def states(self) -> Mapping[str, EndpointView]:
        """Each endpoint's state, since when, its last head and its last problem."""
        return dict(self._views)

    def identified(self) -> list[str]:
        """Endpoints identified and answering (alive or lagging), in the configured order:
        the ones whose view of the chain may be compared (a quorum asks them all)."""
        polled = fsm.head_polled(self._views)
        return [n for n in self._order if n in polled]

    def serving(self) -> list[str]:
        """Endpoints that may answer now, the followed one first."""
        return fsm.serving_order(self._views, self._followed, self._order)

    # ------------------------------------------------------------ observations

    def observe(self, name: str, obs: fsm.Observation) -> None:
        """Feeds one observation about ``name`` to its state machine (families rarely need
        this: :meth:`ask` and :meth:`refresh` observe what they see)."""
        before = self._views[name]
        after = fsm.transition(before, obs, self._clock())
        self._views[name] = after
        if after.state is not before.state:
            self._publish_state(name, before.state, after)
            if self._followed == name and after.state not in fsm.SERVING:
                self._followed = fsm.choose_followed(self._views, None, self._order)

    def _publish_state(self, name: str, before: EndpointState | None, after: EndpointView) -> None:
        for state in EndpointState:
            ENDPOINT_STATE.labels(self.chain, name, state.value).set(
                1 if state is after.state else 0)
        ENDPOINT_IN_SYNC.labels(self.chain, name).set(
            1 if after.state in fsm.SERVING else 0)
        if before is None:
            return
        if after.state is EndpointState.ALIVE:
            log.info("chain %s: endpoint %s is alive (was %s)", self.chain, name, before.value)
        else:
            log.warning("chain %s: endpoint %s is %s (was %s): %s", self.chain, name,
                        after.state.value, before.value, after.problem)

    def _observe_error(self, name: str, exc: ChainError) -> None:
        RPC_ERRORS.labels(self.chain, name, exc.kind.value).inc()
        if isinstance(exc, NodeAnswerInvalid):
            ANSWERS_REJECTED.labels(self.chain, name, exc.check.value).inc()
            self.observe(name, fsm.AnswerRejected(exc.check, _short(exc)))
        else:
            self.observe(name, fsm.CallFailed(exc.kind, _short(exc)))

    # ------------------------------------------------------------ identity and heads

    async def verify_due(self) -> None:
        """Checks the identity of every endpoint that is due (see :mod:`watcher.core.endpoints`)."""
        due = [n for n in self._order
               if n in fsm.due_for_identity(self._views, self._clock(), self.policy)]
        if due:
            await asyncio.gather(*(self._identify(n) for n in due))

    async def _identify(self, name: str) -> None:
        try:
            await self._clients[name].identify()
        except ChainIdentityMismatch as exc:
            self.observe(name, fsm.IdentityMismatch(str(exc)))
        except ChainError as exc:
            RPC_ERRORS.labels(self.chain, name, exc.kind.value).inc()
            if exc.kind is ErrorKind.RETRIABLE:
                self.observe(name, fsm.Unreachable(_short(exc)))
            else:
                # It cannot even say which chain it serves: it is not ours to follow.
                self.observe(name, fsm.IdentityMismatch(f"cannot identify: {_short(exc)}"))
        except Exception as exc:  # a client bug must not stop the chain
            log.exception("chain %s: endpoint %s: identify raised %s", self.chain, name,
                          type(exc).__name__)
            self.observe(name, fsm.Unreachable(f"client error {type(exc).__name__}"))
        else:
            self.observe(name, fsm.IdentityOk())

    async def refresh(self) -> ChainHead:
        """One head round: identifies due endpoints, asks every identified one for its head,
        marks the lagging ones, and returns the head of the endpoint followed from now on.

        Raises a RETRIABLE :class:`ChainError` when no endpoint is alive after the round.
        """
        await self.verify_due()
        polled = [n for n in self._order if n in fsm.head_polled(self._views)]
        results = await asyncio.gather(*(self._head(n) for n in polled))
        for name, head in zip(polled, results, strict=True):
            if head is not None:
                self._heads[name] = head
                self.observe(name, fsm.HeadSeen(head.number))
                ENDPOINT_HEAD.labels(self.chain, name).set(head.number)
        for name, obs in fsm.lag_observations(self._views, self.policy.lag_tolerance_blocks).items():
            self.observe(name, obs)
        self._followed = fsm.choose_followed(self._views, self._followed, self._order)
        if self._followed is None:
            raise ChainError(ErrorKind.RETRIABLE,
                             f"chain {self.chain}: no endpoint alive ({self._summary()})")
        return self._heads[self._followed]

    async def _head(self, name: str) -> ChainHead | None:
        try:
            return await self._clients[name].head()
        except ChainError as exc:
            self._observe_error(name, exc)
        except ChainIdentityMismatch as exc:
            self.observe(name, fsm.IdentityMismatch(str(exc)))
        except Exception as exc:
            log.exception("chain %s: endpoint %s: head raised %s", self.chain, name,
                          type(exc).__name__)
            self.observe(name, fsm.CallFailed(ErrorKind.RETRIABLE,
                                              f"client error {type(exc).__name__}"))
        return None

    # ------------------------------------------------------------ asking

    async def ask(self, op: Callable[[C], Awaitable[T]], *, what: str) -> T:
        """``await op(client)`` on the followed endpoint, else the next alive one.

        A RETRIABLE failure (a rejected answer included) sets that endpoint aside and is
        retried on the next alive endpoint under the retry policy; when none is alive the
        due ones are identified again first. When the policy gives up, the last endpoint's
        error is raised (a generic RETRIABLE one if none could be asked). ``what`` names the
        request in errors.
        """
        failures: list[ChainError] = []

        async def attempt() -> T:
            serving = self.serving()
            if not serving:
                await self.verify_due()
                serving = self.serving()
            if not serving:
                if failures:
                    raise failures[-1]  # what the last endpoint asked said, not a vaguer error
                raise ChainError(ErrorKind.RETRIABLE,
                                 f"chain {self.chain}: {what}: no endpoint alive "
                                 f"({self._summary()})")
            try:
                return await self._attempt(serving[0], op, what)
            except ChainError as exc:
                failures.append(exc)
                raise

        def on_retry(exc: ChainError) -> None:
            RPC_RETRIES.labels(self.chain, exc.endpoint or "none", exc.kind.value).inc()

        return await self.retry.run(attempt, on_retry=on_retry)

    async def ask_each(self, op: Callable[[C], Awaitable[T]], names: Sequence[str] | None = None,
                       *, what: str = "ask_each") -> dict[str, T | ChainError]:
        """``op`` once on each of ``names`` (default: every alive endpoint), concurrently:
        each endpoint's answer or the ChainError it failed with. Failures are observed like
        in :meth:`ask`; nothing is retried (a quorum asks again on its next round)."""
        chosen = list(names) if names is not None else self.serving()
        for n in chosen:
            if n not in self._clients:
                raise ValueError(f"unknown endpoint {n!r}")

        async def one(name: str) -> T | ChainError:
            try:
                return await self._attempt(name, op, what)
            except ChainError as exc:
                return exc

        results = await asyncio.gather(*(one(n) for n in chosen))
        return dict(zip(chosen, results, strict=True))

    async def _attempt(self, name: str, op: Callable[[C], Awaitable[T]], what: str) -> T:
        try:
            return await op(self._clients[name])
        except ChainError as exc:
            err = _named(exc, name)
            self._observe_error(name, err)
            raise err from None
        except ChainIdentityMismatch as exc:
            self.observe(name, fsm.IdentityMismatch(str(exc)))
            raise ChainError(ErrorKind.RETRIABLE, f"{what}: serves another chain",
                             name) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("chain %s: endpoint %s: %s raised %s", self.chain, name, what,
                          type(exc).__name__)
            err = ChainError(ErrorKind.RETRIABLE, f"{what}: client error {type(exc).__name__}",
                             name)
            self._observe_error(name, err)
            raise err from None

    def _summary(self) -> str:
        return ", ".join(f"{n} {v.state.value}" for n, v in self._views.items())

    async def close(self) -> None:
        for client in self._clients.values():
            try:
                await client.close()
            except Exception as exc:
                log.warning("chain %s: endpoint %s: close failed: %s", self.chain, client.name,
                            type(exc).__name__)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:197] + "..."


def _named(exc: ChainError, name: str) -> ChainError:
    """The error with the endpoint that raised it, its class and check kept."""
    if exc.endpoint:
        return exc
    exc.endpoint = name
    exc.args = (f"[{exc.kind.value}] {name}: {exc.args[0] if exc.args else ''}",)
    return exc
