"""Address registrations: the schema and its code twin, record checks, and the follower on Kafka.

Tests without a mark run anywhere; the ``integration`` ones need the ``kafka``
fixture (a real broker started by the suite).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chainsim import HexCodec
from tests.support.kafka import read_all
from tests.support.services import KafkaService
from watcher.config import KafkaConfig, Topics
from watcher.core.addresses import AddressIndex
from watcher.errors import ErrorKind, SinkError
from watcher.kafka.client import Consumed, ensure_topics
from watcher.kafka.registrations import (
    RegistrationFollower,
    RegistrationRejected,
    parse_registration,
    registration_problem,
)
from watcher.kafka.sink import DeadLetterWriter, dead_letter_value
from watcher.metrics import REGISTRY
from watcher.ports import AddressCodec

SCHEMAS = Path(__file__).resolve().parents[2] / "watcher" / "schemas"
CODECS: dict[str, AddressCodec] = {"eth": HexCodec()}
A1, A2, A3, A4 = ("0x" + c * 40 for c in "1234")
MIXED = "0x" + "aB" * 20


def k(addr: str) -> bytes:
    return bytes.fromhex(addr[2:])


def reg(addr: str, label: str | None = None, chain: str = "eth") -> bytes:
    doc: dict[str, Any] = {"chain": chain, "address": addr}
    if label is not None:
        doc["label"] = label
    return orjson.dumps(doc)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def schema(name: str) -> jsonschema.Draft202012Validator:
    doc = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc, format_checker=jsonschema.FormatChecker())


REGISTRATION_SCHEMA = schema("address-registration.v1.json")
DEAD_LETTER_SCHEMA = schema("dead-letter.v1.json")

# ---------------------------------------------------------------- schema and code agree

CORPUS: list[Any] = [
    {"chain": "eth", "address": A1},
    {"chain": "eth", "address": A1, "label": "x" * 256},
    {"chain": "eth", "address": A1, "label": "x" * 257},
    {"chain": "eth", "address": A1, "label": "é" * 256},
    {"chain": "eth", "address": A1, "label": None},
    {"chain": "eth", "address": A1, "label": 5},
    {"chain": "eth", "address": A1, "label": ["a"]},
    {"chain": "eth", "address": A1, "extra": {"future": True}},
    {"chain": "eth"},
    {"address": A1},
    {"chain": "ETH", "address": A1},
    {"chain": "1eth", "address": A1},
    {"chain": "e" * 32, "address": A1},
    {"chain": "e" * 33, "address": A1},
    {"chain": "", "address": A1},
    {"chain": 1, "address": A1},
    {"chain": "eth", "address": ""},
    {"chain": "eth", "address": "a" * 256},
    {"chain": "eth", "address": "a" * 257},
    {"chain": "eth", "address": 7},
    {"chain": "eth", "address": None},
    {"chain": None, "address": A1},
    [], "eth", 3, None, True, {},
]


@pytest.mark.parametrize("doc", CORPUS)
def test_code_agrees_with_schema(doc: Any) -> None:
    assert (registration_problem(doc) is None) == REGISTRATION_SCHEMA.is_valid(doc)


_values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=300),
                    st.sampled_from(["eth", "btc", "x" * 256, "y" * 257, "Eth", "e-1_b"]),
                    st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["chain", "address", "label", "other"]), _values))
def test_code_agrees_with_schema_generated(doc: dict[str, Any]) -> None:
    if isinstance(doc.get("chain"), str) and doc["chain"].endswith("\n"):
        return  # Python's re (used by jsonschema) lets "$" match before a final newline
    assert (registration_problem(doc) is None) == REGISTRATION_SCHEMA.is_valid(doc)


# ---------------------------------------------------------------- one record


def test_parse_registration_accepts_and_canonicalises() -> None:
    r = parse_registration(f"eth:{MIXED.lower()}".encode(), reg(MIXED.upper().replace("0X", "0x"),
                                                                  "vip"), CODECS)
    assert (r.chain, r.address, r.key, r.label, r.remove) == ("eth", MIXED.lower(), k(MIXED),
                                                              "vip", False)
    t = parse_registration(f"eth:{A1}".encode(), None, CODECS)
    assert t.remove and t.key == k(A1)


@pytest.mark.parametrize(("key", "value", "reason"), [
    (None, reg(A1), "no key"),
    (b"\xff\xfe", reg(A1), "not UTF-8"),
    (b"eth", reg(A1), "<chain>:<address>"),
    (b"eth:", reg(A1), "<chain>:<address>"),
    (f"btc:{A1}".encode(), reg(A1, chain="btc"), "unknown chain 'btc'"),
    (b"eth:0x12", reg(A1), "invalid address in key"),
    (f"eth:{A1}".encode(), b"{not json", "not JSON"),
    (f"eth:{A1}".encode(), b"\xff", "not JSON"),
    (f"eth:{A1}".encode(), b"[1]", "JSON object"),
    (f"eth:{A1}".encode(), reg(A1, "x" * 257), "label"),
    (f"eth:{A1}".encode(), orjson.dumps({"chain": "eth", "address": A1, "label": 1}), "label"),
    (f"eth:{A1}".encode(), reg(A2), "differs from value address"),
    (f"eth:{A1}".encode(), reg("0xnope"), "invalid address"),
    (f"eth:{A1}".encode(), reg(A1, chain="arb"), "value names 'arb'"),
    (b"eth:0x12", None, "invalid address in key"),
    (f"btc:{A1}".encode(), None, "unknown chain"),
])
def test_parse_registration_rejects(key: bytes | None, value: bytes | None, reason: str) -> None:
    with pytest.raises(RegistrationRejected) as err:
        parse_registration(key, value, CODECS)
    assert reason in err.value.reason


class FakeDeadLetters:
    def __init__(self, fail: int = 0) -> None:
        self.written: list[dict[str, Any]] = []
        self.fail = fail

    async def write(self, *, source: str, source_topic: str, partition: int, offset: int,
                    key: bytes | None, value: bytes | None, error: str) -> None:
        if self.fail:
            self.fail -= 1
            raise SinkError(ErrorKind.RETRIABLE, "broker away")
        self.written.append({"source": source, "offset": offset, "key": key, "error": error})


def rec(offset: int, key: bytes | None, value: bytes | None, topic: str = "regs") -> Consumed:
    return Consumed(topic, 0, offset, key, value, 0, ())


def _cfg(bootstrap: str = "127.0.0.1:1", suffix: str = "") -> KafkaConfig:
    names = {f: f"test.{f}.{suffix}" for f in Topics.__dataclass_fields__} if suffix else {}
    return KafkaConfig(
        bootstrap_servers=bootstrap, topics=Topics(**names), transactional_id_prefix="test",
        client_id="test", security_protocol="PLAINTEXT", sasl_mechanism=None, sasl_username=None,
        sasl_password=None, ssl_cafile=None, transaction_timeout_ms=60_000)


async def test_handle_applies_and_dead_letters_without_blocking() -> None:
    index = AddressIndex(20)
    dls = FakeDeadLetters(fail=1)
    follower = RegistrationFollower(_cfg(), CODECS, {"eth": index}, dls, retry_backoff_s=0.01)
    rejected_before = sample("watcher_address_registrations_total", outcome="rejected")
    assert await follower.handle(rec(0, f"eth:{A1}".encode(), reg(A1, "a"))) == "eth"
    assert await follower.handle(rec(1, f"eth:{A2}".encode(), b"garbage")) is None
    assert await follower.handle(rec(2, f"eth:{A2}".encode(), reg(A2))) == "eth"
    assert await follower.handle(rec(3, f"eth:{A1}".encode(), reg(A1))) == "eth"  # label cleared
    assert await follower.handle(rec(4, f"eth:{A2}".encode(), None)) == "eth"
    assert k(A1) in index and index.label(k(A1)) is None and k(A2) not in index
    assert [(d["offset"], d["source"]) for d in dls.written] == [(1, "address-registrations")]
    assert "not JSON" in dls.written[0]["error"]
    assert sample("watcher_address_registrations_total", outcome="rejected") == rejected_before + 1


async def test_registrations_of_chains_followed_elsewhere_are_skipped_not_dead_lettered() -> None:
    index = AddressIndex(20)
    dls = FakeDeadLetters()
    follower = RegistrationFollower(_cfg(), CODECS, {"eth": index}, dls, retry_backoff_s=0.01)
    skipped_before = sample("watcher_address_registrations_total", outcome="other_chain")
    assert await follower.handle(rec(0, f"btc:{A1}".encode(), reg(A1, chain="btc"))) is None
    assert await follower.handle(rec(1, b"BAD CHAIN:x", reg(A1))) is None
    assert sample("watcher_address_registrations_total", outcome="other_chain") == skipped_before + 1
    assert [d["offset"] for d in dls.written] == [1]
    assert len(index) == 0


async def test_dead_letter_given_up_after_attempts_does_not_stop() -> None:
    dls = FakeDeadLetters(fail=10)
    follower = RegistrationFollower(_cfg(), CODECS, {"eth": AddressIndex(20)}, dls,
                                    retry_backoff_s=0.001, dead_letter_attempts=2)
    assert await follower.handle(rec(0, b"bad", b"x")) is None
    assert dls.fail == 8 and dls.written == []


def test_dead_letter_value_matches_schema() -> None:
    text = orjson.loads(dead_letter_value(source_topic="t", partition=1, offset=2, key=b"k",
                                          value=b'{"a":1}', error="bad"))
    binary = orjson.loads(dead_letter_value(source_topic="t", partition=0, offset=0,
                                            key=b"\xff", value=b"\x00\xff" * 200_000, error="x"))
    tomb = orjson.loads(dead_letter_value(source_topic="t", partition=0, offset=9, key=None,
                                          value=None, error="x"))
    for doc in (text, binary, tomb):
        DEAD_LETTER_SCHEMA.validate(doc)
    assert (text["key"], text["key_encoding"], text["value"], text["value_encoding"]) == (
        "k", "utf-8", '{"a":1}', "utf-8")
    assert (binary["key"], binary["key_encoding"], binary["value_truncated"]) == (
        "/w==", "base64", True)
    assert text["received_at"].endswith("Z") and tomb["value"] is None


# ---------------------------------------------------------------- on Kafka


async def _produce(cfg: KafkaConfig, items: list[tuple[bytes, bytes | None]], *,
                   transactional: str | None = None, abort: bool = False) -> None:
    kwargs: dict[str, Any] = {"bootstrap_servers": cfg.bootstrap_servers,
                              "enable_idempotence": True, "acks": "all"}
    if transactional:
        kwargs["transactional_id"] = transactional
    producer = AIOKafkaProducer(**kwargs)
    await producer.start()
    try:
        if transactional:
            await producer.begin_transaction()
        for key, value in items:
            await producer.send_and_wait(cfg.topics.address_registrations, value=value, key=key)
        if transactional:
            await (producer.abort_transaction() if abort else producer.commit_transaction())
    finally:
        await producer.stop()


async def _eventually(check: Any) -> None:
    async with asyncio.timeout(15):
        for _ in range(100_000):  # polling: the index has no event to wait on
            if check():
                return
            await asyncio.sleep(0.05)


@pytest.fixture
async def reg_cfg(kafka: KafkaService) -> AsyncIterator[KafkaConfig]:
    cfg = _cfg(kafka.bootstrap_servers, uuid.uuid4().hex[:10])
    await ensure_topics(cfg)
    yield cfg


@pytest.mark.integration
async def test_follower_catches_up_then_follows_live(reg_cfg: KafkaConfig) -> None:
    cfg = reg_cfg
    # Before the start: registrations, a tombstone, a bad record, and transactions
    # (a committed one and an aborted one, so markers and aborted records sit before the end).
    await _produce(cfg, [(f"eth:{A1}".encode(), reg(A1, "alice")),
                         (f"eth:{A2}".encode(), reg(A2)),
                         (f"eth:{A2}".encode(), None),
                         (f"eth:{A3}".encode(), b"{broken")])
    await _produce(cfg, [(f"eth:{MIXED.lower()}".encode(), reg(MIXED, "mixed"))],
                   transactional=f"reg-{uuid.uuid4().hex[:6]}")
    await _produce(cfg, [(f"eth:{A4}".encode(), reg(A4))],
                   transactional=f"reg-{uuid.uuid4().hex[:6]}", abort=True)

    index = AddressIndex(20)
    writer = DeadLetterWriter(cfg, timeout_s=10)
    follower = RegistrationFollower(cfg, CODECS, {"eth": index}, writer, timeout_s=10)
    dl_before = sample("watcher_dead_letters_total", source="address-registrations")
    await follower.start()
    try:
        async with asyncio.timeout(20):
            await follower.caught_up.wait()
        assert k(A1) in index and index.label(k(A1)) == "alice"
        assert k(A2) not in index, "the tombstone removed it"
        assert k(MIXED) in index and index.label(k(MIXED)) == "mixed"
        assert k(A4) not in index, "an aborted registration is never applied"
        assert k(A3) not in index
        assert sample("watcher_watched_addresses", chain="eth") == 2

        # Live: a bad record (key and value disagree), then a good one behind it.
        await _produce(cfg, [(f"eth:{A2}".encode(), reg(A3)),
                             (f"eth:{A3}".encode(), reg(A3, "carol")),
                             (f"eth:{A1}".encode(), None)])
        await _eventually(lambda: k(A3) in index and k(A1) not in index)
        assert index.label(k(A3)) == "carol"
        assert follower.running

        letters = await read_all(cfg, cfg.topics.dead_letter)
        docs = [orjson.loads(r.value or b"") for r in letters]
        for doc in docs:
            DEAD_LETTER_SCHEMA.validate(doc)
        # Keyed by the input's key, so spread over partitions: compare without order.
        found = sorted((r.key or b"", d["source_topic"], d["value"], d["error"])
                       for r, d in zip(letters, docs, strict=True))
        assert [f[:3] for f in found] == [
            (f"eth:{A2}".encode(), cfg.topics.address_registrations, reg(A3).decode()),
            (f"eth:{A3}".encode(), cfg.topics.address_registrations, "{broken"),
        ]
        assert "differs" in found[0][3] and "not JSON" in found[1][3]
        assert sample("watcher_dead_letters_total", source="address-registrations") == dl_before + 2
    finally:
        await follower.stop()
        await writer.stop()


@pytest.mark.integration
async def test_caught_up_at_once_on_an_empty_topic(reg_cfg: KafkaConfig) -> None:
    follower = RegistrationFollower(reg_cfg, CODECS, {"eth": AddressIndex(20)},
                                    FakeDeadLetters(), timeout_s=10)
    await follower.start()
    try:
        async with asyncio.timeout(10):
            await follower.caught_up.wait()
    finally:
        await follower.stop()
