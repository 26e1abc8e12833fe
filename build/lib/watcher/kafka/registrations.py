"""Live watched-address registrations from the compacted ``payments.address-registrations``.

Record key ``<chain>:<address>``; value ``{"chain": "eth", "address": "0x…",
"label": "…"}`` (schema ``address-registration.v1.json``); a tombstone (null
value) removes the address. The topic is read whole at every start, from the
beginning, read_committed, by manual assignment (no group, no committed
offsets); :attr:`RegistrationFollower.caught_up` is set once the end offsets
taken at the start are reached, then the follower goes on live.

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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from watcher.config import KafkaConfig
from watcher.core.addresses import AddressIndex
from watcher.errors import InvalidAddress, SinkError
from watcher.kafka.client import Consumed, ManualConsumer
from watcher.metrics import REGISTRATIONS, WATCHED_ADDRESSES
from watcher.ports import AddressCodec
from watcher.types import Address, AddressKey

log = logging.getLogger(__name__)

DEAD_LETTER_SOURCE = "address-registrations"
MAX_LABEL_CHARS = 256
MAX_ADDRESS_CHARS = 256
_CHAIN_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class DeadLetters(Protocol):
    """What the follower needs of :class:`watcher.kafka.sink.DeadLetterWriter`."""

    async def write(self, *, source: str, source_topic: str, partition: int, offset: int,
                    key: bytes | None, value: bytes | None, error: str) -> None: ...


_CHAIN_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


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
                 dead_letter_attempts: int = 3) -> None:
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

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Runs :meth:`run` in a task; await :attr:`caught_up` before following chains."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name="registration-follower")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

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
        partitions = await consumer.start()
        if self._targets is None:
            await consumer.seek_to_beginning()
            beginning = await consumer.beginning_offsets()
            self._targets = await consumer.end_offsets()
            self._positions = {p: beginning[p] for p in partitions}
            log.info("reading address registrations up to %s", self._targets)
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
        self._outcomes[outcome].inc()
        return reg.chain

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
