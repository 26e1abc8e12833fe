"""``/metrics``, ``/healthz`` and ``/readyz`` on one small HTTP server.

* ``/healthz``: the process is alive and its loops are not wedged (every started
  chain completed a cycle recently, successful or not).
* ``/status``: per chain heights, lag, pending deposits and endpoints, as JSON
  (:mod:`watcher.runtime.status`; read by ``watcher status``).
* ``/readyz``: it is doing its job: registrations read to the end, every chain
  started, none halted or fenced, each had a successful cycle recently, has an
  alive endpoint, and no deposit is held back for lack of a confirmation quorum.
  A reorg beyond the window makes it fail, which is what pages someone. The body
  names each endpoint's state (``endpoints``: chain -> endpoint -> state).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watcher.core.endpoints import EndpointState
from watcher.metrics import REGISTRY
from watcher.runtime.follower import FollowerStatus
from watcher.runtime.httpserver import GetServer, Response


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: tuple[str, ...]


def readiness(statuses: Mapping[str, FollowerStatus], stale_after: Mapping[str, float],
              registrations_caught_up: bool, now: float) -> Readiness:
    reasons: list[str] = []
    if not registrations_caught_up:
        reasons.append("address registrations not yet read to the end")
    for chain, st in statuses.items():
        if st.role == "standby":
            continue  # standing by is this replica's job; the leader answers for the chain
        if st.halted_reason:
            reasons.append(f"{chain}: halted: {st.halted_reason}")
        elif not st.started:
            reasons.append(f"{chain}: not started")
        elif now - st.last_ok_at > stale_after[chain]:
            since = (f"for {now - st.last_ok_at:.0f}s" if st.last_ok_at else
                     f"since start ({now - st.started_at:.0f}s)")
            reasons.append(f"{chain}: no successful cycle {since}"
                           + (f" (last error: {st.last_error})" if st.last_error else ""))
        if st.started and st.endpoints and not any(
                v.state is EndpointState.ALIVE for v in st.endpoints.values()):
            reasons.append(f"{chain}: no endpoint alive: " + ", ".join(
                f"{name} {v.state.value}" + (f" ({v.problem})" if v.problem else "")
                for name, v in st.endpoints.items()))
        if st.quorum_problem:
            reasons.append(f"{chain}: confirmations held: {st.quorum_problem}")
    return Readiness(not reasons, tuple(reasons))


def endpoint_states(statuses: Mapping[str, FollowerStatus]) -> dict[str, dict[str, str]]:
    """chain -> endpoint -> state, as of each chain's last cycle."""
    return {chain: {name: v.state.value for name, v in st.endpoints.items()}
            for chain, st in statuses.items()}

def liveness(statuses: Mapping[str, FollowerStatus], stale_after: Mapping[str, float],
             now: float) -> Readiness:
    """Alive unless a started chain's loop has not begun a step for ``stale_after``: failing
    nodes, halts and lag do not count (that is readiness), a wedged loop does."""
    reasons = [f"{chain}: the follower loop has not turned for {now - st.last_cycle_at:.0f}s"
               for chain, st in statuses.items()
               if st.started and st.last_cycle_at and now - st.last_cycle_at > stale_after[chain]]
    return Readiness(not reasons, tuple(reasons))


def _json(doc: object, status: int = 200) -> Response:
    # json.dumps and this content type: the bytes aiohttp's json_response answered.
    return Response(status, json.dumps(doc).encode(), "application/json; charset=utf-8")


class HealthServer:
    def __init__(self, host: str, port: int, statuses: Mapping[str, FollowerStatus],
                 stale_after: Mapping[str, float], registrations_caught_up: Callable[[], bool],
                 clock: Callable[[], float] = time.time,
                 status: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self.host, self.port = host, port
        self._statuses = statuses
        self._stale_after = stale_after
        self._registrations = registrations_caught_up
        self._clock = clock
        self._status = status
        routes = {"/metrics": self._metrics, "/healthz": self._healthz, "/readyz": self._readyz}
        if status is not None:
            routes["/status"] = self._status_route
        self._server = GetServer(host, port, routes)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def _metrics(self) -> Response:
        return Response(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)

    def _healthz(self) -> Response:
        r = liveness(self._statuses, self._stale_after, self._clock())
        return _json({"status": "ok" if r.ready else "wedged", "reasons": list(r.reasons)},
                     200 if r.ready else 503)

    def _readyz(self) -> Response:
        r = readiness(self._statuses, self._stale_after, self._registrations(), self._clock())
        roles = {chain: st.role for chain, st in self._statuses.items()}
        return _json({"ready": r.ready, "reasons": list(r.reasons), "roles": roles,
                      "endpoints": endpoint_states(self._statuses)},
                     200 if r.ready else 503)

    def _status_route(self) -> Response:
        """``/status``: the document of :mod:`watcher.runtime.status` (``watcher status``)."""
        assert self._status is not None
        return _json(dict(self._status()))
