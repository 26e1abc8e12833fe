"""chains.bitcoin.tx: BIP143 sighash, signing through the Signer port, serialization.

Golden values: the BIP143 "Native P2WPKH" example (hex written here from the BIP's text),
and a payment of this project's own whose bytes are pinned and checked three ways: parsed
back by chains.bitcoin.block, rebuilt by the test wallet's independent implementation
(tests/support/btc_wallet.py, fastecdsa), and accepted by btcd in the e2e test.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from chains.bitcoin.block import Outpoint, parse_transaction
from chains.bitcoin.networks import network
from chains.bitcoin.tx import (
    RBF_SEQUENCE,
    TxInput,
    TxOutput,
    UnsignedTx,
    address_script,
    compressed_public_key,
    der_signature,
    hash160,
    output_type,
    p2wpkh_address,
    p2wpkh_script,
    payment_tx,
    sign_p2wpkh,
)
from tests.support import btc_wallet
from watcher.core.utxo import Payment, ScriptType, Utxo, plan_for
from watcher.errors import SignerError
from watcher.ports import RecoverableSignature
from watcher.types import TxId
from watcher.withdrawals.signer import HotKeySigner

REGTEST = network("regtest")

# BIP143, "Native P2WPKH": the unsigned transaction's parts and the second input (P2WPKH).
BIP143_PREV0 = "fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f"  # internal order
BIP143_PREV1 = "ef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a"
BIP143_OUT0 = ("1976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac", 112340000)
BIP143_OUT1 = ("1976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac", 223450000)
BIP143_KEY = "619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9"
BIP143_PUB = "025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357"
BIP143_PKH = "1d0f172a0ecb48aee1be1f2687d2963ae33f71a1"
BIP143_SIGHASH = "c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670"
BIP143_SIG = ("304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a"
              "0220573a954c4518331561406f90300e8f3358f51928d43c212a8caed02de67eebee")


def bip143_tx() -> UnsignedTx:
    def display(internal: str) -> TxId:
        return TxId(bytes.fromhex(internal)[::-1].hex())
    outs = tuple(TxOutput(bytes.fromhex(s)[1:], v) for s, v in (BIP143_OUT0, BIP143_OUT1))
    return UnsignedTx((TxInput(display(BIP143_PREV0), 0, 625_000_000, 0xFFFFFFEE),
                       TxInput(display(BIP143_PREV1), 1, 600_000_000, 0xFFFFFFFF)),
                      outs, version=1, locktime=0x11)


def test_bip143_native_p2wpkh_sighash_and_signature() -> None:
    tx = bip143_tx()
    assert tx.outputs[0].serialize().hex() == "202cb20600000000" + BIP143_OUT0[0]
    assert hash160(bytes.fromhex(BIP143_PUB)).hex() == BIP143_PKH
    digest = tx.sighash_p2wpkh(1, bytes.fromhex(BIP143_PKH))
    assert digest.hex() == BIP143_SIGHASH
    signer = HotKeySigner("bip143", bytes.fromhex(BIP143_KEY))
    assert compressed_public_key(signer.public_key).hex() == BIP143_PUB


async def test_bip143_signature_is_the_bips_deterministic_one() -> None:
    signer = HotKeySigner("bip143", bytes.fromhex(BIP143_KEY))
    sig = await signer.sign_digest(bytes.fromhex(BIP143_SIGHASH))
    assert der_signature(sig.r, sig.s).hex() == BIP143_SIG


GOLDEN_KEY = hashlib.sha256(b"btcwd golden hot key").digest()
GOLDEN_PREV_A = TxId("11" * 32)
GOLDEN_PREV_B = TxId("a0" + "22" * 31)
GOLDEN_PAYEE = btc_wallet.regtest_payee("p2tr", "golden")


def golden_plan() -> tuple[UnsignedTx, bytes]:
    signer = HotKeySigner("golden", GOLDEN_KEY)
    hot = p2wpkh_script(compressed_public_key(signer.public_key))
    inputs = [Utxo(f"{GOLDEN_PREV_A}:0", 60_000, ScriptType.P2WPKH),
              Utxo(f"{GOLDEN_PREV_B}:3", 90_000, ScriptType.P2WPKH)]
    plan = plan_for(sorted(inputs, key=lambda u: u.outpoint),
                    [Payment("w-golden", ScriptType.P2TR, 100_000)], 2, ScriptType.P2WPKH)
    assert plan is not None
    return payment_tx(plan, [GOLDEN_PAYEE.script], hot), hot


async def test_golden_payment_bytes() -> None:
    tx, hot = golden_plan()
    signed = await sign_p2wpkh(tx, HotKeySigner("golden", GOLDEN_KEY))
    assert signed.raw.hex() == GOLDEN_TX_HEX
    assert signed.txid == GOLDEN_TXID
    # Parsed back by the block parser: same txid, inputs, sequences and outputs.
    parsed = parse_transaction(signed.raw, expect_txid=GOLDEN_TXID)
    assert parsed.wtxid(0) == signed.wtxid != signed.txid
    assert parsed.spends(0) == (Outpoint(GOLDEN_PREV_A, 0), Outpoint(GOLDEN_PREV_B, 3))
    assert parsed.signals_rbf(0)
    outs = parsed.outputs(0)
    assert [(o.script, o.value) for o in outs] == [(GOLDEN_PAYEE.script, 100_000),
                                                   (hot, 150_000 - 100_000 - signed.fee)]
    assert signed.fee == tx.fee == 2 * 221  # 2 sat/vB of the plan's (upper-bound) vsize
    assert signed.vsize <= 221


async def test_golden_payment_matches_an_independent_implementation() -> None:
    """The test wallet's own BIP143 signer (fastecdsa, RFC 6979) builds the same bytes."""
    tx, _ = golden_plan()
    ours = await sign_p2wpkh(tx, HotKeySigner("golden", GOLDEN_KEY))

    @dataclass
    class Key:
        secret: int
        pubkey: bytes
        h160: bytes

    signer = HotKeySigner("golden", GOLDEN_KEY)
    pub = compressed_public_key(signer.public_key)
    key = Key(int.from_bytes(GOLDEN_KEY, "big"), pub, btc_wallet.hash160(pub))
    theirs = btc_wallet.Tx(
        [(btc_wallet.Coin(i.txid, i.vout, i.value), i.sequence) for i in tx.inputs],
        [(o.script, o.value) for o in tx.outputs])
    btc_wallet.MinerKey.sign(key, theirs)  # type: ignore[arg-type]
    assert theirs.serialize() == ours.raw
    assert theirs.txid == ours.txid


class LyingSigner:
    """Answers with another key's signature, or with the high-s twin of its own."""

    def __init__(self, mode: str) -> None:
        self._real = HotKeySigner("real", GOLDEN_KEY)
        self._other = HotKeySigner("other", hashlib.sha256(b"other").digest())
        self._mode = mode

    @property
    def name(self) -> str:
        return "liar"

    @property
    def public_key(self) -> bytes:
        return self._real.public_key

    async def sign_digest(self, digest: bytes) -> RecoverableSignature:
        if self._mode == "other":
            return await self._other.sign_digest(digest)
        sig = await self._real.sign_digest(digest)
        n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
        return RecoverableSignature(sig.r, n - sig.s, 1 - sig.y_parity)


@pytest.mark.parametrize(("mode", "message"), [("other", "another key"), ("high", "high s")])
async def test_a_wrong_signature_is_never_believed(mode: str, message: str) -> None:
    tx, _ = golden_plan()
    with pytest.raises(SignerError, match=message):
        await sign_p2wpkh(tx, LyingSigner(mode))


@pytest.mark.parametrize(("kind", "expected"), [
    ("p2pkh", ScriptType.P2PKH), ("p2sh", ScriptType.P2SH), ("p2wpkh", ScriptType.P2WPKH),
    ("p2wsh", ScriptType.P2WSH), ("p2tr", ScriptType.P2TR)])
def test_address_scripts_of_the_five_types(kind: str, expected: ScriptType) -> None:
    payee = btc_wallet.regtest_payee(kind, "types")
    assert address_script(payee.address, REGTEST) == payee.script
    assert output_type(payee.script) is expected


def test_hot_wallet_address_is_p2wpkh_of_the_compressed_key() -> None:
    signer = HotKeySigner("golden", GOLDEN_KEY)
    pub = compressed_public_key(signer.public_key)
    addr = p2wpkh_address(signer.public_key, REGTEST)
    assert addr == btc_wallet.segwit_address("bcrt", 0, btc_wallet.hash160(pub))
    assert address_script(addr, REGTEST) == p2wpkh_script(pub)
    with pytest.raises(ValueError, match="no segwit"):
        p2wpkh_address(signer.public_key, network("dogecoin"))


def test_unsigned_tx_refuses_bad_values() -> None:
    inp = TxInput(GOLDEN_PREV_A, 0, 1_000)
    with pytest.raises(ValueError, match="outputs exceed inputs"):
        UnsignedTx((inp,), (TxOutput(b"\x00\x14" + bytes(20), 1_001),))
    with pytest.raises(ValueError, match="inputs and outputs"):
        UnsignedTx((), (TxOutput(b"", 1),))
    assert inp.sequence == RBF_SEQUENCE


GOLDEN_TX_HEX = (
    "0200000000010211111111111111111111111111111111111111111111111111111111111111110000000000"
    "fdffffff22222222222222222222222222222222222222222222222222222222222222a00300000000fdffff"
    "ff02a086010000000000225120e1b68fd1bd1b57730614a0ecce8a6386d74e7a7fa092b18354fee820b88119"
    "8196c100000000000016001434d4df5f635ba0461810d33d37f76e38b8fcb32002473044022043e94da916d4"
    "c4e6a6acba02e4a83227ed5c23cb97fda34353c2d872c50bdf44022015e85006c3ecdc1b46fe1d5c4f919188"
    "07254a631281f31c43aede162dcb964f01210370070621af675022c7c428f983dc80c64ae63873d22c6afa47"
    "d56fbeb028e2ca024730440220401fa7d5b6ac411c705c6d0a73e66e659e92c952744448375eb2852672f325"
    "de02200898566b6b256f325127aef3353bc86d70bfd40c57f9eefe62c619c70b8d63e601210370070621af67"
    "5022c7c428f983dc80c64ae63873d22c6afa47d56fbeb028e2ca00000000")
GOLDEN_TXID = TxId("d1d3f5d756c4d5bcf13b7aab6346277cb2f542f10c3a7a4024b7da766a22e508")


@pytest.mark.parametrize(("kind", "dust"), [
    ("p2pkh", 546), ("p2sh", 540), ("p2wpkh", 294), ("p2wsh", 330), ("p2tr", 330)])
def test_dust_limit_of_each_address_type(kind: str, dust: int) -> None:
    from chains.bitcoin.address import UtxoAddressCodec
    from chains.bitcoin.tx import dust_limit

    _, key = UtxoAddressCodec(REGTEST).parse(btc_wallet.regtest_payee(kind, "dust").address)
    assert dust_limit(key) == dust  # Bitcoin Core's limits at 3 sat/vB dust relay fee


V2_40 = bytes(range(40))
V2_40_SCRIPT = bytes.fromhex("5228000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
                             "2021222324252627")  # OP_2, push 40, the program


@pytest.mark.parametrize(("version", "program", "script_hex", "dust"), [
    (2, V2_40, V2_40_SCRIPT.hex(), 354),
    (16, bytes(33), "6021" + "00" * 33, 354),  # OP_16, push 33: a hashed index key
    (3, b"\xab\xcd", "5302abcd", 330),         # 2 bytes: sized as the 34-byte bound
])
def test_any_valid_witness_program_is_payable(version: int, program: bytes, script_hex: str,
                                               dust: int) -> None:
    from chains.bitcoin.address import UtxoAddressCodec
    from chains.bitcoin.tx import dust_limit

    text = btc_wallet.segwit_address("bcrt", version, program)
    spk = address_script(text, REGTEST)
    assert spk.hex() == script_hex
    assert output_type(spk) in (ScriptType.WITNESS, ScriptType.P2WSH)
    _, key = UtxoAddressCodec(REGTEST).parse(text)
    assert dust_limit(key) == dust


def test_a_40_byte_witness_program_output_golden() -> None:
    hot = p2wpkh_script(compressed_public_key(HotKeySigner("golden", GOLDEN_KEY).public_key))
    assert output_type(V2_40_SCRIPT) is ScriptType.WITNESS
    plan = plan_for([Utxo(f"{GOLDEN_PREV_A}:0", 100_000, ScriptType.P2WPKH)],
                    [Payment("w-v2", ScriptType.WITNESS, 50_000)], 2, ScriptType.P2WPKH)
    assert plan is not None
    # 40 base + 2 marker + 272 input + 204 (8 + 1 + 42 bytes) + 124 change = 642 WU -> 161 vB.
    assert (plan.vsize, plan.fee, plan.change) == (161, 322, 49_678)
    tx = payment_tx(plan, [V2_40_SCRIPT], hot)
    assert tx.outputs[0].serialize().hex() == "50c30000000000002a" + V2_40_SCRIPT.hex()
    assert tx.outputs[1] == TxOutput(hot, 49_678)
