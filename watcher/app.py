"""The composition root: the one place that wires chain adapters and Kafka to the runtime."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from watcher.config import ChainConfig, Family, WatcherConfig
from watcher.core.addresses import AddressIndex
from watcher.errors import ChainError, ConfigError, SinkError
from watcher.metrics import REGISTRY, ChainSeries, init_series
from watcher.ports import AddressCodec, ChainSource, MempoolSource
from watcher.runtime.follower import ChainFollower, FollowerStatus
from watcher.runtime.gc_tuning import tune_for_throughput
from watcher.runtime.health import HealthServer
from watcher.runtime.retry import until_kafka_answers
from watcher.runtime.status import endpoints_of, status_document
from watcher.types import ChainId

# WithdrawalRunner is imported where a runner is built: signing pulls eth_keys and pydantic
# (~0.4 s of CPU at every start), which a watcher without withdrawals never needs.
if TYPE_CHECKING:
    from watcher.kafka.registrations import DeadLetters
    from watcher.withdrawals.runtime import WithdrawalRunner

log = structlog.get_logger("watcher.app")


def build_family(cfg: ChainConfig) -> tuple[ChainSource, AddressCodec, int]:
    """The adapter, the address codec and the index key width of a chain's family."""
    if cfg.family is Family.EVM:
        from chains.evm.adapter import EvmAddressCodec, build_source

        return build_source(cfg), EvmAddressCodec(), 20
    if cfg.family is Family.BITCOIN:
        from chains.bitcoin.source import build_family as build_bitcoin

        # Key width from the codec (chains.bitcoin.script.KEY_SIZE: padded scriptPubKeys).
        return build_bitcoin(cfg)
    raise ConfigError(f"chains.{cfg.id}.family", f"family {cfg.family.value!r} is not supported yet")


def build_mempool(cfg: ChainConfig, source: ChainSource) -> MempoolSource | None:
    """The chain's mempool when watching it is on (a UTXO family's source is one)."""
    if not cfg.mempool.enabled:
        return None
    from chains.bitcoin.source import BitcoinChainSource

    if not isinstance(source, BitcoinChainSource):
        raise ConfigError(f"chains.{cfg.id}.mempool.enabled",
                          f"family {cfg.family.value!r} has no mempool to watch")
    return source

def chain_series(cfg: WatcherConfig) -> list[ChainSeries]:
    """What metrics.init_series needs of the configuration: per chain, its endpoints and
    whether it watches a mempool and elects a leader."""
    return [ChainSeries(cid, tuple(e.name for e in ccfg.endpoints), ccfg.mempool.enabled,
                        cfg.leadership.enabled) for cid, ccfg in cfg.chains.items()]

def withdrawal_runners(cfg: WatcherConfig, sources: Mapping[str, ChainSource],
                       codecs: Mapping[str, AddressCodec], dead_letters: DeadLetters
                       ) -> Callable[[str], WithdrawalRunner | None]:
    """Reads the hot keys once (here, at start) and returns the factory of a chain's
    withdrawal runner. Raises ConfigError for a family without payments yet."""
    wcfg = cfg.withdrawals
    if wcfg is None or not wcfg.chains:
        return lambda _cid: None
    from chains.bitcoin.source import BitcoinChainSource
    from chains.bitcoin.tx import compressed_public_key, p2wpkh_script
    from chains.bitcoin.wallet import UtxoHotWallet
    from chains.evm.adapter import EvmChainSource
    from chains.evm.tx import sender_of
    from chains.evm.wallet import EvmHotWallet
    from watcher.kafka.client import ManualConsumer
    from watcher.kafka.settled import KafkaSettledRecords
    from watcher.kafka.sink import KafkaTransactionalSink
    from watcher.ports import HotWalletNode
    from watcher.withdrawals.policy import hot_key_signer, intake_policy
    from watcher.withdrawals.runtime import RunnerTopics, WithdrawalRunner

    policy = intake_policy(wcfg, cfg.chains, {ChainId(k): v for k, v in codecs.items()})
    primary = min(wcfg.chains)
    signers = {}
    for cid, cw in wcfg.chains.items():
        source = sources[cid]
        if isinstance(source, BitcoinChainSource):
            if not source.network.segwit:
                raise ConfigError(f"withdrawals.chains.{cid}",
                                  f"network {source.network.name} has no segwit: the hot wallet "
                                  "pays from a P2WPKH address")
        elif not isinstance(source, EvmChainSource):
            raise ConfigError(f"withdrawals.chains.{cid}",
                              f"payments on family {cfg.chains[cid].family.value!r} are not "
                              "carried out yet")
        signers[cid] = hot_key_signer(cw)
    topics = RunnerTopics(cfg.kafka.topics.withdrawal_requests, cfg.kafka.topics.withdrawals)

    def new_runner(cid: str) -> WithdrawalRunner | None:
        cw = wcfg.chains.get(ChainId(cid))
        if cw is None:
            return None
        source = sources[cid]
        signer = signers[cw.chain]
        node: HotWalletNode
        if isinstance(source, BitcoinChainSource):
            node = UtxoHotWallet(source.pool, p2wpkh_script(compressed_public_key(signer.public_key)))
        else:
            assert isinstance(source, EvmChainSource)
            node = EvmHotWallet(source.pool, sender_of(signer.public_key))
        return WithdrawalRunner(
            chain=cfg.chains[cw.chain], cw=cw, policy=policy, primary=primary, topics=topics,
            signer=signer, node=node,
            sink=KafkaTransactionalSink(
                cfg.kafka, f"{cfg.kafka.transactional_id_prefix}-withdrawals-{cid}", cid),
            requests=ManualConsumer(cfg.kafka, topics.requests), dead_letters=dead_letters,
            settled=KafkaSettledRecords(cfg.kafka, cid))
    return new_runner


def file_fingerprint(path: Path | None) -> str | None:
    """Identifies the static addresses file an address snapshot was taken over."""
    if path is None:
        return None
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


@dataclass
class App:
    cfg: WatcherConfig
    followers: dict[str, ChainFollower] = field(default_factory=dict)
    _new_runner: Callable[[str], WithdrawalRunner | None] = field(
        default=lambda _cid: None, repr=False)
    """A fresh withdrawal runner of a chain for each term (None: no withdrawals there)."""
    indexes: dict[str, AddressIndex] = field(default_factory=dict)
    stop_requested_at: float | None = None
    """Monotonic time of the SIGTERM (or SIGINT): the grace period counts from it."""
    following: bool = False
    """Set once the chains' loops run: before, nothing is in flight that a drain must finish
    (no event is being written), so a stop cancels the start at once."""

    @property
    def usable_s(self) -> float:
        """The grace period less what the interpreter needs to exit after cancelling what is
        left (a fifth of it, at most 2 s): the backstop cancels everything then."""
        grace = float(self.cfg.shutdown_grace_s)
        return grace - min(2.0, grace / 5)

    @property
    def drain_s(self) -> float:
        """How long in-flight steps may take to finish after the stop: the usable time less
        what closing the producers and nodes needs (a third of it, at most 10 s)."""
        return self.usable_s - min(10.0, self.usable_s / 3)

    def close_budget_s(self) -> float:
        if self.stop_requested_at is None:
            return self.usable_s
        return max(0.1, self.usable_s - 0.25 - (time.monotonic() - self.stop_requested_at))

    async def run(self, stop: asyncio.Event) -> int:
        from watcher.addresses_file import load_addresses_file
        from watcher.kafka.addrsnapshots import AddressSnapshotStore
        from watcher.kafka.client import ensure_topics
        from watcher.kafka.registrations import RegistrationFollower, SnapshotSettings
        from watcher.kafka.sink import DeadLetterWriter, KafkaTransactionalSink

        cfg = self.cfg
        init_series(chain_series(cfg))
        codecs: dict[str, AddressCodec] = {}
        sources: dict[str, ChainSource] = {}
        for cid, ccfg in cfg.chains.items():
            source, codec, width = build_family(ccfg)
            sources[cid], codecs[cid] = source, codec
            self.indexes[cid] = AddressIndex(width)
        if cfg.addresses_file is not None:
            load_addresses_file(cfg.addresses_file, codecs, self.indexes)

        await until_kafka_answers("ensuring topics",
                                  lambda: ensure_topics(cfg.kafka, chains=list(cfg.chains)))
        dead_letters = DeadLetterWriter(cfg.kafka)
        await until_kafka_answers("starting the dead-letter producer", dead_letters.start)
        snapshots = SnapshotSettings(AddressSnapshotStore(cfg.kafka),
                                     base=file_fingerprint(cfg.addresses_file))
        registrations = RegistrationFollower(cfg.kafka, codecs, self.indexes, dead_letters,
                                             snapshots=snapshots)

        statuses: dict[str, FollowerStatus] = {}
        stale_after: dict[str, float] = {}

        def new_follower(cid: str) -> ChainFollower:
            # A term of leadership gets a fresh sink: one fenced by a takeover never writes
            # again, and a fresh one fences whoever held the chain before.
            sink = KafkaTransactionalSink(cfg.kafka, f"{cfg.kafka.transactional_id_prefix}-{cid}", cid)
            ccfg = cfg.chains[ChainId(cid)]
            f = ChainFollower(ccfg, sources[cid], sink, self.indexes[cid], codecs[cid],
                              cfg.kafka.topics.deposits, mempool=build_mempool(ccfg, sources[cid]),
                              mempool_drop_after_s=float(ccfg.mempool.drop_after_s),
                              mempool_interval_s=ccfg.mempool.poll_interval_ms / 1000)
            self.followers[cid] = f
            statuses[cid] = f.status  # the health server reads this same mapping
            return f

        for cid, ccfg in cfg.chains.items():
            new_follower(cid)
            stale_after[cid] = max(60.0, 20 * ccfg.poll_interval_ms / 1000)
        self._new_runner = withdrawal_runners(cfg, sources, codecs, dead_letters)

        health = HealthServer(cfg.metrics_host, cfg.metrics_port, statuses, stale_after,
                              registrations.caught_up.is_set,
                              status=status_route(statuses, sources))
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
            # Every chain started before any follows: until then no step is in flight
            # anywhere, and a stop cancels the start at once (serve()), Kafka or a node away.
            for name in list(starting):
                await starting.pop(name)
            self.following = True
            for name in list(self.followers):
                if cfg.leadership.enabled:
                    tasks.append(asyncio.create_task(
                        self._lead_chain(name, new_follower, stop), name=f"lead-{name}"))
                else:
                    f = self.followers[name]
                    tasks.append(asyncio.create_task(f.run(stop), name=f"follow-{name}"))
                    runner = self._new_runner(name)
                    if runner is not None:
                        runner.status = f.status
                        tasks.append(asyncio.create_task(self._pay(runner, stop),
                                                         name=f"withdraw-{name}"))
            await follow_until_stopped(tasks, stop, self.drain_s)
            return 0 if stop.is_set() else 3
        finally:
            stop.set()
            for t in [*starting.values(), *tasks]:
                t.cancel()
            try:
                # Whatever is left of the grace period; past it the process exits anyway and
                # the broker aborts an open transaction (the next start fences it at once).
                async with asyncio.timeout(self.close_budget_s()):
                    for t in [*starting.values(), *tasks]:
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
            except TimeoutError:
                log.error(  # noqa: TRY400 - the timeout is the message, not a traceback
                    "shutdown exceeded the grace period; exiting with work left to the "
                    "broker's transaction timeout", grace_s=cfg.shutdown_grace_s)

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


    async def _start_and_run(self, f: ChainFollower, stop: asyncio.Event) -> None:
        """One term of leadership: the chain's deposit follower and, when the chain has
        withdrawals configured, its withdrawal runner (a fresh one: fresh sink, state from
        its checkpoint). Either failing ends the term."""
        runner = self._new_runner(str(f.cfg.id))
        if runner is None:
            await self._follow(f, stop)
            return
        runner.status = f.status
        # Not a TaskGroup: its ExceptionGroup would hide the error kind (FENCED, say) from
        # whoever handles a term's failure; the first error is raised as it is.
        parts = [asyncio.ensure_future(self._follow(f, stop)),
                 asyncio.ensure_future(self._pay(runner, stop))]
        try:
            done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                error = None if t.cancelled() else t.exception()
                if error is not None:
                    raise error
            await asyncio.gather(*parts)
        finally:
            for t in parts:
                t.cancel()
            for t in parts:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    @staticmethod
    async def _pay(runner: WithdrawalRunner, stop: asyncio.Event) -> None:
        """Starts the withdrawal runner, retrying while nodes or Kafka cannot be reached,
        then runs it; its producer and consumer are closed however it ends."""
        delay = 0.5
        try:
            while not stop.is_set():
                try:
                    await runner.start()
                    break
                except (ChainError, SinkError) as exc:
                    log.warning("starting the withdrawal runner failed; retrying",
                                chain=runner.chain, error=str(exc), retry_in_s=delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, 10.0)
            else:
                return
            await runner.run(stop)
        finally:
            await runner.close()

    @staticmethod
    async def _follow(f: ChainFollower, stop: asyncio.Event) -> None:
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


async def follow_until_stopped(tasks: list[asyncio.Task[None]], stop: asyncio.Event,
                               drain_s: float) -> None:
    """Returns when every follower ended or, after ``stop``, when they drained.

    A follower sees ``stop`` between steps: its step in flight finishes, commit included.
    One that has not finished ``drain_s`` after the stop is cancelled: its transaction is
    aborted (by the sink's stop) or, when the commit request was already sent, completes
    on the broker; never half of it. A follower that raised re-raises here.
    """
    if not tasks:
        return
    stopping = asyncio.create_task(stop.wait())
    try:
        pending: set[asyncio.Task[Any]] = set(tasks)
        while pending and not stop.is_set():
            done, pending = await asyncio.wait(pending | {stopping},
                                               return_when=asyncio.FIRST_COMPLETED)
            done.discard(stopping)
            pending.discard(stopping)
            for t in done:
                error = None if t.cancelled() else t.exception()
                if error is not None:
                    raise error
        if pending:
            _, late = await asyncio.wait(pending, timeout=drain_s)
            if late:
                log.warning("followers still busy at the end of the drain; cancelling them",
                            chains=sorted(t.get_name() for t in late), drain_s=drain_s)
                for t in late:
                    t.cancel()
    finally:
        stopping.cancel()


async def serve(cfg: WatcherConfig) -> int:
    stop = asyncio.Event()
    app = App(cfg)
    loop = asyncio.get_running_loop()

    main = asyncio.create_task(app.run(stop))

    def past_grace() -> None:
        # The backstop for what the drain could not end: Kafka's transactions keep the
        # stream whole whatever is cut.
        if not main.done():
            log.error("still stopping at the end of the grace period; cancelling",
                      grace_s=cfg.shutdown_grace_s)
            main.cancel()
            # Past the grace period the orchestrator kills the process anyway; exiting first,
            # with 0, says the stop was asked for. Nothing is lost by skipping clean-up: every
            # output and checkpoint is in a Kafka transaction, open ones get aborted.
            loop.call_later(max(0.05, cfg.shutdown_grace_s - app.usable_s - 0.2), os._exit, 0)

    def request_stop(sig: signal.Signals) -> None:
        if app.stop_requested_at is None:
            app.stop_requested_at = time.monotonic()
            log.info("stopping: draining in-flight steps", signal=sig.name,
                     grace_s=cfg.shutdown_grace_s)
            loop.call_later(app.usable_s, past_grace)
            if not app.following:
                # Still starting (creating topics, fencing, reading the registrations, maybe
                # waiting for Kafka or a node): nothing to drain, so nothing to wait for.
                main.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, request_stop, sig)
    try:
        return await main
    except asyncio.CancelledError:
        if app.stop_requested_at is None:
            raise
        return 0


def status_route(statuses: Mapping[str, FollowerStatus],
                 sources: Mapping[str, ChainSource]) -> Callable[[], dict[str, Any]]:
    """The ``/status`` document's producer: follower statuses and each source's endpoints."""
    def head_of(chain: str) -> Callable[[str], int | None]:
        def head(endpoint: str) -> int | None:
            # Every family's adapter sets this gauge; reading it needs no adapter internals.
            value = REGISTRY.get_sample_value("watcher_endpoint_head_height",
                                              {"chain": chain, "endpoint": endpoint})
            return int(value) if value is not None else None
        return head

    endpoints = {cid: functools.partial(endpoints_of, src, head_of(cid))
                 for cid, src in sources.items()}
    return lambda: status_document(statuses, endpoints, time.time())
