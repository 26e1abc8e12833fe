"""The registrations follower's use of snapshots, table-driven against a fake store: which
snapshot is used, where the read starts, and that every bad case ends in a full re-read of
an index left as it was (never a partial one)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import pytest

from tests.chainsim import HexCodec
from watcher.config import KafkaConfig, Topics
from watcher.core.addresses import AddressIndex
from watcher.core.addrsnapshot import Manifest, Restored, SnapshotCorrupt
from watcher.kafka.registrations import RegistrationFollower, SnapshotSettings
from watcher.metrics import REGISTRY

K1, K2, KF = b"\x01" * 20, b"\x02" * 20, b"\x0f" * 20
NOW_MS = int(time.time() * 1000)
TWO_KEYS = Restored((K1, K2), {K2: "two"})


def manifest(chain: str = "eth", offsets: Mapping[int, int] | None = None, key_size: int = 20,
             base: str | None = None, created_ms: int = NOW_MS) -> Manifest:
    return Manifest(chain, "sid", 0, key_size, 2, 1, dict(offsets or {0: 40, 1: 7}), base,
                    created_ms, ())


class FakeStore:
    def __init__(self, manifests: dict[str, Manifest | Exception | None],
                 chunks: Restored | Exception = TWO_KEYS) -> None:
        self.manifests = manifests
        self.chunks = chunks
        self.written: list[tuple[str, int, dict[int, int]]] = []
        self.fail_writes = False

    async def read_manifest(self, chain: str) -> Manifest | None:
        m = self.manifests.get(chain)
        if isinstance(m, Exception):
            raise m
        return m

    async def read_chunks(self, manifest: Manifest) -> Restored:
        if isinstance(self.chunks, Exception):
            raise self.chunks
        return self.chunks

    async def write(self, chain: str, key_size: int, count: int, key_chunks: list[bytes],
                    labels: Mapping[bytes, str], offsets: Mapping[int, int], base: str | None,
                    previous: Manifest | None) -> Manifest:
        if self.fail_writes:
            raise OSError("broker away")
        self.written.append((chain, count, dict(offsets)))
        return manifest(chain, offsets)


class Dead:
    async def write(self, **_: Any) -> None:
        return None


def follower(store: FakeStore, chains: tuple[str, ...] = ("eth",), **kw: Any,
             ) -> tuple[RegistrationFollower, dict[str, AddressIndex]]:
    indexes = {c: AddressIndex(20) for c in chains}
    for ix in indexes.values():
        ix.add(KF, "from-file")  # what the static file put there before the registrations
    f = RegistrationFollower(KafkaConfig("127.0.0.1:1", Topics(), "t", "t", "PLAINTEXT", None,
                                         None, None, None, 60_000),
                             {c: HexCodec() for c in chains}, indexes, Dead(),
                             snapshots=SnapshotSettings(store, **kw))
    return f, indexes


def outcome(chain: str, name: str) -> float:
    return REGISTRY.get_sample_value("watcher_address_snapshot_restores_total",
                                     {"chain": chain, "outcome": name}) or 0.0


BEGIN = {0: 0, 1: 0}
ENDS = {0: 50, 1: 9}

CASES: list[tuple[str, Any, Any, dict[str, Any], str]] = [
    ("restored", manifest(), None, {}, "restored"),
    ("none yet", None, None, {}, "missing"),
    ("too old", manifest(created_ms=NOW_MS - 13 * 3600_000), None, {}, "stale"),
    ("other key width", manifest(key_size=33), None, {}, "mismatch"),
    ("other static file", manifest(base="v1"), None, {"base": "v2"}, "mismatch"),
    ("topic recreated", manifest(offsets={0: 51}), None, {}, "mismatch"),
    ("partition gone", manifest(offsets={5: 1}), None, {}, "mismatch"),
    ("bad manifest", SnapshotCorrupt("manifest is not JSON"), None, {}, "corrupt"),
    ("bad chunk", manifest(), SnapshotCorrupt("chunk k0 does not match its digest"), {}, "corrupt"),
    ("label of a key not there", manifest(), Restored((K1,), {K2: "x"}), {}, "corrupt"),
    ("kafka away", OSError("no broker"), None, {}, "unavailable"),
]


def manifests_of(f: RegistrationFollower) -> dict[str, Awaitable[Manifest | None]]:
    """Each chain's manifest read, as the follower starts them while its consumer connects."""
    assert f._snap is not None
    return {chain: f._snap.store.read_manifest(chain) for chain in f._indexes}


@pytest.mark.parametrize(("name", "found", "chunks", "settings", "expected"), CASES)
async def test_restore_outcomes(name: str, found: Any, chunks: Any, settings: dict[str, Any],
                                expected: str) -> None:
    store = FakeStore({"eth": found}) if chunks is None else FakeStore({"eth": found}, chunks)
    f, ix = follower(store, **settings)
    before = outcome("eth", expected)
    start = await f._restore([0, 1], BEGIN, ENDS, manifests_of(f))
    assert outcome("eth", expected) == before + 1, name
    if expected == "restored":
        assert start == {0: 40, 1: 7} and f.restored["eth"]
        assert sorted(ix["eth"]) == [K1, K2] and ix["eth"].label(K2) == "two"
    else:
        assert start == BEGIN, "a full re-read from the beginning"
        assert list(ix["eth"]) == [KF] and ix["eth"].label(KF) == "from-file", "left as it was"
        assert not f.restored["eth"]


async def test_start_is_the_lowest_offset_any_chain_needs() -> None:
    store = FakeStore({"eth": manifest("eth", {0: 40, 1: 7}), "arb": manifest("arb", {0: 12}),
                       "op": None})
    f, _ = follower(store, ("eth", "arb"))
    assert await f._restore([0, 1], BEGIN, ENDS, manifests_of(f)) == {0: 12, 1: 0}, \
        "arb's snapshot has no partition 1: read it whole"
    g, _ = follower(store, ("eth", "op"))
    assert await g._restore([0, 1], BEGIN, ENDS, manifests_of(g)) == BEGIN, "op has no snapshot"


async def test_snapshots_are_taken_when_due_and_a_failure_backs_off() -> None:
    store = FakeStore({})
    f, _ = follower(store, every_changes=3)
    f._positions = {0: 5, 1: 2}
    f._changes["eth"] = 2
    await f._maybe_snapshot()
    assert f._writer is None, "not due below every_changes"
    f._changes["eth"] = 3
    await f._maybe_snapshot()
    assert f._writer is not None
    await f._writer
    assert store.written == [("eth", 1, {0: 5, 1: 2})] and f._changes["eth"] == 0
    store.fail_writes = True
    f._changes["eth"] = 5
    await f._maybe_snapshot()
    assert f._writer is not None
    await f._writer
    assert f._changes["eth"] == 5, "still owed"
    writer = f._writer
    await f._maybe_snapshot()
    assert f._writer is writer, "no new export right after a failure"


class GatedStore(FakeStore):
    """Its manifest read opens ``reading``: the gate the fake consumer's start waits on."""

    def __init__(self, manifests: dict[str, Manifest | Exception | None]) -> None:
        super().__init__(manifests)
        self.reading = asyncio.Event()

    async def read_manifest(self, chain: str) -> Manifest | None:
        self.reading.set()
        return await super().read_manifest(chain)


class GatedConsumer:
    """A registrations consumer whose start completes only once a manifest read began, and
    that is at the end of ENDS at once (no record to read)."""

    def __init__(self, store: GatedStore) -> None:
        self.store = store
        self.seeks: dict[int, int] = {}

    async def start(self, assign: bool = True) -> list[int]:
        await self.store.reading.wait()
        return [0, 1]

    async def beginning_offsets(self) -> dict[int, int]:
        return dict(BEGIN)

    async def end_offsets(self) -> dict[int, int]:
        return dict(ENDS)

    def assign(self) -> None:
        pass

    def seek(self, partition: int, offset: int) -> None:
        self.seeks[partition] = offset

    async def position(self, partition: int) -> int:
        return ENDS[partition]

    async def fetch(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Any]:
        await asyncio.sleep(timeout_ms / 1000)
        return []


async def test_the_manifests_are_read_while_the_consumer_starts() -> None:
    # Serial, the consumer's start would wait for a manifest read that never began: the
    # follower would not catch up within the timeout.
    store = GatedStore({"eth": manifest("eth", {0: 40, 1: 7})})
    f, ix = follower(store)
    consumer = GatedConsumer(store)
    task = asyncio.ensure_future(f._follow(consumer))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(5):
            await f.caught_up.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert consumer.seeks == {0: 40, 1: 7}, "the read starts where the snapshot ends"
    assert f.restored["eth"] and sorted(ix["eth"]) == [K1, K2]
