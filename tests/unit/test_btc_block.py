"""Raw blocks and transactions: golden values (the genesis block, transactions whose txids
bitcoinlib computed), checks a lying node cannot pass, the deposit scan, and fuzzing."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chains.bitcoin import script
from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.block import (
    Outpoint,
    merkle_root,
    parse_block,
    parse_header,
    parse_transaction,
    scan,
)
from chains.bitcoin.networks import network
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
from watcher.core.addresses import AddressIndex
from watcher.errors import AnswerCheck, NodeAnswerInvalid
from watcher.types import AssetSymbol

GENESIS_HEX = (
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac7"
    "2c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c010100000001000000000000"
    "0000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054696d"
    "65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e642062"
    "61696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130"
    "b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b"
    "6bf11d5fac00000000")
GENESIS_HASH = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
GENESIS_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"

# A segwit transaction (two inputs, one signalling RBF) and a legacy one; txids computed by
# bitcoinlib 0.7.10 and embit 0.8.0 from these bytes, the wtxid by the test serializer.
SEGWIT_TX = Tx(
    [In(bytes(range(32)), 1, b"", 0xFFFFFFFD, [bytes(72), bytes([2]) * 33]),
     In(bytes(range(32, 64)), 0, b"", 0xFFFFFFFF, [bytes([1]) * 64])],
    [Out(150_000, p2wpkh(bytes([0x11]) * 20)), Out(2_500, p2tr(bytes([0x22]) * 32)),
     Out(99_999_999, p2sh(bytes([0x33]) * 20)), Out(0, op_return(b"hello"))],
    version=2, locktime=800_000)
SEGWIT_TXID = "2f54b1f46f4c43d3c625b2286518cc17937064856ecdb1ceb0303b81f5512507"
SEGWIT_WTXID = "33a699af14a6963a89253c083f04a82e959757cbd4c944a951c535bc11c0ce7a"
LEGACY_TX = Tx(
    [In(bytes(range(64, 96)), 7, bytes([0x47]) + bytes(71) + bytes([0x21]) + bytes([3]) * 33,
        0xFFFFFFFF)],
    [Out(546, p2pkh(bytes([0x44]) * 20)), Out(1_000_000, p2wsh(bytes([0x55]) * 32))],
    version=1)
LEGACY_TXID = "592ca79d200b5e6a27f5ce4feab86aea5af6c9f4fef4665743a8f40c5aaf1dbd"

# BIP143's signed native P2WPKH example: its wtxid is the identifier other wallets' tests
# assert (Trust Wallet), the txid embit computes, the outpoints and amounts the BIP states.
BIP143_SIGNED = (
    "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f000000004948"
    "30450221008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3"
    "f9281a99f2b1c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3a"
    "a89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df3"
    "78db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f016"
    "7faa815988ac000247304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a"
    "0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee0121025476c2e83188368d"
    "a1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee635711000000")

BTC = AssetSymbol("BTC")
MAIN = network("bitcoin")


def small_block() -> tuple[bytes, str, list[Tx]]:
    txs = [coinbase(1, [Out(625_000_000, p2wpkh(bytes([0x66]) * 20))]), SEGWIT_TX, LEGACY_TX]
    raw, h = block(txs, prev=bytes([0xAB]) * 32, time=1_700_000_123)
    return raw, h, txs


def key_of(spk: bytes) -> bytes:
    k = script.script_key(spk)
    assert k is not None
    return k


# ------------------------------------------------------------------ golden values


def test_genesis_block_hash_txid_and_output() -> None:
    b = parse_block(GENESIS_HEX, GENESIS_HASH)
    assert b.header.hash == GENESIS_HASH
    assert b.header.prev_hash == "0" * 64
    assert b.header.merkle_root == GENESIS_TXID
    assert b.header.time == 1231006505
    assert b.header.bits == 0x1D00FFFF and b.header.nonce == 2083236893
    assert len(b.txs) == 1 and b.txs.txid(0) == GENESIS_TXID
    assert b.txs.is_coinbase(0) and b.txs.spends(0) == ()
    [out] = b.txs.outputs(0)
    assert out.value == 5_000_000_000
    assert b.txs.keys == [b""]  # P2PK has no address
    assert parse_header(bytes.fromhex(GENESIS_HEX)[:80]).hash == GENESIS_HASH


def test_transaction_ids_match_an_independent_implementation() -> None:
    seg = parse_transaction(SEGWIT_TX.serialize().hex(), SEGWIT_TXID)
    assert seg.txid(0) == SEGWIT_TXID and seg.wtxid(0) == SEGWIT_WTXID and seg.has_witness(0)
    leg = parse_transaction(LEGACY_TX.serialize(), LEGACY_TXID)
    assert leg.txid(0) == leg.wtxid(0) == LEGACY_TXID and not leg.has_witness(0)


def test_bip143_signed_example() -> None:
    tx = parse_transaction(BIP143_SIGNED,
                           "e8151a2af31c368a35053ddd4bdb285a8595c769a3ad83e0fa02314a602d4609")
    assert tx.wtxid(0) == "c36c38370907df2324d9ce9d149d191192f338b37665a82e78e76a12c909b762"
    assert [o.value for o in tx.outputs(0)] == [112_340_000, 223_450_000]
    assert tx.keys == [
        bytes.fromhex("76a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac") + bytes(9),
        bytes.fromhex("76a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac") + bytes(9)]
    assert tx.spends(0) == (
        Outpoint("9f96ade4b41d5433f4eda31e1738ec2b36f6e7d1420d94a6af99801a88f7f7ff", 0),  # type: ignore[arg-type]
        Outpoint("8ac60eb9575db5b2d987e29f301b5b819ea83a5c6579d282d189cc04b8e151ef", 1),  # type: ignore[arg-type]
    )
    assert tx.signals_rbf(0)  # first input's nSequence is 0xffffffee


def test_outputs_inputs_and_rbf_of_a_transaction() -> None:
    seg = parse_transaction(SEGWIT_TX.serialize())
    assert [(o.value, o.script) for o in seg.outputs(0)] == [(o.value, o.script)
                                                             for o in SEGWIT_TX.outs]
    assert seg.spends(0) == (
        Outpoint("1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100", 1),  # type: ignore[arg-type]
        Outpoint("3f3e3d3c3b3a393837363534333231302f2e2d2c2b2a29282726252423222120", 0),  # type: ignore[arg-type]
    )
    assert seg.signals_rbf(0)  # first input's nSequence 0xfffffffd
    assert not parse_transaction(LEGACY_TX.serialize()).signals_rbf(0)
    final_minus_one = Tx([In(bytes(32), 0, b"", 0xFFFFFFFE)], [Out(1, p2tr(bytes(32)))])
    assert not parse_transaction(final_minus_one.serialize()).signals_rbf(0)
    assert not parse_transaction(final_minus_one.serialize()).is_coinbase(0)


def test_outpoint_raw_round_trip() -> None:
    op = Outpoint.from_raw(bytes(range(32)) + (5).to_bytes(4, "little"))
    assert op.vout == 5 and op.txid.startswith("1f1e")
    assert Outpoint.from_raw(op.raw()) == op


def test_block_txids_merkle_and_keys() -> None:
    raw, h, txs = small_block()
    b = parse_block(raw, h)
    assert b.header.hash == h and b.header.prev_hash == "ab" * 32
    assert b.header.time == 1_700_000_123 and b.size == len(raw)
    assert b.txs.txids()[1:] == [SEGWIT_TXID, LEGACY_TXID]
    assert b.txs.is_coinbase(0) and not b.txs.is_coinbase(1)
    assert b.txs.keys == [script.script_key(o.script) or b"" for t in txs for o in t.outs]
    assert b.txs.locate_output(0) == (0, 0)
    assert b.txs.locate_output(4) == (1, 3)
    assert b.txs.locate_output(5) == (2, 0)
    assert b.txs.raw_transaction(2) == LEGACY_TX.serialize()


def test_merkle_root_of_known_pairs() -> None:
    a, b_ = bytes(32), bytes([1]) * 32
    assert merkle_root([a]) == a
    # Odd levels duplicate the last hash.
    assert merkle_root([a, b_, b_]) == merkle_root([a, b_, b_, b_])


# ------------------------------------------------------------------ the scan


def test_scan_reports_watched_outputs_with_exact_amounts_and_counts_dust() -> None:
    raw, h, _ = small_block()
    b = parse_block(raw, h)
    watched = AddressIndex(script.KEY_SIZE)
    for spk in (p2wpkh(bytes([0x11]) * 20), p2tr(bytes([0x22]) * 32), p2sh(bytes([0x33]) * 20),
                p2pkh(bytes([0x44]) * 20), p2wsh(bytes([0x55]) * 32)):
        watched.add(key_of(spk))
    watched.add(key_of(p2wpkh(bytes([0x77]) * 20)))  # pays nobody here
    result = scan(b.txs, watched, MAIN, asset=BTC, dust_threshold=1_000)
    got = [(t.txid, t.locator, t.amount, t.to_address) for t in result.transfers]
    codec = UtxoAddressCodec(MAIN)
    # Address texts from embit 0.8.0 (an independent implementation).
    assert got == [
        (SEGWIT_TXID, "vout:0", 150_000, "bc1qzyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3h8ffkz"),
        (SEGWIT_TXID, "vout:1", 2_500,
         "bc1pyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3qfpjpqe"),
        (SEGWIT_TXID, "vout:2", 99_999_999, "36MjimMJHwQkrTKrKyw4KepHsd975kSGTs"),
        (LEGACY_TXID, "vout:1", 1_000_000,
         "bc1q242424242424242424242424242424242424242424242424242skjutym"),
    ]
    for t in result.transfers:
        assert codec.parse(t.to_address)[0] == t.to_address
        assert t.asset == "BTC" and t.decimals == 8 and t.token_contract is None
    assert result.dust_ignored == 1  # the 546-satoshi P2PKH output
    assert result.paying == (1, 1, 1, 2)
    assert list(result.spent_by_paying()) == [
        (SEGWIT_TXID, op) for op in parse_transaction(SEGWIT_TX.serialize()).spends(0)
    ] + [(LEGACY_TXID, op) for op in parse_transaction(LEGACY_TX.serialize()).spends(0)]


def test_scan_with_a_plain_set_and_no_hits() -> None:
    raw, h, _ = small_block()
    b = parse_block(raw, h)
    result = scan(b.txs, {b"\x03" + bytes(32)}, MAIN, asset=BTC)
    assert result.transfers == () and result.dust_ignored == 0


def test_spenders_finds_double_spends_in_a_block() -> None:
    raw, h, _ = small_block()
    b = parse_block(raw, h)
    seen = parse_transaction(SEGWIT_TX.serialize()).spends(0)
    other = Outpoint("ee" * 32, 3)  # type: ignore[arg-type]
    assert b.txs.spenders([*seen, other]) == {seen[0]: 1, seen[1]: 1}
    assert b.txs.spenders([Outpoint("00" * 32, 0xFFFFFFFF)]) == {}  # type: ignore[arg-type]
    assert b.txs.spenders([]) == {}
    # Past 64 outpoints the map of every input answers: the same answer.
    many = [Outpoint(f"{i:064x}", i) for i in range(70)]  # type: ignore[arg-type]
    assert b.txs.spenders([*many, *seen]) == {seen[0]: 1, seen[1]: 1}
    assert b.txs.spenders([Outpoint("00" * 32, 0xFFFFFFFF), *many]) == {}  # type: ignore[arg-type]
    assert b.txs.spenders(seen[:1]) == {seen[0]: 1}  # the map, once built, answers few too


def test_zero_value_outputs_are_dust_even_without_a_threshold() -> None:
    tx = Tx([In(bytes([9]) * 32, 0)], [Out(0, p2tr(bytes(32))), Out(1, p2tr(bytes(32)))])
    result = scan(parse_transaction(tx.serialize()), {key_of(p2tr(bytes(32)))}, MAIN, asset=BTC)
    assert [(t.locator, t.amount) for t in result.transfers] == [("vout:1", 1)]
    assert result.dust_ignored == 1


def test_coinbase_outputs_are_reported() -> None:
    raw, h, txs = small_block()
    b = parse_block(raw, h)
    result = scan(b.txs, {key_of(txs[0].outs[0].script)}, MAIN, asset=BTC)
    assert [(t.locator, t.amount) for t in result.transfers] == [("vout:0", 625_000_000)]
    assert b.txs.is_coinbase(result.paying[0])


def test_segwit_outputs_on_dogecoin_are_not_addresses() -> None:
    raw, h, _ = small_block()
    b = parse_block(raw, h)
    watched = {key_of(p2wpkh(bytes([0x11]) * 20)), key_of(p2sh(bytes([0x33]) * 20))}
    result = scan(b.txs, watched, network("dogecoin"), asset=AssetSymbol("DOGE"))
    assert [t.locator for t in result.transfers] == ["vout:2"]
    assert result.transfers[0].to_address[0] in "9A"  # Dogecoin P2SH, version byte 22


def test_an_output_above_the_money_supply_is_refused() -> None:
    tx = Tx([In(bytes([9]) * 32, 0)], [Out(21_000_000 * 100_000_000 + 1, p2tr(bytes(32)))])
    txs = parse_transaction(tx.serialize())
    with pytest.raises(NodeAnswerInvalid, match="money supply"):
        scan(txs, {key_of(p2tr(bytes(32)))}, MAIN, asset=BTC)


# ------------------------------------------------------------------ a node that lies


def test_another_block_than_asked() -> None:
    raw, _, _ = small_block()
    with pytest.raises(NodeAnswerInvalid) as err:
        parse_block(raw, GENESIS_HASH)
    assert err.value.check is AnswerCheck.BLOCK_HASH


def test_an_altered_amount_fails_the_merkle_root() -> None:
    _raw, h, txs = small_block()
    changed = Tx(SEGWIT_TX.ins, [Out(150_001, SEGWIT_TX.outs[0].script), *SEGWIT_TX.outs[1:]],
                 SEGWIT_TX.version, SEGWIT_TX.locktime)
    body = [txs[0].serialize(), changed.serialize(), LEGACY_TX.serialize()]
    forged, fh = block(txs, prev=bytes([0xAB]) * 32, time=1_700_000_123, serialized=body)
    assert fh == h  # same header, so the same hash: only the merkle root can tell
    with pytest.raises(NodeAnswerInvalid) as err:
        parse_block(forged, h)
    assert err.value.check is AnswerCheck.TXID


def test_an_omitted_transaction_fails_the_merkle_root() -> None:
    _raw, h, txs = small_block()
    body = [txs[0].serialize(), SEGWIT_TX.serialize()]
    forged, _ = block(txs, prev=bytes([0xAB]) * 32, time=1_700_000_123, serialized=body)
    with pytest.raises(NodeAnswerInvalid) as err:
        parse_block(forged, h)
    assert err.value.check is AnswerCheck.TXID


def test_a_duplicated_last_transaction_is_refused_despite_the_same_merkle_root() -> None:
    _raw, h, txs = small_block()  # three transactions: the last one's hash pairs with itself
    body = [t.serialize() for t in txs] + [LEGACY_TX.serialize()]
    forged, fh = block(txs, prev=bytes([0xAB]) * 32, time=1_700_000_123, serialized=body)
    assert fh == h
    with pytest.raises(NodeAnswerInvalid, match="appears twice") as err:
        parse_block(forged, h)
    assert err.value.check is AnswerCheck.TXID


@pytest.mark.parametrize("cut", [0, 50, 80, 81, 100, -1, -4])
def test_truncated_blocks_are_shape_errors(cut: int) -> None:
    raw, h, _ = small_block()
    with pytest.raises(NodeAnswerInvalid) as err:
        parse_block(raw[:cut] if cut else b"", h if cut > 80 or cut < 0 else None)
    assert err.value.check is AnswerCheck.SHAPE


def test_trailing_bytes_and_bad_witness_flag_and_empty_lists() -> None:
    raw, h, _txs = small_block()
    with pytest.raises(NodeAnswerInvalid, match="bytes after the last transaction"):
        parse_block(raw + b"\x00", h)
    bad_flag = bytearray(SEGWIT_TX.serialize())
    bad_flag[5] = 2
    with pytest.raises(NodeAnswerInvalid, match="witness flag 2"):
        parse_transaction(bytes(bad_flag))
    no_out = Tx([In(bytes([1]) * 32, 0)], [])
    with pytest.raises(NodeAnswerInvalid, match="no output"):
        parse_transaction(no_out.serialize())
    with pytest.raises(NodeAnswerInvalid, match="not hex"):
        parse_block("zz", h)
    with pytest.raises(NodeAnswerInvalid, match="asked for transaction"):
        parse_transaction(LEGACY_TX.serialize(), SEGWIT_TXID)


def test_first_transaction_must_be_the_only_coinbase() -> None:
    no_cb = [SEGWIT_TX, LEGACY_TX]
    raw, h = block(no_cb)
    with pytest.raises(NodeAnswerInvalid, match="not a coinbase"):
        parse_block(raw, h)
    two_cb = [coinbase(1, [Out(1, p2tr(bytes(32)))]), coinbase(2, [Out(1, p2tr(bytes(32)))])]
    raw, h = block(two_cb)
    with pytest.raises(NodeAnswerInvalid, match="coinbase input after"):
        parse_block(raw, h)


def test_big_compact_sizes_are_read() -> None:
    # 253 outputs need a 3-byte count; a 300-byte script a 3-byte length.
    outs = [Out(i + 1, p2wpkh(i.to_bytes(20, "big"))) for i in range(253)]
    outs.append(Out(7, b"\x6a\x4d\x2c\x01" + bytes(300)))
    tx = Tx([In(bytes([5]) * 32, 0, bytes(300), 0, [bytes(300)]),
             In(bytes([6]) * 32, 1, b"", 0, [bytes(300), bytes(5)]),
             In(bytes([7]) * 32, 2, b"", 0, [bytes(5), bytes(300)]),
             In(bytes([8]) * 32, 3, b"", 0, [b"", bytes(1000), bytes(70000)])], outs)
    txs = parse_transaction(tx.serialize(), tx.txid_hex())
    assert txs.output_count == 254 and txs.outputs(0)[-1].script == outs[-1].script
    assert txs.keys[:253] == [key_of(o.script) for o in outs[:253]] and txs.keys[253] == b""
    assert txs.signals_rbf(0)
    assert txs.wtxid(0) == tx.wtxid_hex()
    assert [o.vout for o in txs.spends(0)] == [0, 1, 2, 3]


# ------------------------------------------------------------------ properties


_TEMPLATES = st.one_of(
    st.binary(min_size=20, max_size=20).map(p2pkh),
    st.binary(min_size=20, max_size=20).map(p2sh),
    st.binary(min_size=20, max_size=20).map(p2wpkh),
    st.binary(min_size=32, max_size=32).map(p2wsh),
    st.binary(min_size=32, max_size=32).map(p2tr),
    st.tuples(st.integers(0, 16), st.binary(min_size=0, max_size=42)).map(
        lambda vp: bytes((0 if vp[0] == 0 else 0x50 + vp[0], len(vp[1]))) + vp[1]),
    st.binary(max_size=60),
)


@given(st.lists(_TEMPLATES, min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_inline_keys_equal_the_reference_script_key(scripts: list[bytes]) -> None:
    tx = Tx([In(bytes([3]) * 32, 1)], [Out(1000, s) for s in scripts])
    txs = parse_transaction(tx.serialize(), tx.txid_hex())
    assert txs.keys == [script.script_key(s) or b"" for s in scripts]


_BLOCK, _HASH, _ = small_block()


@given(st.data())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_truncation_and_bit_flips_raise_only_node_answer_invalid(data: st.DataObject) -> None:
    raw = bytearray(_BLOCK)
    if data.draw(st.booleans(), "truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), "cut")]
    for _ in range(data.draw(st.integers(1, 4), "flips")):
        if raw:
            pos = data.draw(st.integers(0, len(raw) - 1), "pos")
            raw[pos] ^= 1 << data.draw(st.integers(0, 7), "bit")
    try:
        b = parse_block(bytes(raw), _HASH)
    except NodeAnswerInvalid:
        return
    # Only a flip in witness bytes (not covered by the merkle root) can parse.
    assert b.txs.txids() == parse_block(_BLOCK, _HASH).txs.txids()


def test_mainnet_like_block_parses_with_the_writers_txids() -> None:
    raw, h, txs = mainnet_like_block(seed=3, n_tx=300)
    b = parse_block(raw, h)
    assert b.txs.txids() == [t.txid_hex() for t in txs]
    rng = random.Random(1)
    for i in rng.sample(range(300), 20):
        assert b.txs.wtxid(i) == txs[i].wtxid_hex()
        assert [o.value for o in b.txs.outputs(i)] == [o.value for o in txs[i].outs]
        assert b.txs.signals_rbf(i) == any(x.sequence < 0xFFFFFFFE for x in txs[i].ins)


_TX_BYTES = SEGWIT_TX.serialize()


@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.integers(0, len(_TX_BYTES)), st.integers(0, len(_TX_BYTES) * 8 - 1))
                 .map(lambda cut_bit: bytes(
                     b ^ (1 << (cut_bit[1] % 8)) if i == cut_bit[1] // 8 else b
                     for i, b in enumerate(_TX_BYTES))[:max(cut_bit[0], 1)])))
@settings(max_examples=400, deadline=None)
def test_any_bytes_as_a_transaction_raise_only_node_answer_invalid(raw: bytes) -> None:
    try:
        txs = parse_transaction(raw)
    except NodeAnswerInvalid:
        return
    # Whatever parsed can be read back without an error.
    txs.spends(0)
    txs.outputs(0)
    txs.signals_rbf(0)
    txs.wtxid(0)
