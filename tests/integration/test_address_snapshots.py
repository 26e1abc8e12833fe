"""Address-index snapshots on a real broker: a start from a snapshot plus the later
registrations equals a full re-read (removals, label updates and clears, re-additions,
registrations produced while the snapshot is written, two chains of different key widths),
and a corrupt snapshot falls back to the full re-read."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.chainsim import HexCodec
from tests.support.services import KafkaService
from watcher.config import KafkaConfig, Topics
from watcher.core.addresses import AddressIndex
from watcher.core.addrsnapshot import Manifest, manifest_key
from watcher.errors import InvalidAddress
from watcher.kafka.addrsnapshots import MANIFEST_PARTITION, AddressSnapshotStore
from watcher.kafka.client import ensure_topics
from watcher.kafka.registrations import RegistrationFollower, SnapshotSettings
from watcher.metrics import REGISTRY
from watcher.types import Address, AddressKey

pytestmark = pytest.mark.integration

_HEX66 = re.compile(r"0x[0-9a-fA-F]{66}")


class Hex33Codec:
    """A 33-byte key (type byte + 32-byte witness program), as the UTXO family will use."""

    def parse(self, text: str) -> tuple[Address, AddressKey]:
        if not isinstance(text, str) or not _HEX66.fullmatch(text):
            raise InvalidAddress("expected 0x followed by 66 hex digits")
        return Address(text.lower()), AddressKey(bytes.fromhex(text[2:]))


CODECS: dict[str, Any] = {"eth": HexCodec(), "utxo": Hex33Codec()}
WIDTH = {"eth": 20, "utxo": 33}


class Dead:
    async def write(self, **_: Any) -> None:
        return None


def make_cfg(bootstrap: str) -> KafkaConfig:
    suffix = uuid.uuid4().hex[:10]
    topics = Topics(**{f: f"snap.{f}.{suffix}" for f in Topics.__dataclass_fields__})
    return KafkaConfig(bootstrap_servers=bootstrap, topics=topics, transactional_id_prefix="t",
                       client_id="t", security_protocol="PLAINTEXT", sasl_mechanism=None,
                       sasl_username=None, sasl_password=None, ssl_cafile=None,
                       transaction_timeout_ms=60_000)


@pytest.fixture
async def cfg(kafka: KafkaService) -> AsyncIterator[KafkaConfig]:
    c = make_cfg(kafka.bootstrap_servers)
    await ensure_topics(c)
    yield c


def addr(chain: str, n: int) -> str:
    return "0x" + n.to_bytes(WIDTH[chain], "big").hex()


def record(chain: str, n: int, label: str | None = None, remove: bool = False,
           ) -> tuple[bytes, bytes | None]:
    key = f"{chain}:{addr(chain, n)}".encode()
    if remove:
        return key, None
    doc: dict[str, Any] = {"chain": chain, "address": addr(chain, n)}
    if label is not None:
        doc["label"] = label
    return key, orjson.dumps(doc)


async def produce(cfg: KafkaConfig, items: list[tuple[bytes, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers, enable_idempotence=True,
                                acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(cfg.topics.address_registrations, value=v, key=k)
                   for k, v in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def indexes() -> dict[str, AddressIndex]:
    return {c: AddressIndex(w) for c, w in WIDTH.items()}


def content(index: AddressIndex) -> dict[bytes, str | None]:
    return {k: index.label(k) for k in index}


def restores(chain: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("watcher_address_snapshot_restores_total",
                                     {"chain": chain, "outcome": outcome}) or 0.0


async def started(cfg: KafkaConfig, ix: dict[str, AddressIndex],
                  snapshots: SnapshotSettings | None) -> RegistrationFollower:
    follower = RegistrationFollower(cfg, CODECS, ix, Dead(), timeout_s=15, snapshots=snapshots)
    await follower.start()
    async with asyncio.timeout(60):
        await follower.caught_up.wait()
    return follower


async def settle(follower: RegistrationFollower, cfg: KafkaConfig) -> None:
    """Waits until the follower has applied everything in the topic now."""
    from watcher.kafka.client import ManualConsumer

    consumer = ManualConsumer(cfg, cfg.topics.address_registrations, timeout_s=10)
    await consumer.start()
    try:
        ends = await consumer.end_offsets()
    finally:
        await consumer.stop()
    async with asyncio.timeout(30):
        for _ in range(100_000):  # polling: the follower has no per-offset event
            if all(follower._positions.get(p, 0) >= e for p, e in ends.items()):
                return
            await asyncio.sleep(0.05)


async def full_read(cfg: KafkaConfig) -> dict[str, dict[bytes, str | None]]:
    ix = indexes()
    follower = await started(cfg, ix, None)
    await follower.stop()
    return {c: content(i) for c, i in ix.items()}


async def test_restore_plus_tail_equals_full_reread(cfg: KafkaConfig) -> None:
    rng = random.Random(6)
    store = AddressSnapshotStore(cfg, timeout_s=30)
    settings = SnapshotSettings(store, every_changes=10**9)
    first: list[tuple[bytes, bytes | None]] = []
    for chain in WIDTH:
        first += [record(chain, n, f"c-{n}" if n % 3 == 0 else None) for n in range(1, 3001)]
    await produce(cfg, first)

    writer_ix = indexes()
    a = await started(cfg, writer_ix, settings)
    assert not any(a.restored.values()), "nothing to restore from yet"
    # Registrations that arrive while the snapshot is exported and written.
    during: list[tuple[bytes, bytes | None]] = []
    for chain in WIDTH:
        during += [record(chain, n, remove=True) for n in rng.sample(range(1, 3001), 400)]
        during += [record(chain, n, "relabelled") for n in rng.sample(range(1, 3001), 300)]
        during += [record(chain, n) for n in range(0, 3000, 9)]  # clears labels of n % 9 == 0
        during += [record(chain, n, "new") for n in range(5000, 5300)]
    snap = asyncio.create_task(a.snapshot_now())
    await produce(cfg, during)
    await snap
    await settle(a, cfg)
    await a.stop()

    later: list[tuple[bytes, bytes | None]] = []
    for chain in WIDTH:
        later += [record(chain, n, remove=True) for n in range(5000, 5100)]
        later += [record(chain, n, "back") for n in rng.sample(range(1, 3001), 200)]
        later += [record(chain, n, remove=True) for n in range(7000, 7010)]  # never registered
    await produce(cfg, later)

    expected = await full_read(cfg)
    before = {c: restores(c, "restored") for c in WIDTH}
    restored_ix = indexes()
    b = await started(cfg, restored_ix, settings)
    await b.stop()
    assert b.restored == {"eth": True, "utxo": True}
    assert {c: restores(c, "restored") - before[c] for c in WIDTH} == {"eth": 1, "utxo": 1}
    for chain in WIDTH:
        got = content(restored_ix[chain])
        assert got == expected[chain], f"{chain}: restored differs from the full re-read"
        # Facts pinned independently of both reads:
        assert bytes.fromhex(addr(chain, 5000)[2:]) not in got
        assert got[bytes.fromhex(addr(chain, 5200)[2:])] == "new"
        assert bytes.fromhex(addr(chain, 7001)[2:]) not in got
    assert any(v == "back" for v in expected["eth"].values())

    # The same snapshot with one chunk digest altered: never used, full re-read instead.
    manifest = await store.read_manifest("eth")
    assert manifest is not None
    raw = orjson.loads(manifest.to_bytes())
    raw["chunks"][0][4] = "0" * 32
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(cfg.topics.address_snapshots, value=orjson.dumps(raw),
                                     key=manifest_key("eth"), partition=MANIFEST_PARTITION)
    finally:
        await producer.stop()
    Manifest.from_bytes(orjson.dumps(raw))  # well-formed: only the digest is wrong
    corrupt_before = restores("eth", "corrupt")
    fallback_ix = indexes()
    c = await started(cfg, fallback_ix, settings)
    await c.stop()
    assert c.restored == {"eth": False, "utxo": True}
    assert restores("eth", "corrupt") == corrupt_before + 1
    assert {ch: content(i) for ch, i in fallback_ix.items()} == expected


async def test_snapshot_of_another_addresses_file_is_not_used(cfg: KafkaConfig) -> None:
    store = AddressSnapshotStore(cfg, timeout_s=30)
    await produce(cfg, [record("eth", n) for n in range(1, 50)])
    a = await started(cfg, indexes(), SnapshotSettings(store, base="file-v1"))
    await a.snapshot_now()
    await a.stop()
    mismatch = restores("eth", "mismatch")
    ix = indexes()
    b = await started(cfg, ix, SnapshotSettings(store, base="file-v2"))
    await b.stop()
    assert b.restored["eth"] is False and restores("eth", "mismatch") == mismatch + 1
    assert len(ix["eth"]) == 49
