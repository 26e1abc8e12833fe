"""The drain after SIGTERM: finished steps return at once, a stuck one is cancelled at the
end of the drain, a follower's failure is raised; the config bounds the grace period."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import yaml

from watcher.app import App, follow_until_stopped, serve
from watcher.config import load
from watcher.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


async def test_followers_that_finish_their_step_end_the_wait() -> None:
    stop = asyncio.Event()

    async def follower() -> None:
        await stop.wait()

    tasks = [asyncio.create_task(follower()) for _ in range(2)]
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    await follow_until_stopped(tasks, stop, drain_s=10)
    assert time.monotonic() - started < 2
    assert all(t.done() and not t.cancelled() for t in tasks)


async def test_a_step_stuck_past_the_drain_is_cancelled() -> None:
    stop = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(stuck())
    stop.set()
    started = time.monotonic()
    await follow_until_stopped([task], stop, drain_s=0.2)
    await asyncio.wait_for(cancelled.wait(), 2)
    assert 0.15 < time.monotonic() - started < 2


async def test_a_failing_follower_is_raised() -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await follow_until_stopped([asyncio.create_task(broken())], asyncio.Event(), drain_s=1)


def config_with(tmp_path: Path, **top: object) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "local.yaml").read_text())
    raw.update(top)
    # Relative paths in it (the btc chain's credential files) resolve beside the copy.
    shutil.copytree(ROOT / "config" / "local", tmp_path / "local", dirs_exist_ok=True)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_grace_period_is_configured_and_bounded(tmp_path: Path) -> None:
    cfg = load(config_with(tmp_path, shutdown_grace_s=12), environ={})
    assert cfg.shutdown_grace_s == 12
    # 12 s: 2 s kept for the interpreter's exit, a third of the 10 s left for closing
    # producers and nodes, the rest to finish the step in flight.
    assert App(cfg).usable_s == 10.0
    assert App(cfg).drain_s == pytest.approx(20 / 3)
    assert load(config_with(tmp_path), environ={}).shutdown_grace_s == 30
    with pytest.raises(ConfigError, match="shutdown_grace_s"):
        load(config_with(tmp_path, shutdown_grace_s=0), environ={})


@pytest.mark.parametrize(("following", "within_s"), [(False, 1.0), (True, 99.0)])
async def test_a_stop_cancels_a_start_at_once_and_never_a_drain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, following: bool, within_s: float) -> None:
    """Before the chains' loops run (a start waiting for Kafka, say) nothing is in flight:
    a SIGTERM cancels the start at once and serve() returns 0. Once they run, the same
    SIGTERM only asks them to drain (the stop event); nothing is cancelled before the end of
    the usable grace time (10 s here)."""
    cfg = load(config_with(tmp_path, shutdown_grace_s=12), environ={})
    seen: dict[str, object] = {}

    async def run(self: App, stop: asyncio.Event) -> int:
        self.following = following
        try:
            if following:
                await stop.wait()  # the loops drain: they end by themselves once asked
                seen["stop"] = True
            else:
                await asyncio.sleep(3600)  # a start that does not watch the stop
            return 0
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    monkeypatch.setattr(App, "run", run)
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
    started = time.monotonic()
    try:
        assert await serve(cfg) == 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    assert time.monotonic() - started < within_s
    assert seen == ({"stop": True} if following else {"cancelled": True})
