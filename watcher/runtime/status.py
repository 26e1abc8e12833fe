"""The ``/status`` document: what ``watcher status`` shows, per chain, from a running daemon.

The health server asks :func:`status_document` for it at each request. The
follower's :class:`FollowerStatus` gives processed height, head, lag and the
pending (tracked, unconfirmed) deposits. Endpoints: the endpoint pool's full
states where the follower records them (``FollowerStatus.endpoints``, read by
:func:`from_follower_status`); else whatever the chain source exposes through
:class:`EndpointReporter`; else, for today's EVM adapter, which endpoint is
followed and which are healthy (:func:`pool_endpoints`). Nothing here names a URL: an
endpoint is its configured name.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from watcher.runtime.follower import FollowerStatus

STATUS_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class EndpointView:
    name: str
    state: str
    """``followed``, ``healthy``, ``unhealthy`` for the EVM adapter; the pool's own state names."""
    head: int | None = None
    problem: str | None = None


@runtime_checkable
class EndpointReporter(Protocol):
    """Implemented by a chain source (or its pool) that can say how each endpoint stands."""

    def endpoint_views(self) -> Sequence[EndpointView]: ...


class _PoolLike(Protocol):
    @property
    def names(self) -> tuple[str, ...]: ...
    @property
    def followed(self) -> str: ...
    @property
    def healthy(self) -> frozenset[str]: ...


def pool_endpoints(pool: _PoolLike, head_of: Callable[[str], int | None]) -> list[EndpointView]:
    """Endpoint views from a pool that knows only the followed and the healthy endpoints."""
    healthy: Collection[str] = pool.healthy
    out = []
    for name in pool.names:
        state = "followed" if name == pool.followed else "healthy" if name in healthy else "unhealthy"
        out.append(EndpointView(name, state, head_of(name)))
    return out


def endpoints_of(source: object, head_of: Callable[[str], int | None]) -> list[EndpointView]:
    """What ``source`` tells about its endpoints: its own report, its pool's, or nothing."""
    if isinstance(source, EndpointReporter):
        return list(source.endpoint_views())
    pool = getattr(source, "pool", None)
    if pool is not None and all(hasattr(pool, a) for a in ("names", "followed", "healthy")):
        return pool_endpoints(pool, head_of)
    return []


def from_follower_status(status: FollowerStatus) -> list[EndpointView]:
    """The endpoint pool's states as the follower last recorded them, if it records any.

    The pool (``watcher.core.endpoints``) has the follower keep ``status.endpoints``:
    endpoint name -> a view with ``state`` (an enum), ``head`` and ``problem``. Read by
    shape, so this module needs nothing of the pool but those three attributes.
    """
    recorded: Any = getattr(status, "endpoints", None)
    if not isinstance(recorded, Mapping):
        return []
    out = []
    for name, view in recorded.items():
        state = getattr(view, "state", None)
        out.append(EndpointView(str(name), str(getattr(state, "value", state)),
                                getattr(view, "head", None), getattr(view, "problem", None)))
    return out


def chain_status(status: FollowerStatus, endpoints: Sequence[EndpointView]) -> dict[str, Any]:
    lag = None
    if status.head_height is not None and status.processed_height is not None:
        lag = max(0, status.head_height - status.processed_height)
    state = ("halted" if status.halted_reason else "starting" if not status.started
             else "caught_up" if status.caught_up else "catching_up")
    return {
        "state": state,
        "halted_reason": status.halted_reason,
        "fenced": status.fenced,
        "head_height": status.head_height,
        "processed_height": status.processed_height,
        "lag_blocks": lag,
        "pending_deposits": status.pending_deposits,
        "committed_events": status.committed_events,
        "last_ok_at": status.last_ok_at or None,
        "last_error": status.last_error,
        "endpoints": [{"name": e.name, "state": e.state, "head": e.head, "problem": e.problem}
                      for e in endpoints],
        # Withdrawals are not followed yet; the field is reserved for that slice.
        "pending_withdrawals": status.pending_withdrawals,
    }


def status_document(statuses: Mapping[str, FollowerStatus],
                    endpoints: Mapping[str, Callable[[], Sequence[EndpointView]]],
                    now: float) -> dict[str, Any]:
    chains = {}
    for chain, st in statuses.items():
        # The pool's full states where the follower records them, else what the source says.
        views = from_follower_status(st)
        if not views and (report := endpoints.get(chain)) is not None:
            views = list(report())
        chains[chain] = chain_status(st, views)
    return {"schema_version": STATUS_SCHEMA_VERSION, "at": now, "chains": chains}
