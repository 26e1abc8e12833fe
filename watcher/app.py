"""The composition root: the one place that wires chain adapters and Kafka to the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from watcher.config import ChainConfig, Family, WatcherConfig
from watcher.core.addresses import AddressIndex
from watcher.errors import ChainError, ConfigError, SinkError
from watcher.ports import AddressCodec, ChainSource
from watcher.runtime.follower import ChainFollower, FollowerStatus
from watcher.runtime.gc_tuning import tune_for_throughput
from watcher.runtime.health import HealthServer
from watcher.types import ChainId

log = structlog.get_logger("watcher.app")


def build_family(cfg: ChainConfig) -> tuple[ChainSource, AddressCodec, int]:
    """The adapter, the address codec and the index key width of a chain's family."""
    if cfg.family is Family.EVM:
        from chains.evm.adapter import EvmAddressCodec, build_source

        return build_source(cfg), EvmAddressCodec(), 20
    raise ConfigError(f"chains.{cfg.id}.family", f"family {cfg.family.value!r} is not supported yet")


@dataclass
class App:
    cfg: WatcherConfig
    followers: dict[str, ChainFollower] = field(default_factory=dict)
    indexes: dict[str, AddressIndex] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> int:
        from watcher.addresses_file import load_addresses_file
        from watcher.kafka.client import ensure_topics
        from watcher.kafka.registrations import RegistrationFollower
        from watcher.kafka.sink import DeadLetterWriter, KafkaTransactionalSink

        cfg = self.cfg
        codecs: dict[str, AddressCodec] = {}
        sources: dict[str, ChainSource] = {}
        for cid, ccfg in cfg.chains.items():
            source, codec, width = build_family(ccfg)
            sources[cid], codecs[cid] = source, codec
            self.indexes[cid] = AddressIndex(width)
        if cfg.addresses_file is not None:
            load_addresses_file(cfg.addresses_file, codecs, self.indexes)

        await ensure_topics(cfg.kafka)
        dead_letters = DeadLetterWriter(cfg.kafka)
        await dead_letters.start()
        registrations = RegistrationFollower(cfg.kafka, codecs, self.indexes, dead_letters)

        statuses: dict[str, FollowerStatus] = {}
        stale_after: dict[str, float] = {}

        def new_follower(cid: str) -> ChainFollower:
            # A term of leadership gets a fresh sink: one fenced by a takeover never writes
            # again, and a fresh one fences whoever held the chain before.
            sink = KafkaTransactionalSink(cfg.kafka, f"{cfg.kafka.transactional_id_prefix}-{cid}", cid)
            f = ChainFollower(cfg.chains[ChainId(cid)], sources[cid], sink, self.indexes[cid], codecs[cid],
                              cfg.kafka.topics.deposits)
            self.followers[cid] = f
            statuses[cid] = f.status  # the health server reads this same mapping
            return f

        for cid, ccfg in cfg.chains.items():
            new_follower(cid)
            stale_after[cid] = max(60.0, 20 * ccfg.poll_interval_ms / 1000)

        health = HealthServer(cfg.metrics_host, cfg.metrics_port, statuses, stale_after,
                              registrations.caught_up.is_set)
        await health.start()
        log.info("metrics and health listening", host=cfg.metrics_host, port=cfg.metrics_port)
        tasks: list[asyncio.Task[None]] = []
        starting: dict[str, asyncio.Task[None]] = {}
        try:
            await registrations.start()  # its own task; stopped in the finally below
            if not cfg.leadership.enabled:
                # A follower's start (fencing its transactional id, identifying endpoints)
                # reads no watched address: it overlaps the reading of the registrations.
                starting = {name: asyncio.create_task(f.start(), name=f"start-{name}")
                            for name, f in self.followers.items()}
            # Deposits are judged against the full address set: follow chains only once the
            # registrations topic has been read to its end.
            caught = asyncio.create_task(registrations.caught_up.wait())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({caught, stopping}, return_when=asyncio.FIRST_COMPLETED)
            caught.cancel()
            stopping.cancel()
            if stop.is_set():
                return 0
            log.info("address registrations loaded",
                     **{f"watched_{cid}": len(ix) for cid, ix in self.indexes.items()})
            tune_for_throughput()
            for name in list(self.followers):
                if cfg.leadership.enabled:
                    tasks.append(asyncio.create_task(
                        self._lead_chain(name, new_follower, stop), name=f"lead-{name}"))
                else:
                    f = self.followers[name]
                    await starting.pop(name)
                    tasks.append(asyncio.create_task(f.run(stop), name=f"follow-{name}"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            return 0 if stop.is_set() else 3
        finally:
            stop.set()
            for t in [*starting.values(), *tasks]:
                t.cancel()
            for t in starting.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            for name, f in self.followers.items():
                await f.close()
                with contextlib.suppress(Exception):
                    await f.sink.stop()
                with contextlib.suppress(Exception):
                    await sources[name].close()
            with contextlib.suppress(Exception):
                await registrations.stop()
            with contextlib.suppress(Exception):
                await dead_letters.stop()
            await health.stop()


    async def _lead_chain(self, cid: str, new_follower: Callable[[str], ChainFollower],
                          stop: asyncio.Event) -> None:
        """Follows ``cid`` only while this replica leads it; stands by otherwise.

        Each term starts a fresh follower (fresh sink, state from the committed checkpoint);
        losing the lead cancels the term at once: whatever transaction it had open is never
        committed (the next leader's producer fences it and the broker aborts it).
        """
        from watcher.kafka.leadership import KafkaLeadership

        leadership = KafkaLeadership(self.cfg.kafka, cid,
                                     session_timeout_ms=self.cfg.leadership.session_timeout_ms)
        status = self.followers[cid].status
        status.role = "standby"
        await leadership.start()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                leading = asyncio.ensure_future(leadership.wait_leading())
                await asyncio.wait({leading, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    leading.cancel()
                    return
                leading.result()
                f = self.followers[cid]
                if f.status.started:  # a previous term's follower: never reused
                    f = new_follower(cid)
                f.status.role = "leader"
                log.info("leading; following the chain", chain=cid)
                term = asyncio.ensure_future(self._start_and_run(f, stop))
                lost = asyncio.ensure_future(leadership.wait_lost())
                await asyncio.wait({term, lost}, return_when=asyncio.FIRST_COMPLETED)
                if not term.done():
                    log.warning("leadership lost; stopping this replica's follower", chain=cid)
                    term.cancel()
                lost.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await term
                await f.close()
                with contextlib.suppress(Exception):
                    await f.sink.stop()
                if not stop.is_set():
                    standby = new_follower(cid)
                    standby.status.role = "standby"
                    standby.status.started = True
                    standby.status.started_at = time.time()
        finally:
            stopping.cancel()
            await leadership.stop()


    @staticmethod
    async def _start_and_run(f: ChainFollower, stop: asyncio.Event) -> None:
        """Starts the follower, retrying while nodes or Kafka cannot be reached, then runs it."""
        delay = 0.5
        while not stop.is_set():
            try:
                await f.start()
                break
            except (ChainError, SinkError) as exc:
                log.warning("starting the follower failed; retrying", chain=f.cfg.id,
                            error=str(exc), retry_in_s=delay)
                f.status.last_error = str(exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)
        else:
            return
        await f.run(stop)


async def serve(cfg: WatcherConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await App(cfg).run(stop)
