"""Live watched-address registrations from the compacted ``payments.address-registrations``.

Record key ``<chain>:<address>``; value ``{"chain": "eth", "address": "0x…",
"label": "…"}`` (schema ``address-registration.v1.json``); a tombstone (null
value) removes the address. The topic is read read_committed, by manual
assignment (no group, no committed offsets); :attr:`RegistrationFollower.caught_up`
is set once the end offsets taken at the start are reached, then the follower
goes on live.

With snapshots (:class:`SnapshotSettings`), a start first loads each chain's
newest complete snapshot (:mod:`watcher.kafka.addrsnapshots`) and reads the
topic only from the lowest offset the snapshots cover; without a usable
snapshot for some chain (none, corrupt, stale, taken over another static
addresses file or another topic), the topic is read from the beginning, as
without snapshots. Replaying records a snapshot already holds is harmless:
each record sets its key's state, so applying a suffix of the topic on top of
a snapshot taken at any offset inside that suffix gives the full read's result.
Snapshots are taken between two batches (the index is exported while no record
is applied; the chain followers keep running in between the export's steps)
and written by a background task while records are applied again.

A snapshot is used only while younger than ``max_age_s``, which must stay
below the registration topic's ``delete.retention.ms`` (default 24 h): the
compactor drops a tombstone only that long after writing it, and a tombstone
dropped after a snapshot was taken would leave the removed address watched.

A record that cannot be applied goes to the dead-letter topic with the reason;
it never stops the loop nor holds back its partition. Because the topic is
re-read at every start, a bad record still present in it is dead-lettered
again at each start (same source_topic/partition/offset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from watcher.config import KafkaConfig
from watcher.core.addresses import AddressIndex
from watcher.core.addrsnapshot import CHUNK_BYTES, Manifest, Restored, SnapshotCorrupt
from watcher.errors import InvalidAddress, SinkError
from watcher.kafka.client import Consumed, ManualConsumer
from watcher.metrics import (
    ADDRESS_SNAPSHOT_RESTORE_SECONDS,
    ADDRESS_SNAPSHOT_RESTORES,
    ADDRESS_SNAPSHOT_WRITES,
    REGISTRATIONS,
    WATCHED_ADDRESSES,
)
from watcher.ports import AddressCodec
from watcher.types import Address, AddressKey

log = logging.getLogger(__name__)

DEAD_LETTER_SOURCE = "address-registrations"
SNAPSHOT_RETRY_S = 60.0
MAX_LABEL_CHARS = 256
MAX_ADDRESS_CHARS = 256
_CHAIN_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class DeadLetters(Protocol):
    """What the follower needs of :class:`watcher.kafka.sink.DeadLetterWriter`."""

    async def write(self, *, source: str, source_topic: str, partition: int, offset: int,
                    key: bytes | None, value: bytes | None, error: str) -> None: ...


_CHAIN_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class SnapshotStore(Protocol):
    """What the follower needs of :class:`watcher.kafka.addrsnapshots.AddressSnapshotStore`.

    Each method raises ``SnapshotCorrupt`` for bad bytes and any other Exception for
    an unavailable store; the follower treats both as "no snapshot".
    """

    async def read_manifest(self, chain: str) -> Manifest | None: ...

    async def read_chunks(self, manifest: Manifest) -> Restored: ...

    async def write(self, chain: str, key_size: int, count: int, key_chunks: list[bytes],
                    labels: Mapping[bytes, str], offsets: Mapping[int, int], base: str | None,
                    previous: Manifest | None) -> Manifest: ...


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    store: SnapshotStore
    base: str | None = None
    """Fingerprint of the static addresses file loaded before the registrations (None: no
    file); a snapshot taken over another file is not used."""
    every_changes: int = 100_000
    """Snapshot a chain once this many registrations changed its index since the last one."""
    every_s: float = 3600.0
    """... or once this long passed with at least one change (or the snapshot is half
    ``max_age_s`` old)."""
    max_age_s: float = 12 * 3600.0
    """Older snapshots are not used (see the module doc: below delete.retention.ms)."""


class RegistrationRejected(Exception):  # a verdict on a record, not a failure of ours
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RegistrationForOtherChain(RegistrationRejected):
    """A well-formed registration for a chain this instance does not follow.

    Deployments that split chains across instances share the topic; each skips the
    others' records (counted as ``other_chain``) instead of dead-lettering them at
    every start.
    """


@dataclass(frozen=True, slots=True)
class Registration:
    chain: str
    address: Address
    key: AddressKey
    label: str | None
    remove: bool
    """True for a tombstone."""


def registration_problem(doc: Any) -> str | None:
    """Why ``doc`` (parsed JSON) breaks ``address-registration.v1.json``, or None.

    The same rules as the schema file, written out for speed (a start may read
    millions of registrations); a test checks that both agree.
    """
    if not isinstance(doc, dict):
        return "value must be a JSON object"
    chain = doc.get("chain")
    if "chain" not in doc:
        return "chain is required"
    if not isinstance(chain, str) or not _CHAIN_RE.fullmatch(chain):
        return "chain must be a string matching [a-z][a-z0-9_-]{0,31}"
    if "address" not in doc:
        return "address is required"
    address = doc["address"]
    if not isinstance(address, str) or not 1 <= len(address) <= MAX_ADDRESS_CHARS:
        return f"address must be a string of 1 to {MAX_ADDRESS_CHARS} characters"
    label = doc.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL_CHARS):
        return f"label must be a string of at most {MAX_LABEL_CHARS} characters"
    return None


def parse_registration(key: bytes | None, value: bytes | None,
                       codecs: Mapping[str, AddressCodec]) -> Registration:
    """Checks one record; raises :class:`RegistrationRejected` with the reason."""
    if key is None:
        raise RegistrationRejected("record has no key (expected <chain>:<address>)")
    try:
        key_text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistrationRejected("key is not UTF-8 text") from None
    key_chain, sep, key_address = key_text.partition(":")
    if not sep or not key_chain or not key_address:
        raise RegistrationRejected("key must be <chain>:<address>")
    codec = codecs.get(key_chain)
    if codec is None:
        if _CHAIN_ID_RE.match(key_chain):
            raise RegistrationForOtherChain(f"unknown chain {key_chain!r} (not followed here)")
        raise RegistrationRejected(f"unknown chain {key_chain[:40]!r} in key: not a chain id")
    try:
        canonical, index_key = codec.parse(key_address)
    except InvalidAddress as exc:
        raise RegistrationRejected(f"invalid address in key: {exc}") from None
    except Exception as exc:
        raise RegistrationRejected(f"address in key cannot be parsed: {exc!r}") from None
    if value is None:
        return Registration(key_chain, canonical, index_key, None, remove=True)

    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise RegistrationRejected(f"value is not JSON: {exc}") from None
    problem = registration_problem(doc)
    if problem is not None:
        raise RegistrationRejected(problem)
    if doc["chain"] != key_chain:
        raise RegistrationRejected(f"key names chain {key_chain!r} but value names {doc['chain']!r}")
    if doc["address"] == key_address:  # the usual case: one parse is enough
        return Registration(key_chain, canonical, index_key,
                            doc.get("label") if isinstance(doc.get("label"), str) else None,
                            remove=False)
    try:
        value_canonical, value_key = codec.parse(doc["address"])
    except InvalidAddress as exc:
        raise RegistrationRejected(f"invalid address: {exc}") from None
    except Exception as exc:
        raise RegistrationRejected(f"address cannot be parsed: {exc!r}") from None
    if value_key != index_key:
        raise RegistrationRejected(
            f"key address {canonical} differs from value address {value_canonical}")
    label = doc.get("label")
    return Registration(key_chain, value_canonical, value_key,
                        label if isinstance(label, str) else None, remove=False)


class RegistrationFollower:
    """Applies registrations to the per-chain address indexes, from the start and then live."""

    def __init__(self, cfg: KafkaConfig, codecs: Mapping[str, AddressCodec],
                 indexes: Mapping[str, AddressIndex], dead_letters: DeadLetters, *,
                 timeout_s: float = 30.0, retry_backoff_s: float = 1.0,
                 dead_letter_attempts: int = 3, snapshots: SnapshotSettings | None = None) -> None:
        self._cfg = cfg
        self._topic = cfg.topics.address_registrations
        self._codecs = {c: codec for c, codec in codecs.items() if c in indexes}
        self._indexes = indexes
        self._dead_letters = dead_letters
        self._timeout_s = timeout_s
        self._backoff_s = retry_backoff_s
        self._dl_attempts = max(1, dead_letter_attempts)
        self.caught_up = asyncio.Event()
        """Set once every record present at the start is applied."""
        self._targets: dict[int, int] | None = None
        self._positions: dict[int, int] = {}
        """Next offset to read per partition, kept across reconnects."""
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        self.rejected = 0
        self._outcomes = {o: REGISTRATIONS.labels(o)
                          for o in ("added", "updated", "removed", "absent", "rejected", "other_chain")}
        self._snap = snapshots
        self._changes: dict[str, int] = dict.fromkeys(indexes, 0)
        """Per chain: records applied since the snapshot it holds (or since the start)."""
        self._manifests: dict[str, Manifest | None] = dict.fromkeys(indexes)
        """Per chain: the snapshot its index was last restored from or written as."""
        self._snapshot_at: dict[str, float] = dict.fromkeys(indexes, time.monotonic())
        self._not_before: dict[str, float] = dict.fromkeys(indexes, 0.0)
        """Per chain: no snapshot before this (monotonic) time, after a failed write."""
        self._writer: asyncio.Task[None] | None = None
        self.restored: dict[str, bool] = dict.fromkeys(indexes, False)
        """Per chain: whether this start restored it from a snapshot."""

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Runs :meth:`run` in a task; await :attr:`caught_up` before following chains."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="registration-follower")

    async def stop(self) -> None:
        for task in (self._task, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._writer = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def run(self) -> None:
        """Reads until cancelled; Kafka failures are retried, never raised."""
        for chain, index in self._indexes.items():
            WATCHED_ADDRESSES.labels(chain).set(len(index))
        while True:
            consumer = ManualConsumer(self._cfg, self._topic, timeout_s=self._timeout_s)
            try:
                await self._follow(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("registration follower failed, reconnecting in %.1fs: %r",
                            self._backoff_s, exc)
                await asyncio.sleep(self._backoff_s)
            finally:
                await consumer.stop()

    async def _follow(self, consumer: ManualConsumer) -> None:
        # Offsets first, then the assignment: asked after it, each offsets request would
        # wait behind the consumer's open fetch (up to 0.5 s each, at every start).
        # The snapshot manifests are read while the consumer connects and asks its offsets,
        # not after (independent reads of another topic). A manifest read first is at most
        # as new as the end offsets asked after it, so it never looks beyond their end.
        manifests: dict[str, asyncio.Future[Manifest | None]] = {}
        if self._targets is None and self._snap is not None:
            store = self._snap.store
            manifests = {chain: asyncio.ensure_future(store.read_manifest(chain))
                         for chain in self._indexes}
        try:
            partitions = await consumer.start(assign=False)
            if self._targets is None:
                beginning = await consumer.beginning_offsets()
                targets = await consumer.end_offsets()
                start = dict(beginning)
                if self._snap is not None:
                    start = await self._restore(partitions, beginning, targets, manifests)
                self._targets = targets
                self._positions = {p: max(beginning[p], start.get(p, 0)) for p in partitions}
                log.info("reading address registrations from %s up to %s", self._positions,
                         self._targets)
        finally:
            for reading in manifests.values():
                reading.cancel()  # done ones stay as they are
            for reading in manifests.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reading  # a failure was judged by _restore_chain, or is moot now
        consumer.assign()
        for p in partitions:
            if p in self._positions:
                consumer.seek(p, self._positions[p])
            else:  # a partition added since the start
                self._positions[p] = 0
                consumer.seek(p, 0)
        await self._check_caught_up(consumer)
        while True:
            records = await consumer.fetch(timeout_ms=500, max_records=10_000)
            touched: set[str] = set()
            for rec in records:
                chain = await self.handle(rec)
                if chain is not None:
                    touched.add(chain)
                self._positions[rec.partition] = rec.offset + 1
            for chain in touched:
                WATCHED_ADDRESSES.labels(chain).set(len(self._indexes[chain]))
            if not self.caught_up.is_set():
                await self._check_caught_up(consumer)
            if self.caught_up.is_set() and self._snap is not None:
                await self._maybe_snapshot()

    async def _check_caught_up(self, consumer: ManualConsumer) -> None:
        assert self._targets is not None
        for p, target in self._targets.items():
            position = await consumer.position(p)
            # Transaction markers and aborted records take offsets but are not returned:
            # the consumer position, not the last record, tells how far the read got.
            self._positions[p] = max(self._positions.get(p, 0), position)
            if position < target:
                return
        if not self.caught_up.is_set():
            log.info("address registrations caught up: %d applied, %d rejected",
                     self.applied, self.rejected)
            self.caught_up.set()

    # ------------------------------------------------------------ records

    async def handle(self, rec: Consumed) -> str | None:
        """Applies one record; returns the chain whose index changed, if any."""
        try:
            reg = parse_registration(rec.key, rec.value, self._codecs)
        except RegistrationForOtherChain:
            self._outcomes["other_chain"].inc()
            return None
        except RegistrationRejected as exc:
            self.rejected += 1
            self._outcomes["rejected"].inc()
            await self._dead_letter(rec, exc.reason)
            return None
        index = self._indexes[reg.chain]
        try:
            if reg.remove:
                outcome = "removed" if index.remove(reg.key) else "absent"
            else:
                outcome = "added" if index.add(reg.key, reg.label) else "updated"
        except (ValueError, TypeError) as exc:  # a codec whose key does not fit the index
            self.rejected += 1
            self._outcomes["rejected"].inc()
            await self._dead_letter(rec, f"address cannot be indexed: {exc}")
            return None
        self.applied += 1
        self._changes[reg.chain] += 1
        self._outcomes[outcome].inc()
        return reg.chain

    # ------------------------------------------------------------ snapshots

    async def _restore(self, partitions: list[int], beginning: Mapping[int, int],
                       targets: Mapping[int, int],
                       manifests: Mapping[str, Awaitable[Manifest | None]]) -> dict[int, int]:
        """Loads each chain's snapshot; returns where the read must start per partition.
        ``manifests``: each chain's manifest, already being read."""
        assert self._snap is not None
        used: list[Manifest | None] = []
        for chain, index in self._indexes.items():
            started = time.perf_counter()
            manifest, outcome = await self._restore_chain(chain, index, partitions, targets,
                                                          manifests[chain])
            ADDRESS_SNAPSHOT_RESTORES.labels(chain, outcome).inc()
            ADDRESS_SNAPSHOT_RESTORE_SECONDS.labels(chain).set(time.perf_counter() - started)
            used.append(manifest)
            if manifest is not None:
                self.restored[chain] = True
                self._manifests[chain] = manifest
                age_s = max(0.0, time.time() - manifest.created_ms / 1000)
                self._snapshot_at[chain] = time.monotonic() - age_s
                WATCHED_ADDRESSES.labels(chain).set(len(index))
                log.info("address index of %s restored from snapshot %s: %d keys in %.2fs, "
                         "covering %s", chain, manifest.snapshot_id, len(index),
                         time.perf_counter() - started, dict(manifest.offsets))
        start: dict[int, int] = {}
        for p in partitions:
            covered = [beginning[p] if m is None else m.offsets.get(p, beginning[p]) for m in used]
            start[p] = min(covered) if covered else beginning[p]
        return start

    async def _restore_chain(self, chain: str, index: AddressIndex, partitions: list[int],
                             targets: Mapping[int, int], reading: Awaitable[Manifest | None]
                             ) -> tuple[Manifest | None, str]:
        assert self._snap is not None
        try:
            manifest = await reading
            if manifest is None:
                log.info("no address snapshot for %s: reading all its registrations", chain)
                return None, "missing"
            problem = self._unusable(manifest, index, partitions, targets)
            if problem is not None:
                log.warning("address snapshot %s of %s not used (%s): reading all registrations",
                            manifest.snapshot_id, chain, problem)
                return None, "stale" if problem.startswith("older") else "mismatch"
            restored = await self._snap.store.read_chunks(manifest)
            index.load_packed(restored.keys, restored.labels)
        except asyncio.CancelledError:
            raise
        except (SnapshotCorrupt, ValueError, TypeError) as exc:
            log.warning("address snapshot of %s is corrupt (%s): reading all registrations",
                      chain, exc)
            return None, "corrupt"
        except Exception as exc:
            log.warning("address snapshot of %s unavailable (%r): reading all registrations",
                        chain, exc)
            return None, "unavailable"
        return manifest, "restored"

    def _unusable(self, m: Manifest, index: AddressIndex, partitions: list[int],
                  targets: Mapping[int, int]) -> str | None:
        assert self._snap is not None
        age_s = time.time() - m.created_ms / 1000
        if age_s > self._snap.max_age_s:
            return f"older than max_age_s {self._snap.max_age_s:.0f}: taken {age_s:.0f}s ago"
        if m.key_size != index.key_size:
            return f"key size {m.key_size}, the index has {index.key_size}"
        if m.base != self._snap.base:
            return "it was taken over another static addresses file"
        for p, offset in m.offsets.items():
            if p not in partitions:
                return f"partition {p} of the registrations topic no longer exists"
            if offset > targets.get(p, 0):
                return (f"covers offset {offset} of partition {p}, beyond its end "
                        f"{targets.get(p, 0)}: the topic was recreated")
        return None

    def _due(self, chain: str, now: float) -> bool:
        assert self._snap is not None
        if now < self._not_before[chain]:
            return False
        changes = self._changes[chain]
        if changes >= self._snap.every_changes:
            return True
        if now - self._snapshot_at[chain] < self._snap.every_s:
            return False
        return changes > 0 or now - self._snapshot_at[chain] >= self._snap.max_age_s / 2

    async def _maybe_snapshot(self) -> None:
        if self._writer is not None and not self._writer.done():
            return  # one snapshot at a time; the next check comes after the next batch
        now = time.monotonic()
        due = [c for c in self._indexes if self._due(c, now)]
        if not due:
            return
        assert self._snap is not None
        offsets = dict(self._positions)
        exports: list[tuple[str, int, list[bytes], dict[bytes, str], int]] = []
        for chain in due:
            index = self._indexes[chain]
            chunks: list[bytes] = []
            # The index is not written while this runs (records are applied by this task
            # only); yielding between chunks keeps the chain followers going.
            for chunk in index.packed_chunks(CHUNK_BYTES // index.key_size):
                chunks.append(chunk)
                await asyncio.sleep(0)
            exports.append((chain, len(index), chunks, index.labels(), self._changes[chain]))
            self._snapshot_at[chain] = now
        self._writer = asyncio.create_task(self._write(exports, offsets),
                                           name="address-snapshot-writer")

    async def _write(self, exports: list[tuple[str, int, list[bytes], dict[bytes, str], int]],
                     offsets: dict[int, int]) -> None:
        assert self._snap is not None
        for chain, count, chunks, labels, changes in exports:
            started = time.perf_counter()
            try:
                manifest = await self._snap.store.write(
                    chain, self._indexes[chain].key_size, count, chunks, labels, offsets,
                    self._snap.base, self._manifests[chain])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                ADDRESS_SNAPSHOT_WRITES.labels(chain, "failed").inc()
                # Exporting millions of keys costs seconds: not again after every batch.
                self._not_before[chain] = time.monotonic() + SNAPSHOT_RETRY_S
                log.warning("address snapshot of %s not written (retried in %.0fs): %s", chain,
                            SNAPSHOT_RETRY_S, exc)
                continue
            self._manifests[chain] = manifest
            self._changes[chain] -= changes
            ADDRESS_SNAPSHOT_WRITES.labels(chain, "written").inc()
            log.info("address snapshot %s of %s written: %d keys, %d chunks in %.2fs, covering %s",
                     manifest.snapshot_id, chain, count, len(manifest.chunks),
                     time.perf_counter() - started, offsets)

    async def snapshot_now(self) -> None:
        """Takes and writes a snapshot of every chain now (tests, benchmarks, shutdown)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
        if self._snap is None:
            return
        for chain in self._indexes:
            self._changes[chain] = max(self._changes[chain], self._snap.every_changes)
        await self._maybe_snapshot()
        if self._writer is not None:
            await self._writer

    async def _dead_letter(self, rec: Consumed, reason: str) -> None:
        for attempt in range(1, self._dl_attempts + 1):
            try:
                await self._dead_letters.write(
                    source=DEAD_LETTER_SOURCE, source_topic=rec.topic, partition=rec.partition,
                    offset=rec.offset, key=rec.key, value=rec.value, error=reason)
                return
            except SinkError:
                if attempt == self._dl_attempts:
                    log.exception("dropping registration %s[%d]@%d (%s): dead letter not written",
                                  rec.topic, rec.partition, rec.offset, reason)
                    return
                await asyncio.sleep(self._backoff_s * attempt)
