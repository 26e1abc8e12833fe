"""``/metrics``, ``/healthz`` and ``/readyz`` on one small HTTP server.

* ``/healthz``: the process is alive and its loops are not wedged (every started
  chain completed a cycle recently, successful or not).
* ``/readyz``: it is doing its job: registrations read to the end, every chain
  started, none halted or fenced, and each had a successful cycle recently.
  A reorg beyond the window makes it fail, which is what pages someone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watcher.metrics import REGISTRY
from watcher.runtime.follower import FollowerStatus


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
        if st.halted_reason:
            reasons.append(f"{chain}: halted: {st.halted_reason}")
        elif not st.started:
            reasons.append(f"{chain}: not started")
        elif now - st.last_ok_at > stale_after[chain]:
            since = (f"for {now - st.last_ok_at:.0f}s" if st.last_ok_at else
                     f"since start ({now - st.started_at:.0f}s)")
            reasons.append(f"{chain}: no successful cycle {since}"
                           + (f" (last error: {st.last_error})" if st.last_error else ""))
    return Readiness(not reasons, tuple(reasons))


class HealthServer:
    def __init__(self, host: str, port: int, statuses: Mapping[str, FollowerStatus],
                 stale_after: Mapping[str, float], registrations_caught_up: Callable[[], bool],
                 clock: Callable[[], float] = time.time) -> None:
        self.host, self.port = host, port
        self._statuses = statuses
        self._stale_after = stale_after
        self._registrations = registrations_caught_up
        self._clock = clock
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        r = readiness(self._statuses, self._stale_after, self._registrations(), self._clock())
        return web.json_response({"ready": r.ready, "reasons": list(r.reasons)},
                                 status=200 if r.ready else 503)
