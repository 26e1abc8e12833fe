"""Endpoint states and which node to follow: pure, chain-agnostic, without I/O.

Each endpoint of a chain is in exactly one :class:`EndpointState` and moves between
states only on plain observations (:data:`Observation`), as Chainlink's ``multinode``
node state machine does::

                      IdentityOk
    UNVERIFIED ───────────────────────────► ALIVE ◄──── InSync ──── LAGGING
        │  │                                 │ │ │ └──── BehindBest ───►
        │  └─ IdentityMismatch ─► WRONG_CHAIN◄┘ │ └─ AnswerRejected ─► MISBEHAVING
        └──── Unreachable ──────► UNREACHABLE ◄─┘ (Unreachable, CallFailed retriable)

    WRONG_CHAIN, MISBEHAVING, UNREACHABLE ── IdentityOk ──► ALIVE   (only way back)

Guarantees:

* Only an ``ALIVE`` endpoint serves (is followed or answers a call). Every way back to
  ``ALIVE`` from a state that set it aside goes through ``IdentityOk``: an endpoint that
  was unreachable, on another chain or caught lying is identified again before it
  serves, so a backend that comes back serving another chain is set aside, never
  believed, never a crash.
* ``WRONG_CHAIN`` and ``MISBEHAVING`` are re-verified after ``cooldown_s``;
  ``UNREACHABLE`` after ``unreachable_retry_s``; ``UNVERIFIED`` at once. When nothing
  serves, every set-aside endpoint but a wrong-chain one is due at once: each answer is
  checked anyway, and waiting would stall the chain.
* The best head of a round sets the bar: an endpoint more than ``lag_tolerance_blocks``
  below it is ``LAGGING`` and never followed, so its older head can never look like a
  reorg. The endpoint followed so far is kept while it is ``ALIVE`` (no flapping);
  otherwise the first ``ALIVE`` endpoint in the configured order is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from watcher.errors import AnswerCheck, ErrorKind


class EndpointState(StrEnum):
    UNVERIFIED = "unverified"
    """Never identified since start: serves nothing."""
    ALIVE = "alive"
    """Identified, answering, in sync with the best head: may serve."""
    UNREACHABLE = "unreachable"
    """A call or an identity check could not be made: re-identified before it serves."""
    LAGGING = "lagging"
    """Identified and answering, but its head is below the best by more than the tolerance."""
    WRONG_CHAIN = "wrong_chain"
    """Serves another chain (or lacks a required capability): set aside, re-checked later."""
    MISBEHAVING = "misbehaving"
    """Answered something that failed a check: set aside, re-checked later."""


SERVING = frozenset({EndpointState.ALIVE})
_SET_ASIDE = frozenset({EndpointState.UNREACHABLE, EndpointState.WRONG_CHAIN,
                        EndpointState.MISBEHAVING})
_HEAD_POLLED = frozenset({EndpointState.ALIVE, EndpointState.LAGGING})


# ------------------------------------------------------------------ observations


@dataclass(frozen=True, slots=True)
class IdentityOk:
    """The endpoint serves the configured chain (and has what the chain needs)."""


@dataclass(frozen=True, slots=True)
class IdentityMismatch:
    detail: str


@dataclass(frozen=True, slots=True)
class Unreachable:
    """An identity check could not be made (transport, 5xx, timeout)."""

    detail: str


@dataclass(frozen=True, slots=True)
class HeadSeen:
    number: int


@dataclass(frozen=True, slots=True)
class CallFailed:
    kind: ErrorKind
    detail: str


@dataclass(frozen=True, slots=True)
class AnswerRejected:
    check: AnswerCheck
    detail: str


@dataclass(frozen=True, slots=True)
class BehindBest:
    best: int


@dataclass(frozen=True, slots=True)
class InSync:
    pass


Observation = (IdentityOk | IdentityMismatch | Unreachable | HeadSeen | CallFailed
               | AnswerRejected | BehindBest | InSync)


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What is known of one endpoint: the state, since when, its last head, its last problem."""

    state: EndpointState
    since: float
    """When it entered ``state``."""
    checked_at: float
    """When its identity was last checked (or it was last set aside): the cool-down clock."""
    head: int | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    lag_tolerance_blocks: int = 0
    cooldown_s: float = 60.0
    unreachable_retry_s: float = 5.0

    def __post_init__(self) -> None:
        if self.lag_tolerance_blocks < 0:
            raise ValueError("lag_tolerance_blocks must be >= 0")
        if self.cooldown_s < 0 or self.unreachable_retry_s < 0:
            raise ValueError("cool-downs must be >= 0")


def initial(now: float) -> EndpointView:
    return EndpointView(EndpointState.UNVERIFIED, since=now, checked_at=float("-inf"))


# ------------------------------------------------------------------ transitions


def transition(view: EndpointView, obs: Observation, now: float) -> EndpointView:
    """The endpoint's view after ``obs`` at ``now``. Pure; unknown combinations keep the state."""
    s = view.state
    E = EndpointState
    if isinstance(obs, IdentityOk):
        return _to(view, E.ALIVE, now, checked=True, problem=None)
    if isinstance(obs, IdentityMismatch):
        return _to(view, E.WRONG_CHAIN, now, checked=True, problem=obs.detail)
    if isinstance(obs, Unreachable):
        if s is E.WRONG_CHAIN:
            # Still set aside for its chain: being unreachable too changes nothing.
            return replace(view, checked_at=now)
        return _to(view, E.UNREACHABLE, now, checked=True, problem=obs.detail)
    if s in _SET_ASIDE or s is E.UNVERIFIED:
        if isinstance(obs, AnswerRejected) and s is E.UNVERIFIED:
            return _to(view, E.MISBEHAVING, now, checked=True,
                       problem=f"{obs.check.value}: {obs.detail}")
        # Nothing but an identity check brings a set-aside endpoint back.
        return view
    # ALIVE or LAGGING from here.
    if isinstance(obs, HeadSeen):
        return replace(view, head=obs.number)
    if isinstance(obs, CallFailed):
        if obs.kind is ErrorKind.RETRIABLE:
            return _to(view, E.UNREACHABLE, now, checked=True, problem=obs.detail)
        return view  # the request was wrong, not the endpoint
    if isinstance(obs, AnswerRejected):
        return _to(view, E.MISBEHAVING, now, checked=True,
                   problem=f"{obs.check.value}: {obs.detail}")
    if isinstance(obs, BehindBest):
        return _to(view, E.LAGGING, now, checked=False,
                   problem=f"head {view.head} behind best {obs.best}")
    if isinstance(obs, InSync):
        return _to(view, E.ALIVE, now, checked=False, problem=None)
    raise TypeError(f"unknown observation {obs!r}")  # pragma: no cover


def _to(view: EndpointView, state: EndpointState, now: float, *, checked: bool,
        problem: str | None) -> EndpointView:
    return EndpointView(
        state=state,
        since=view.since if state is view.state else now,
        checked_at=now if checked else view.checked_at,
        head=view.head if state in _HEAD_POLLED else None,
        problem=problem,
    )


# ------------------------------------------------------------------ decisions


def due_for_identity(views: Mapping[str, EndpointView], now: float,
                     policy: EndpointPolicy) -> frozenset[str]:
    """Endpoints whose identity should be checked now (see the module guarantees)."""
    E = EndpointState
    nothing_serves = not any(v.state in SERVING for v in views.values())
    due: set[str] = set()
    for name, v in views.items():
        waited = now - v.checked_at
        if v.state is E.UNVERIFIED:
            due.add(name)
        elif v.state is E.UNREACHABLE:
            if nothing_serves or waited >= policy.unreachable_retry_s:
                due.add(name)
        elif v.state is E.MISBEHAVING:
            if nothing_serves or waited >= policy.cooldown_s:
                due.add(name)
        elif v.state is E.WRONG_CHAIN and waited >= policy.cooldown_s:
            due.add(name)
    return frozenset(due)


def head_polled(views: Mapping[str, EndpointView]) -> frozenset[str]:
    """Endpoints whose head is asked in a round: the identified, answering ones."""
    return frozenset(n for n, v in views.items() if v.state in _HEAD_POLLED)


def lag_observations(views: Mapping[str, EndpointView], tolerance: int
                     ) -> dict[str, BehindBest | InSync]:
    """``BehindBest`` or ``InSync`` for every head-polled endpoint, against the best head."""
    heads = {n: v.head for n, v in views.items() if v.state in _HEAD_POLLED and v.head is not None}
    if not heads:
        return {}
    best = max(heads.values())
    return {n: (InSync() if h >= best - tolerance else BehindBest(best)) for n, h in heads.items()}


def choose_followed(views: Mapping[str, EndpointView], previous: str | None,
                    order: Sequence[str]) -> str | None:
    """The endpoint to follow: ``previous`` while it serves, else the first serving one."""
    if previous is not None and previous in views and views[previous].state in SERVING:
        return previous
    return next((n for n in order if n in views and views[n].state in SERVING), None)


def serving_order(views: Mapping[str, EndpointView], followed: str | None,
                  order: Sequence[str]) -> list[str]:
    """Serving endpoints to ask in turn: the followed one first, then the configured order."""
    serving = [n for n in order if n in views and views[n].state in SERVING]
    if followed in serving:
        serving.remove(followed)
        serving.insert(0, followed)
    return serving


# ------------------------------------------------------------------ one round (kept API)


@dataclass(frozen=True, slots=True)
class EndpointChoice:
    followed: str | None
    """The endpoint to follow; None when no endpoint answered this round."""
    in_sync: frozenset[str]
    """Endpoints that answered with a head within tolerance of the best."""
    best_head: int | None
    """The highest head reported this round."""


def choose_endpoint(
    heads: Mapping[str, int | None],
    previous: str | None,
    order: Sequence[str],
    lag_tolerance_blocks: int,
) -> EndpointChoice:
    """Decides the endpoint to follow from this round's heads alone.

    ``heads`` maps endpoint names to the head number each reported, or None when it
    failed; an endpoint of ``order`` missing from ``heads`` counts as failed, and names
    outside ``order`` are ignored.
    """
    if lag_tolerance_blocks < 0:
        raise ValueError("lag_tolerance_blocks must be >= 0")
    answered = {name: heads[name] for name in order if heads.get(name) is not None}
    if not answered:
        return EndpointChoice(followed=None, in_sync=frozenset(), best_head=None)
    best = max(h for h in answered.values() if h is not None)
    floor = best - lag_tolerance_blocks
    in_sync = frozenset(name for name, h in answered.items() if h is not None and h >= floor)
    if previous is not None and previous in in_sync:
        followed = previous
    else:
        followed = next(name for name in order if name in in_sync)
    return EndpointChoice(followed=followed, in_sync=in_sync, best_head=best)
