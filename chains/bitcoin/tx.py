"""P2WPKH-spending payment transactions: build, BIP143 sighash, sign through a
:class:`watcher.ports.Signer`, check, serialize.

Pure except :func:`sign_p2wpkh`, which awaits the signer. Every input spends a P2WPKH
output of the hot wallet (its compressed public key, from :attr:`Signer.public_key`);
outputs may pay any script (P2PKH, P2SH, P2WPKH, P2WSH, P2TR, other witness programs).
Each input's nSequence is :data:`watcher.core.utxo.RBF_SEQUENCE` unless the caller says
otherwise, so every payment can be replaced by a fee bump (BIP 125).

The signer signs 32-byte BIP143 digests (SIGHASH_ALL) and never sees a transaction. Its
answer is checked before any byte is returned: ``r`` and ``s`` in range, ``s`` in the low
half (BIP 62/146 standardness), and the public key recovered from the signature is the
hot wallet's. A signer that answers wrongly never produces bytes that get recorded.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError

from chains.bitcoin import script as _script
from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.encoding import segwit_decode, segwit_encode
from chains.bitcoin.networks import Network
from watcher.core.utxo import DUST, RBF_SEQUENCE, Plan, ScriptType
from watcher.errors import SignerError
from watcher.ports import Signer
from watcher.types import TxId

SIGHASH_ALL = 1
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_MAX_SATS = 21_000_000 * 100_000_000


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def dsha256(data: bytes) -> bytes:
    return sha256(sha256(data))


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", sha256(data)).digest()


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def compressed_public_key(public_key: bytes) -> bytes:
    """The 33-byte SEC form of a 64-byte ``x || y`` key (what P2WPKH commits to)."""
    if len(public_key) != 64:
        raise ValueError(f"a public key has 64 bytes (x || y), got {len(public_key)}")
    return bytes((2 + (public_key[63] & 1),)) + public_key[:32]


def p2wpkh_script(compressed: bytes) -> bytes:
    if len(compressed) != 33 or compressed[0] not in (2, 3):
        raise ValueError("P2WPKH needs a 33-byte compressed public key")
    return b"\x00\x14" + hash160(compressed)


def p2wpkh_address(public_key: bytes, net: Network) -> str:
    """The hot wallet's address on ``net``: P2WPKH of the compressed key."""
    if net.bech32_hrp is None:
        raise ValueError(f"{net.name} has no segwit: a P2WPKH hot wallet cannot exist there")
    return segwit_encode(net.bech32_hrp, 0, hash160(compressed_public_key(public_key)))


def address_script(text: str, net: Network) -> bytes:
    """The scriptPubKey an address text pays (the watcher's own codec decides validity;
    witness programs too long for an index key are decoded from the text)."""
    _, key = UtxoAddressCodec(net).parse(text)
    if key[0] != _script.HASHED:
        return _script.key_script(key)
    _, version, program = segwit_decode(text)
    return _script.witness_script(version, program)


def output_type(spk: bytes) -> ScriptType | None:
    """The weight class of an output script (:data:`watcher.core.utxo.OUTPUT_WEIGHT`); a
    witness program of another version or length is sized as the P2WSH bound when it fits
    in 34 bytes, else (33..40-byte programs, BIP 350) as :attr:`ScriptType.WITNESS`, the
    40-byte bound. None: a script this wallet does not pay (no address has it)."""
    n = len(spk)
    if n == 25 and spk[:3] == b"\x76\xa9\x14" and spk[23:] == b"\x88\xac":
        return ScriptType.P2PKH
    if n == 23 and spk[:2] == b"\xa9\x14" and spk[22] == 0x87:
        return ScriptType.P2SH
    if n == 22 and spk[:2] == b"\x00\x14":
        return ScriptType.P2WPKH
    if n == 34 and spk[:2] == b"\x00\x20":
        return ScriptType.P2WSH
    if n == 34 and spk[:2] == b"\x51\x20":
        return ScriptType.P2TR
    if _script.script_key(spk) is not None and spk[0] != 0:
        # script_key admits exactly the witness programs v1..v16 of 2..40 bytes here.
        return ScriptType.P2WSH if n <= 34 else ScriptType.WITNESS
    return None


def dust_limit(key: bytes) -> int:
    """The smallest output value to an address index key (:mod:`chains.bitcoin.script`)
    that nodes relay: Bitcoin Core's dust limit at its default dust relay fee. A hashed key
    (a witness program of 33..40 bytes) gets the bound of the 40-byte program, 354: never
    below what a node asks of the real length (333 .. 354)."""
    kind = output_type(_script.key_script(key)) if key[0] != _script.HASHED else ScriptType.WITNESS
    return DUST[kind] if kind is not None else DUST[ScriptType.WITNESS]


def der_signature(r: int, s: int) -> bytes:
    """Strict DER (BIP 66) of an ECDSA signature."""
    def integer(x: int) -> bytes:
        b = x.to_bytes(32, "big").lstrip(b"\0")
        if not b or b[0] & 0x80:
            b = b"\0" + b
        return b"\x02" + bytes((len(b),)) + b

    body = integer(r) + integer(s)
    return b"\x30" + bytes((len(body),)) + body


@dataclass(frozen=True, slots=True)
class TxInput:
    txid: TxId
    """Display hex (reversed), as outpoints are written everywhere else."""
    vout: int
    value: int
    """Satoshis of the output spent: BIP143 commits to it."""
    sequence: int = RBF_SEQUENCE

    def outpoint(self) -> bytes:
        return bytes.fromhex(self.txid)[::-1] + struct.pack("<I", self.vout)


@dataclass(frozen=True, slots=True)
class TxOutput:
    script: bytes
    value: int

    def serialize(self) -> bytes:
        return struct.pack("<q", self.value) + compact_size(len(self.script)) + self.script


@dataclass(frozen=True, slots=True)
class UnsignedTx:
    inputs: tuple[TxInput, ...]
    outputs: tuple[TxOutput, ...]
    version: int = 2
    locktime: int = 0

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ValueError("a transaction needs inputs and outputs")
        for o in self.outputs:
            if not 0 <= o.value <= _MAX_SATS:
                raise ValueError("an output value must be within 0 .. 21e14 satoshis")
        for i in self.inputs:
            if len(i.txid) != 64 or not 0 <= i.vout <= 0xFFFFFFFF or not 0 < i.value <= _MAX_SATS:
                raise ValueError("an input needs a 64-hex txid, a 32-bit vout and a positive value")
        if sum(i.value for i in self.inputs) < sum(o.value for o in self.outputs):
            raise ValueError("outputs exceed inputs")

    @property
    def fee(self) -> int:
        return sum(i.value for i in self.inputs) - sum(o.value for o in self.outputs)

    def sighash_p2wpkh(self, index: int, pubkey_hash: bytes, sighash: int = SIGHASH_ALL) -> bytes:
        """BIP143 digest of input ``index`` spending a P2WPKH output of ``pubkey_hash``.
        Only SIGHASH_ALL: the hot wallet signs nothing else."""
        if sighash != SIGHASH_ALL:
            raise ValueError("only SIGHASH_ALL is signed")
        if len(pubkey_hash) != 20:
            raise ValueError("a public key hash has 20 bytes")
        txin = self.inputs[index]
        hash_prevouts = dsha256(b"".join(i.outpoint() for i in self.inputs))
        hash_sequence = dsha256(b"".join(struct.pack("<I", i.sequence) for i in self.inputs))
        hash_outputs = dsha256(b"".join(o.serialize() for o in self.outputs))
        script_code = b"\x19\x76\xa9\x14" + pubkey_hash + b"\x88\xac"
        preimage = (struct.pack("<i", self.version) + hash_prevouts + hash_sequence
                    + txin.outpoint() + script_code + struct.pack("<q", txin.value)
                    + struct.pack("<I", txin.sequence) + hash_outputs
                    + struct.pack("<I", self.locktime) + struct.pack("<I", sighash))
        return dsha256(preimage)

    def _body(self) -> tuple[bytes, bytes]:
        ins = compact_size(len(self.inputs)) + b"".join(
            i.outpoint() + b"\x00" + struct.pack("<I", i.sequence) for i in self.inputs)
        outs = compact_size(len(self.outputs)) + b"".join(o.serialize() for o in self.outputs)
        return ins, outs

    def serialize(self, witnesses: Sequence[Sequence[bytes]]) -> tuple[bytes, bytes]:
        """``(full serialization with witnesses, stripped serialization)``."""
        if len(witnesses) != len(self.inputs):
            raise ValueError("one witness per input")
        ins, outs = self._body()
        version, locktime = struct.pack("<i", self.version), struct.pack("<I", self.locktime)
        wit = b"".join(compact_size(len(w)) + b"".join(compact_size(len(x)) + x for x in w)
                       for w in witnesses)
        return version + b"\x00\x01" + ins + outs + wit + locktime, version + ins + outs + locktime


@dataclass(frozen=True, slots=True)
class SignedBitcoinTx:
    raw: bytes
    txid: TxId
    wtxid: TxId
    weight: int
    fee: int

    @property
    def vsize(self) -> int:
        return -(-self.weight // 4)


def check_signature(digest: bytes, r: int, s: int, y_parity: int, public_key: bytes, who: str) -> None:
    """Raises :class:`SignerError` unless (r, s) is a low-s signature of ``digest`` by
    ``public_key`` (64 bytes)."""
    if y_parity not in (0, 1) or not 0 < r < _SECP256K1_N or not 0 < s <= _SECP256K1_N // 2:
        raise SignerError(f"signer {who} returned a signature out of range (or high s)")
    try:
        recovered = Signature(vrs=(y_parity, r, s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError):
        raise SignerError(f"signer {who} returned a signature that recovers no key") from None
    if recovered.to_bytes() != public_key:
        raise SignerError(f"signer {who} returned a signature of another key")


async def sign_p2wpkh(tx: UnsignedTx, signer: Signer) -> SignedBitcoinTx:
    """Signs every input (each a P2WPKH output of the signer's key) and checks each answer."""
    public_key = signer.public_key
    compressed = compressed_public_key(public_key)
    pkh = hash160(compressed)
    witnesses: list[list[bytes]] = []
    for index in range(len(tx.inputs)):
        digest = tx.sighash_p2wpkh(index, pkh)
        sig = await signer.sign_digest(digest)
        check_signature(digest, sig.r, sig.s, sig.y_parity, public_key, signer.name)
        witnesses.append([der_signature(sig.r, sig.s) + bytes((SIGHASH_ALL,)), compressed])
    full, stripped = tx.serialize(witnesses)
    return SignedBitcoinTx(raw=full, txid=TxId(dsha256(stripped)[::-1].hex()),
                           wtxid=TxId(dsha256(full)[::-1].hex()),
                           weight=3 * len(stripped) + len(full), fee=tx.fee)


def payment_tx(plan: Plan, payee_scripts: Sequence[bytes], change_script: bytes) -> UnsignedTx:
    """The transaction of a :class:`Plan`: its inputs in the plan's (sorted) order, one
    output per payment in order, then the change (when the plan has any)."""
    if len(payee_scripts) != len(plan.payments):
        raise ValueError("one script per payment")
    inputs = []
    for u in plan.inputs:
        txid, _, vout = u.outpoint.partition(":")
        inputs.append(TxInput(TxId(txid), int(vout), u.value, plan.sequence))
    outputs = [TxOutput(s, p.amount) for s, p in zip(payee_scripts, plan.payments, strict=True)]
    if plan.change:
        outputs.append(TxOutput(change_script, plan.change))
    tx = UnsignedTx(tuple(inputs), tuple(outputs))
    if tx.fee != plan.fee:
        raise ValueError(f"the plan's fee {plan.fee} is not inputs minus outputs ({tx.fee})")
    return tx


__all__ = [
    "RBF_SEQUENCE",
    "SignedBitcoinTx",
    "TxInput",
    "TxOutput",
    "UnsignedTx",
    "address_script",
    "check_signature",
    "compressed_public_key",
    "der_signature",
    "dust_limit",
    "output_type",
    "p2wpkh_address",
    "p2wpkh_script",
    "payment_tx",
    "sign_p2wpkh",
]
