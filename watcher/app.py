"""The composition root: the one place that wires chain adapters and Kafka to the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from watcher.config import ChainConfig, Family, WatcherConfig
from watcher.core.addresses import AddressIndex
from watcher.errors import ConfigError
from watcher.ports import AddressCodec, ChainSource
from watcher.runtime.follower import ChainFollower, FollowerStatus
from watcher.runtime.gc_tuning import tune_for_throughput
from watcher.runtime.health import HealthServer

log = structlog.get_logger("watcher.app")


def build_family(cfg: ChainConfig) -> tuple[ChainSource, AddressCodec, int]:
    """The adapter, the address codec and the index key width of a chain's family."""
    if cfg.family is Family.EVM:
        from chains.evm.adapter import EvmAddressCodec, build_source

        return build_source(cfg), EvmAddressCodec(), 20
    raise ConfigError(f"chains.{cfg.id}.family", f"family {cfg.family.value!r} is not supported yet")


def file_fingerprint(path: Path | None) -> str | None:
    """Identifies the static addresses file an address snapshot was taken over."""
    if path is None:
        return None
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@dataclass
class App:
    cfg: WatcherConfig
    followers: dict[str, ChainFollower] = field(default_factory=dict)
    indexes: dict[str, AddressIndex] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> int:
        from watcher.addresses_file import load_addresses_file
        from watcher.kafka.addrsnapshots import AddressSnapshotStore
        from watcher.kafka.client import ensure_topics
        from watcher.kafka.registrations import RegistrationFollower, SnapshotSettings
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

        await ensure_topics(cfg.kafka, chains=list(cfg.chains))
        dead_letters = DeadLetterWriter(cfg.kafka)
        await dead_letters.start()
        snapshots = SnapshotSettings(AddressSnapshotStore(cfg.kafka),
                                     base=file_fingerprint(cfg.addresses_file))
        registrations = RegistrationFollower(cfg.kafka, codecs, self.indexes, dead_letters,
                                             snapshots=snapshots)

        statuses: dict[str, FollowerStatus] = {}
        stale_after: dict[str, float] = {}
        for cid, ccfg in cfg.chains.items():
            sink = KafkaTransactionalSink(cfg.kafka, f"{cfg.kafka.transactional_id_prefix}-{cid}", cid)
            f = ChainFollower(ccfg, sources[cid], sink, self.indexes[cid], codecs[cid],
                              cfg.kafka.topics.deposits)
            self.followers[cid] = f
            statuses[cid] = f.status
            stale_after[cid] = max(60.0, 20 * ccfg.poll_interval_ms / 1000)

        health = HealthServer(cfg.metrics_host, cfg.metrics_port, statuses, stale_after,
                              registrations.caught_up.is_set)
        await health.start()
        log.info("metrics and health listening", host=cfg.metrics_host, port=cfg.metrics_port)
        tasks: list[asyncio.Task[None]] = []
        try:
            await registrations.start()  # its own task; stopped in the finally below
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
            for name, f in self.followers.items():
                await f.start()
                tasks.append(asyncio.create_task(f.run(stop), name=f"follow-{name}"))
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
            return 0 if stop.is_set() else 3
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
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


async def serve(cfg: WatcherConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await App(cfg).run(stop)
