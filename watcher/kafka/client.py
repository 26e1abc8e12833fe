"""A thin typed layer over aiokafka (which ships no type information).

Everything the watcher needs from Kafka goes through here: connection settings
built once from :class:`~watcher.config.KafkaConfig`, topic creation and
checks, and a manually assigned consumer (no group, no committed offsets)
yielding :class:`Consumed` records. The SASL password is passed to aiokafka
and to nothing else: :func:`describe` is what may be logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, for_code
from aiokafka.helpers import create_ssl_context

from watcher.config import KafkaConfig, Topics
from watcher.errors import ConfigError, ErrorKind, SinkError

log = logging.getLogger(__name__)

SASL_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})

MAX_CHECKPOINT_BYTES = 16 * 1024 * 1024
"""The largest checkpoint (state snapshot) value the sink accepts."""
MAX_MESSAGE_BYTES = MAX_CHECKPOINT_BYTES + 256 * 1024
"""Producer ``max_request_size``, checkpoint topic ``max.message.bytes`` and consumer fetch size:
a snapshot of :data:`MAX_CHECKPOINT_BYTES` plus its key, headers and batch framing."""

SHORT_READ_FETCH_WAIT_MS = 20
"""``fetch_max_wait_ms`` of a short-lived read (a checkpoint, a snapshot's chunks): the wait
of its last, empty fetch, paid once per read instead of aiokafka's default 500 ms."""

CHECKPOINT_TOPIC_CONFIGS: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "max.message.bytes": str(MAX_MESSAGE_BYTES),
    # Small segments and an eager cleaner keep the topic near one record per key, so reading
    # it stays cheap even when snapshots are large and frequent.
    "segment.bytes": str(64 * 1024 * 1024),
    "segment.ms": str(10 * 60 * 1000),
    "min.cleanable.dirty.ratio": "0.1",
}
REGISTRATION_TOPIC_CONFIGS: Mapping[str, str] = {"cleanup.policy": "compact"}

CHECKPOINT_PARTITION = 0
"""Checkpoints are written to and read from this partition only, whatever the topic's
partition count: a later change of that count can never hide a checkpoint."""


def checkpoint_topic(topics: Topics, chain: str) -> str:
    """The chain's own checkpoint topic, ``<kafka.topics.checkpoints>.<chain id>``.

    One topic per chain, so that no chain's read of its checkpoint waits on
    another chain's open transaction (a read_committed read stops at the last
    stable offset of the partition, which any open transaction on it holds
    back). Chain ids (``[a-z][a-z0-9_-]{0,31}``) are valid topic name parts.

    Migration from the one-topic layout of earlier versions (every chain on
    partition 0 of ``kafka.topics.checkpoints``): nothing to do by hand. A
    chain that finds no checkpoint in its own topic reads the old topic once
    (see :meth:`watcher.kafka.sink.KafkaTransactionalSink.load_checkpoint`); its
    first commit then lands in its own topic, which is read from then on. The
    old topic can be deleted once every chain has committed once.
    """
    return f"{topics.checkpoints}.{chain}"

_ERR_TOPIC_ALREADY_EXISTS = 36


def connection_kwargs(cfg: KafkaConfig) -> dict[str, Any]:
    """Keyword arguments shared by aiokafka's producer, consumer and admin client.

    Holds the SASL password: never log the result (log :func:`describe` instead).
    Raises :class:`ConfigError` for an incomplete security setup.
    """
    protocol = cfg.security_protocol.upper()
    kwargs: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "security_protocol": protocol,
    }
    if protocol in {"SSL", "SASL_SSL"}:
        kwargs["ssl_context"] = ssl_context(cfg)
    elif cfg.ssl_cafile is not None:
        raise ConfigError("kafka.ssl_cafile", f"given but security_protocol is {protocol}")
    if protocol.startswith("SASL"):
        mechanism = (cfg.sasl_mechanism or "").upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError("kafka.sasl_mechanism",
                              f"must be one of {', '.join(sorted(SASL_MECHANISMS))}")
        if not cfg.sasl_username:
            raise ConfigError("kafka.sasl_username", f"required with SASL {mechanism}")
        if not cfg.sasl_password:
            raise ConfigError("kafka.sasl_password",
                              "required with SASL (set WATCHER__KAFKA__SASL_PASSWORD)")
        kwargs["sasl_mechanism"] = mechanism
        kwargs["sasl_plain_username"] = cfg.sasl_username
        kwargs["sasl_plain_password"] = cfg.sasl_password
    return kwargs


def ssl_context(cfg: KafkaConfig) -> ssl.SSLContext:
    """Verifies the broker against ``ssl_cafile``, or the system's CAs when it is not set."""
    try:
        ctx: ssl.SSLContext = create_ssl_context(cafile=cfg.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("kafka.ssl_cafile", f"cannot load CA file: {exc}") from exc
    return ctx


def describe(cfg: KafkaConfig) -> dict[str, str | None]:
    """What may be logged about the connection: no password, ever."""
    return {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
        "sasl_mechanism": cfg.sasl_mechanism,
        "sasl_username": cfg.sasl_username,
        "sasl_password": None if cfg.sasl_password is None else "***",
        "ssl_cafile": cfg.ssl_cafile,
    }


def is_retriable(exc: BaseException) -> bool:
    """Network trouble, timeouts and retriable broker answers."""
    if isinstance(exc, TimeoutError | ConnectionError | OSError):
        return True
    return isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))


# ---------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    """-1: the broker's ``num.partitions``."""
    configs: Mapping[str, str]
    required_policy: str | None
    """When set, an existing topic must have exactly this ``cleanup.policy``."""
    config_key: str


def topic_specs(topics: Topics, chains: Sequence[str] = ()) -> list[TopicSpec]:
    from watcher.kafka.addrsnapshots import SNAPSHOT_PARTITIONS, SNAPSHOT_TOPIC_CONFIGS

    return [
        TopicSpec(topics.deposits, -1, {}, None, "kafka.topics.deposits"),
        TopicSpec(topics.withdrawals, -1, {}, None, "kafka.topics.withdrawals"),
        # Written by the ledger; created here too so that a runner never waits for it.
        TopicSpec(topics.withdrawal_requests, -1, {}, None, "kafka.topics.withdrawal_requests"),
        TopicSpec(topics.dead_letter, -1, {}, None, "kafka.topics.dead_letter"),
        TopicSpec(topics.address_registrations, -1, REGISTRATION_TOPIC_CONFIGS, "compact",
                  "kafka.topics.address_registrations"),
        # Never written to: its one partition is what the leader election hands out.
        TopicSpec(topics.leadership, 1, {}, None, "kafka.topics.leadership"),
        TopicSpec(topics.address_snapshots, SNAPSHOT_PARTITIONS, SNAPSHOT_TOPIC_CONFIGS,
                  "compact", "kafka.topics.address_snapshots"),
        *(TopicSpec(checkpoint_topic(topics, c), 1, CHECKPOINT_TOPIC_CONFIGS, "compact",
                    "kafka.topics.checkpoints") for c in chains),
    ]


async def ensure_topics(cfg: KafkaConfig, timeout_s: float = 30.0,
                        chains: Sequence[str] = (), extra: Sequence[TopicSpec] = ()) -> list[str]:
    """Creates the missing topics and checks the compacted ones; returns the names created.

    ``chains``: the chain ids whose checkpoint topics (:func:`checkpoint_topic`) are needed.
    ``extra``: more topics a caller owns (a withdrawal runner's settled records).

    Existing topics are left as they are, except that the checkpoint and
    address-registration topics must be ``cleanup.policy=compact`` (a deleting
    policy would one day forget a checkpoint or a watched address): otherwise
    :class:`ConfigError` naming the topic. Broker failures raise :class:`SinkError`.
    """
    specs = [*topic_specs(cfg.topics, chains), *extra]
    admin = AIOKafkaAdminClient(**connection_kwargs(cfg), request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            created: list[str] = []
            if missing:
                default_partitions, replication = await _broker_defaults(admin)
                new = [NewTopic(s.name, s.partitions if s.partitions > 0 else default_partitions,
                                replication, topic_configs=dict(s.configs))
                       for s in missing]
                response = await admin.create_topics(new)
                for topic_error in response.topic_errors:
                    name, code = topic_error[0], topic_error[1]
                    message = topic_error[2] if len(topic_error) > 2 else None
                    if code == 0:
                        created.append(name)
                    elif code != _ERR_TOPIC_ALREADY_EXISTS:
                        err = for_code(code)
                        kind = ErrorKind.RETRIABLE if err.retriable else ErrorKind.FINAL
                        raise SinkError(kind, f"cannot create topic {name}: "
                                              f"{err.__name__} {message or ''}".rstrip())
            # Topics created just now have our settings (and may not be describable yet).
            checked = [s for s in specs
                       if s.required_policy is not None and s.name not in created]
            configs: dict[str, dict[str, str]] = {}
            for attempt in range(20):
                try:
                    configs = await _topic_configs(admin, [s.name for s in checked])
                    break
                except SinkError as exc:
                    # A topic another instance created a moment ago may be unknown to the
                    # broker answering for a short while.
                    if exc.kind is not ErrorKind.RETRIABLE or attempt == 19 or not checked:
                        raise
                    await asyncio.sleep(0.25)
            for spec in checked:
                policy = configs.get(spec.name, {}).get("cleanup.policy")
                if policy != spec.required_policy:
                    raise ConfigError(
                        spec.config_key,
                        f"topic {spec.name} exists with cleanup.policy={policy}; "
                        f"it must be {spec.required_policy} (alter it or configure another topic)")
            for chain in chains:
                name = checkpoint_topic(cfg.topics, chain)
                max_bytes = configs.get(name, {}).get("max.message.bytes")
                if max_bytes is not None and max_bytes.isdigit() \
                        and int(max_bytes) < MAX_MESSAGE_BYTES:
                    log.warning("topic %s has max.message.bytes=%s: checkpoints larger than that "
                                "cannot be committed (set it to %d)", name, max_bytes,
                                MAX_MESSAGE_BYTES)
            if created:
                log.info("created kafka topics %s", ", ".join(created))
            return created
    except (ConfigError, SinkError):
        raise
    except Exception as exc:
        kind = ErrorKind.RETRIABLE if is_retriable(exc) else ErrorKind.FINAL
        raise SinkError(kind, f"ensuring topics failed: {exc!r}") from exc
    finally:
        await admin.close()


async def topic_exists(cfg: KafkaConfig, topic: str, timeout_s: float = 30.0, *,
                       client: Any | None = None) -> bool:
    """Whether ``topic`` exists; raises SinkError(RETRIABLE) when Kafka cannot be asked.

    ``client``: an aiokafka client already connected (a producer's ``client``), asked over
    its connection: one metadata round trip, where a new admin client costs a bootstrap and
    a connection first (0.1-0.3 s measured on a busy broker, on a fresh start's critical
    path)."""
    if client is not None:
        try:
            async with asyncio.timeout(timeout_s):
                cluster = await client.fetch_all_metadata()
        except Exception as exc:
            raise SinkError(ErrorKind.RETRIABLE, f"listing topics failed: {exc!r}") from exc
        return topic in cluster.topics(exclude_internal_topics=False)
    admin = AIOKafkaAdminClient(**connection_kwargs(cfg), request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            return topic in set(await admin.list_topics())
    except Exception as exc:
        raise SinkError(ErrorKind.RETRIABLE, f"listing topics failed: {exc!r}") from exc
    finally:
        await admin.close()


async def _broker_defaults(admin: Any) -> tuple[int, int]:
    """``num.partitions`` and ``default.replication.factor`` of a broker: what a topic created
    without them gets (aiokafka's CreateTopics version cannot leave them to the broker)."""
    cluster = await admin.describe_cluster()
    brokers = sorted(int(b["node_id"]) for b in cluster.get("brokers", []))
    if not brokers:
        raise SinkError(ErrorKind.RETRIABLE, "the cluster reported no broker")
    wanted = {"num.partitions": None, "default.replication.factor": None}
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, str(brokers[0]), wanted)])
    values: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:
                values[str(entry[0])] = str(entry[1])
    try:
        partitions = int(values.get("num.partitions", "1"))
        replication = int(values.get("default.replication.factor", "1"))
    except ValueError as exc:
        raise SinkError(ErrorKind.FINAL, f"unreadable broker defaults {values}") from exc
    return max(partitions, 1), max(replication, 1)


async def _topic_configs(admin: Any, names: Sequence[str]) -> dict[str, dict[str, str]]:
    """``cleanup.policy`` and ``max.message.bytes`` of each topic."""
    wanted = {"cleanup.policy": None, "max.message.bytes": None}
    resources = [ConfigResource(ConfigResourceType.TOPIC, name, dict(wanted)) for name in names]
    responses = await admin.describe_configs(resources)
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            code, message, _rtype, name, entries = resource[:5]
            if code != 0:
                err = for_code(code)
                raise SinkError(ErrorKind.RETRIABLE if err.retriable else ErrorKind.FINAL,
                                f"cannot describe topic {name}: {err.__name__} {message or ''}")
            found[name] = {str(entry[0]): str(entry[1]) for entry in entries
                           if entry[1] is not None}
    return found


# ---------------------------------------------------------------- consumer


@dataclass(frozen=True, slots=True)
class Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]

    def header(self, name: str) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class ManualConsumer:
    """Reads one topic by manual partition assignment: no group, no committed offsets.

    ``read_committed`` by default, so offsets such as :meth:`end_offsets` are
    last stable offsets and aborted or open transactions are never returned.

    Offsets are cheapest asked before the partitions are assigned (``start(...,
    assign=False)``, then :meth:`assign`): once assigned, the consumer keeps a fetch
    open on the broker for up to ``fetch_max_wait_ms`` while there is nothing new, and
    a broker answers one connection's requests in order, so an offsets request then
    waits behind that fetch. A short-lived reader (a checkpoint, a snapshot) may take
    a short ``fetch_max_wait_ms``; a long-lived one keeps the default, which is what
    an idle consumer costs in CPU (one fetch per wait).
    """

    def __init__(self, cfg: KafkaConfig, topic: str, *, read_committed: bool = True,
                 max_fetch_bytes: int = MAX_MESSAGE_BYTES, timeout_s: float = 30.0,
                 fetch_max_wait_ms: int = 500) -> None:
        self.topic = topic
        self._timeout_s = timeout_s
        self._consumer: Any = AIOKafkaConsumer(
            **connection_kwargs(cfg),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            max_partition_fetch_bytes=max_fetch_bytes,
            fetch_max_bytes=max(max_fetch_bytes, 50 * 1024 * 1024),
            fetch_max_wait_ms=fetch_max_wait_ms,
            request_timeout_ms=int(timeout_s * 1000),
        )
        self._partitions: list[int] = []
        self._started = False
        self._assigned = False

    @property
    def partitions(self) -> list[int]:
        return list(self._partitions)

    def _tp(self, partition: int) -> Any:
        return TopicPartition(self.topic, partition)

    async def start(self, partitions: Sequence[int] | None = None, *,
                    assign: bool = True) -> list[int]:
        """Connects and assigns ``partitions`` (all of the topic's when None); returns them.
        ``assign=False`` leaves the assignment to :meth:`assign` (ask offsets first).

        Raises :class:`SinkError` (RETRIABLE) when the topic does not exist or Kafka cannot
        be reached in time.
        """
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._consumer.start()
                self._started = True
                if partitions is None:
                    # A fresh metadata answer: the consumer's own cache may predate the topic.
                    cluster = await self._consumer._client.fetch_all_metadata()
                    found = cluster.partitions_for_topic(self.topic)
                    if not found:
                        raise SinkError(ErrorKind.RETRIABLE, f"topic {self.topic} does not exist")
                    partitions = sorted(int(p) for p in found)
                # The consumer's own metadata cache knows no topic yet (that answer was a
                # separate one): its first offsets request would find no leader, sleep
                # retry_backoff_ms (100 ms) and ask again. Tracking the topic now costs one
                # metadata round trip instead; the topic is known to exist, or was named by
                # the caller (assigning it would ask for the same metadata).
                await self._consumer._client.add_topic(self.topic)
                self._partitions = list(partitions)
                if assign:
                    self.assign()
        except SinkError:
            await self.stop()
            raise
        except Exception as exc:
            await self.stop()
            raise SinkError(ErrorKind.RETRIABLE,
                            f"cannot start consumer of {self.topic}: {exc!r}") from exc
        return self.partitions

    def assign(self) -> None:
        """Assigns the partitions :meth:`start` found (once; fetching starts now)."""
        if not self._assigned:
            self._consumer.assign([self._tp(p) for p in self._partitions])
            self._assigned = True

    async def beginning_offsets(self) -> dict[int, int]:
        offsets = await self._call(self._consumer.beginning_offsets(
            [self._tp(p) for p in self._partitions]))
        return {int(tp.partition): int(o) for tp, o in offsets.items()}

    async def end_offsets(self) -> dict[int, int]:
        """The last stable offset of each partition (read_committed) or its high watermark."""
        offsets = await self._call(self._consumer.end_offsets(
            [self._tp(p) for p in self._partitions]))
        return {int(tp.partition): int(o) for tp, o in offsets.items()}

    def seek(self, partition: int, offset: int) -> None:
        self._consumer.seek(self._tp(partition), offset)

    async def seek_to_beginning(self) -> None:
        await self._call(self._consumer.seek_to_beginning(*[self._tp(p) for p in self._partitions]))

    async def position(self, partition: int) -> int:
        return int(await self._call(self._consumer.position(self._tp(partition))))

    async def behind(self) -> frozenset[int]:
        """Partitions known to hold records not fetched yet: the position is below the last
        stable offset of the latest fetch answer, or no fetch answered for it yet. No
        broker round trip (the offsets come with every fetch answer)."""
        out: set[int] = set()
        for p in self._partitions:
            tp = self._tp(p)
            lso = self._consumer.last_stable_offset(tp)
            if lso is None or lso < 0:
                lso = self._consumer.highwater(tp)
            if lso is None or int(await self.position(p)) < int(lso):
                out.add(p)
        return frozenset(out)

    async def fetch(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]:
        """Records from any assigned partition, in offset order per partition; [] on timeout."""
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Consumed] = []
        append = out.append
        for tp, records in batches.items():
            topic, partition = tp.topic, tp.partition
            for r in records:
                headers = r.headers
                append(Consumed(topic, partition, r.offset, r.key, r.value, r.timestamp,
                                tuple((str(k), bytes(v)) for k, v in headers) if headers else ()))
        return out

    async def read_range(self, partition: int, start: int, end: int,
                         timeout_s: float | None = None) -> list[Consumed]:
        """Every visible record of ``partition`` with ``start <= offset < end``.

        ``end`` must not exceed the end offset captured earlier. Under
        read_committed, aborted records and transaction markers take offsets but
        are not returned. The consumer must be assigned ``partition`` only.
        """
        out: list[Consumed] = []
        if start >= end:
            return out
        self.seek(partition, start)
        async with asyncio.timeout(timeout_s if timeout_s is not None else self._timeout_s):
            while await self.position(partition) < end:
                for rec in await self.fetch(timeout_ms=200):
                    if rec.partition == partition and start <= rec.offset < end:
                        out.append(rec)
        return out

    async def _call(self, awaitable: Any) -> Any:
        async with asyncio.timeout(self._timeout_s):
            return await awaitable

    async def stop(self) -> None:
        if not self._started:
            # aiokafka warns about an unclosed consumer even when start() failed early.
            try:
                await self._consumer.stop()
            except Exception:  # best effort on a consumer that never ran
                log.debug("stopping an unstarted consumer failed", exc_info=True)
            return
        self._started = False
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._consumer.stop()
        except Exception:  # closing must not raise over the real error
            log.warning("stopping the consumer of %s failed", self.topic, exc_info=True)
