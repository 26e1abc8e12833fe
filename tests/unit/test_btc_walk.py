"""The C block walk (chains/bitcoin/_blockwalk.c) against its pure-Python reference
(chains/bitcoin/blockwalk.py): same results, same errors, on valid, random and mutated
blocks; its SHA-256 (SHA-NI and portable) against hashlib and FIPS 180-2's vectors.

Skipped when the extension is not built (then only the reference runs: there is nothing to
compare); ``make test`` builds it, and ``WATCHER_BTC_WALK=compiled`` makes its absence an
error instead of a skip.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator
from typing import Protocol

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chains.bitcoin import blockwalk as reference
from chains.bitcoin import walker
from chains.bitcoin.block import parse_block, parse_transaction
from tests.support.btcblocks import (
    In,
    Out,
    Tx,
    block,
    coinbase,
    mainnet_like_block,
    op_return,
    p2pkh,
    p2sh,
    p2tr,
    p2wpkh,
    p2wsh,
)
from watcher.errors import NodeAnswerInvalid

try:
    from chains.bitcoin import _blockwalk as C
except ImportError as exc:
    if os.environ.get(walker.ENV) == "compiled":
        raise
    pytest.skip(f"the C extension is not built: {exc}", allow_module_level=True)


@pytest.fixture(params=[True, False], ids=["sha-ni", "portable"])
def sha_kind(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Runs a test with the CPU's SHA instructions (when it has them) and without."""
    used = C.set_sha_extensions(request.param)
    if request.param and not used:
        pytest.skip("this CPU has no SHA extensions")
    yield used
    C.set_sha_extensions(True)


# ------------------------------------------------------------------ SHA-256


def test_sha256_golden_vectors(sha_kind: bool) -> None:
    # FIPS 180-2 appendix B, and the 1,000,000 x "a" long message.
    assert C.sha256(b"").hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert C.sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert C.sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").hex() == \
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    assert C.sha256(b"a" * 1_000_000).hex() == \
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"


def test_sha256_at_every_length_around_the_block_boundaries(sha_kind: bool) -> None:
    rng = random.Random(5)
    for n in [*range(0, 200), 4095, 4096, 4097, 65_536 + 7]:
        data = rng.randbytes(n)
        assert C.sha256(data) == hashlib.sha256(data).digest(), n


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_sha256_equals_hashlib(data: bytes) -> None:
    for ni in (True, False):
        C.set_sha_extensions(ni)
        assert C.sha256(data) == hashlib.sha256(data).digest()
    C.set_sha_extensions(True)


# ------------------------------------------------------------------ merkle root


def test_merkle_root_equals_the_reference_for_every_count(sha_kind: bool) -> None:
    rng = random.Random(9)
    ids = [rng.randbytes(32) for _ in range(70)]
    for n in range(1, 71):
        assert C.merkle_root(ids[:n]) == reference.merkle_root(ids[:n]), n
    # Bitcoin block 100000's four txids (internal order) and its header's merkle root.
    block_100000 = [bytes.fromhex(h)[::-1] for h in (
        "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
        "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
        "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
        "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d")]
    assert C.merkle_root(block_100000)[::-1].hex() == \
        "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"


def test_merkle_root_errors() -> None:
    with pytest.raises(ValueError, match="no txids"):
        C.merkle_root([])
    one = bytes(32)
    assert C.merkle_root([one]) is one  # as the reference: the lone txid itself


# ------------------------------------------------------------------ the walk

Outcome = tuple[object, ...]


class _Walks(Protocol):
    """Either module: the reference or the extension."""

    def walk(self, buf: bytes, off: int, count: int, what: str, /) -> reference.Walked: ...
    def merkle_root(self, txids: list[bytes], /) -> bytes: ...


def _normalised(buf: bytes, walked: reference.Walked) -> Outcome:
    """A walk's result with every offset past the end as one value: the C walk clamps an
    offset that a size pushed beyond 2**62, the reference keeps the big integer (both fail
    the caller's end check the same way)."""
    end, starts, txids, witness, out_first, keys = walked
    n = len(buf)
    return (end if end <= n else "beyond", [s if s <= n else "beyond" for s in starts],
            txids, witness, out_first, keys)


def _outcome(fn: Callable[[], reference.Walked], buf: bytes) -> Outcome:
    try:
        return ("ok", _normalised(buf, fn()))
    except NodeAnswerInvalid as exc:
        return ("invalid", str(exc), exc.check)
    except IndexError:
        return ("index",)


def _walks_agree(buf: bytes, off: int, count: int) -> Outcome:
    got = _outcome(lambda: C.walk(buf, off, count, "block x"), buf)
    want = _outcome(lambda: reference.walk(buf, off, count, "block x"), buf)
    assert got == want
    return got


def test_walk_of_a_mainnet_like_block_is_the_reference(sha_kind: bool) -> None:
    raw, _, txs = mainnet_like_block(seed=11, n_tx=600)
    off = 80 + 3  # 600 transactions: a 3-byte count
    got = C.walk(raw, off, len(txs), "b")
    assert got == reference.walk(raw, off, len(txs), "b")
    assert got[0] == len(raw)
    assert [t[::-1].hex() for t in got[2]] == [t.txid_hex() for t in txs]  # the writer's txids


def _parse_outcome(raw: bytes) -> Outcome:
    try:
        b = parse_block(raw)
    except NodeAnswerInvalid as exc:
        return ("invalid", str(exc), exc.check)
    return ("ok", b.header.hash, b.txs.raw_txids, b.txs.keys)


def _parse_tx_outcome(raw: bytes) -> Outcome:
    try:
        t = parse_transaction(raw)
    except NodeAnswerInvalid as exc:
        return ("invalid", str(exc), exc.check)
    return ("ok", t.raw_txids, t.keys)


def _parse_outcome_with(module: _Walks, parse: Callable[[bytes], Outcome], raw: bytes) -> Outcome:
    """``parse(raw)`` with ``module``'s walk (block.py calls chains.bitcoin.walker's at each
    parse)."""
    saved = walker.walk, walker.merkle_root
    walker.walk, walker.merkle_root = module.walk, module.merkle_root
    try:
        return parse(raw)
    finally:
        walker.walk, walker.merkle_root = saved


def _parses_agree(parse: Callable[[bytes], Outcome], raw: bytes) -> Outcome:
    got = _parse_outcome_with(C, parse, raw)
    assert got == _parse_outcome_with(reference, parse, raw)
    return got


def _odd_tx(rng: random.Random) -> Tx:
    """Every output template, odd witness stacks (0, 1, 2, 3 items, big pushes) and
    script sigs of 0..300 bytes: the walk's branches."""
    scripts = [p2pkh(rng.randbytes(20)), p2sh(rng.randbytes(20)), p2wpkh(rng.randbytes(20)),
               p2wsh(rng.randbytes(32)), p2tr(rng.randbytes(32)), op_return(rng.randbytes(10)),
               bytes((0x52, 40)) + rng.randbytes(40), bytes((0x60, 2)) + rng.randbytes(2),
               bytes((0, 21)) + rng.randbytes(21), rng.randbytes(rng.randrange(0, 300))]
    outs = [Out(rng.randrange(0, 10**9), rng.choice(scripts)) for _ in range(rng.randrange(1, 6))]
    ins = []
    for _ in range(rng.randrange(1, 4)):
        witness = rng.choice([[], [rng.randbytes(64)], [rng.randbytes(72), rng.randbytes(33)],
                              [b"", rng.randbytes(300), rng.randbytes(5)], [rng.randbytes(260)] * 2])
        ins.append(In(rng.randbytes(32), rng.randrange(0, 5), rng.randbytes(rng.choice([0, 107, 300])),
                      rng.randrange(0, 2**32), witness))
    return Tx(ins, outs, version=rng.choice([1, 2]), locktime=rng.randrange(0, 2**32))


def _odd_block(seed: int) -> bytes:
    rng = random.Random(seed)
    txs = [coinbase(seed, [Out(50, p2wpkh(rng.randbytes(20)))])]
    txs += [_odd_tx(rng) for _ in range(rng.randrange(1, 8))]
    return block(txs)[0]


_ODD_BLOCKS = [_odd_block(s) for s in range(8)]


def test_odd_blocks_parse_the_same(sha_kind: bool) -> None:
    for raw in _ODD_BLOCKS:
        assert _parses_agree(_parse_outcome, raw)[0] == "ok"


@given(st.data())
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_blocks_give_the_same_results_and_errors(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(_ODD_BLOCKS), "block"))
    for _ in range(data.draw(st.integers(0, 4), "mutations")):
        pos = data.draw(st.integers(0, len(raw) - 1), "pos")
        how = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]), "how")
        if how == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7), "bit")
        elif how == "set":  # sizes and counts: the CompactSize prefixes and small values
            raw[pos] = data.draw(st.sampled_from([0, 1, 2, 0x14, 0x20, 0xFC, 0xFD, 0xFE, 0xFF]), "v")
        elif how == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=9), "ins")
        elif how == "delete":
            del raw[pos:pos + data.draw(st.integers(1, 9), "len")]
        else:
            del raw[pos:]
        if not raw:
            raw = bytearray(b"\0")
    buf = bytes(raw)
    _walks_agree(buf, 81, data.draw(st.integers(1, 12), "count"))
    _parses_agree(_parse_outcome, buf)


@given(st.binary(max_size=400), st.integers(0, 20), st.integers(0, 5))
@settings(max_examples=500, deadline=None)
def test_random_bytes_give_the_same_results_and_errors(buf: bytes, off: int, count: int) -> None:
    _walks_agree(buf, off, count)


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=300, deadline=None)
def test_random_transactions_give_the_same_results_and_errors(raw: bytes) -> None:
    _parses_agree(_parse_tx_outcome, raw)


def test_huge_sizes_are_index_errors_not_crashes() -> None:
    # A 9-byte CompactSize of 2**64-1 inputs, a script length of 2**64-1, a count of 2**64-1.
    tx_head = (2).to_bytes(4, "little")
    cases = [
        tx_head + b"\xff" + b"\xff" * 8 + bytes(40),
        tx_head + b"\x01" + bytes(36) + b"\xff" + b"\xff" * 8 + bytes(8),
        tx_head + b"\x01" + bytes(36) + b"\x00" + bytes(4) + b"\x01" + bytes(8) + b"\xff" + b"\xff" * 8,
    ]
    for buf in cases:
        assert _walks_agree(buf, 0, 1)[0] in ("index", "ok")
    assert _walks_agree(cases[0], 0, 2**64 - 1) == ("index",)


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError):
        C.walk(bytearray(10), 0, 1, "b")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        C.walk(b"", 0, 1, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        C.merkle_root([b"x", "y"])  # type: ignore[list-item]


def test_the_selected_walk_is_reported() -> None:
    assert walker.IMPLEMENTATION in ("compiled", "interpreted")
    forced = os.environ.get(walker.ENV, "auto")
    if forced == "interpreted":
        assert walker.IMPLEMENTATION == "interpreted"
    else:
        assert walker.IMPLEMENTATION == "compiled"  # the extension imports (C above)
