"""Build and sign regtest transactions for the tests (btcd has no wallet).

Funds come from the dev-only mining key (``config/local/btc-miner.json``): btcd mines
every coinbase to its P2WPKH address, so every input this wallet spends is a P2WPKH
output of that key, signed with BIP143 and low-S ECDSA (fastecdsa). Outputs can pay any
script: the five standard types are built from arbitrary hashes here, and the address
texts are encoded here (bech32/bech32m, base58check) independently of the watcher's own
codec, so an end-to-end test checks one against the other.

Written for this project from BIP141/143/173/350; used by the tests and by the dev stack's
traffic generator (deploy/local/traffic.py), never by the watcher.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from fastecdsa import curve, ecdsa, keys

MINER_FILE = Path(__file__).resolve().parents[2] / "config" / "local" / "btc-miner.json"
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_RBF = 0xFFFFFFFD  # BIP125: below 0xfffffffe signals replaceability
COINBASE_MATURITY = 100


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def dsha256(data: bytes) -> bytes:
    return sha256(sha256(data))


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", sha256(data)).digest()


# ------------------------------------------------------------------ scripts and addresses


def p2pkh_script(h160: bytes) -> bytes:
    return b"\x76\xa9\x14" + h160 + b"\x88\xac"


def p2sh_script(h160: bytes) -> bytes:
    return b"\xa9\x14" + h160 + b"\x87"


def p2wpkh_script(h160: bytes) -> bytes:
    return b"\x00\x14" + h160


def p2wsh_script(h256: bytes) -> bytes:
    return b"\x00\x20" + h256


def p2tr_script(xonly: bytes) -> bytes:
    return b"\x51\x20" + xonly


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58check(version: int, payload: bytes) -> str:
    data = bytes([version]) + payload
    data += dsha256(data)[:4]
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(values: Sequence[int]) -> int:
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def segwit_address(hrp: str, version: int, program: bytes) -> str:
    acc = bits = 0
    data = [version]
    for byte in program:
        acc = (acc << 8) | byte
        bits += 8
        while bits >= 5:
            bits -= 5
            data.append((acc >> bits) & 31)
    if bits:
        data.append((acc << (5 - bits)) & 31)
    const = 1 if version == 0 else 0x2BC830A3  # bech32 for v0, bech32m (BIP350) above
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    pm = _polymod(expanded + data + [0] * 6) ^ const
    checksum = [(pm >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[d] for d in data + checksum)


@dataclass(frozen=True)
class Payee:
    """A regtest destination: its address text (lower-case as the contract says) and
    output script."""

    kind: str
    address: str
    script: bytes


def regtest_payee(kind: str, seed: str) -> Payee:
    """A fresh destination of ``kind`` (p2pkh, p2sh, p2wpkh, p2wsh, p2tr) from a seed text."""
    h32 = sha256(b"chain-watcher test payee " + kind.encode() + b" " + seed.encode())
    h20 = h32[:20]
    if kind == "p2pkh":
        return Payee(kind, base58check(0x6F, h20), p2pkh_script(h20))
    if kind == "p2sh":
        return Payee(kind, base58check(0xC4, h20), p2sh_script(h20))
    if kind == "p2wpkh":
        return Payee(kind, segwit_address("bcrt", 0, h20), p2wpkh_script(h20))
    if kind == "p2wsh":
        return Payee(kind, segwit_address("bcrt", 0, h32), p2wsh_script(h32))
    if kind == "p2tr":
        return Payee(kind, segwit_address("bcrt", 1, h32), p2tr_script(h32))
    raise ValueError(kind)


# ------------------------------------------------------------------ transactions


def varint(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


@dataclass(frozen=True)
class Coin:
    """A spendable P2WPKH output of the mining key."""

    txid: str
    vout: int
    value: int


@dataclass
class Tx:
    inputs: list[tuple[Coin, int]]
    """(coin, sequence)"""
    outputs: list[tuple[bytes, int]]
    """(script, value in satoshis)"""
    version: int = 2
    locktime: int = 0
    witnesses: list[list[bytes]] = field(default_factory=list)

    def _base(self) -> tuple[bytes, bytes, bytes]:
        ins = varint(len(self.inputs)) + b"".join(
            bytes.fromhex(c.txid)[::-1] + struct.pack("<I", c.vout) + b"\x00"
            + struct.pack("<I", seq) for c, seq in self.inputs)
        outs = varint(len(self.outputs)) + b"".join(
            struct.pack("<q", v) + varint(len(s)) + s for s, v in self.outputs)
        return struct.pack("<i", self.version), ins, outs

    def serialize(self) -> bytes:
        version, ins, outs = self._base()
        wit = b"".join(varint(len(w)) + b"".join(varint(len(i)) + i for i in w)
                       for w in self.witnesses)
        return version + b"\x00\x01" + ins + outs + wit + struct.pack("<I", self.locktime)

    @property
    def txid(self) -> str:
        version, ins, outs = self._base()
        return dsha256(version + ins + outs + struct.pack("<I", self.locktime))[::-1].hex()


class MinerKey:
    def __init__(self) -> None:
        data = json.loads(MINER_FILE.read_text())
        self.secret = int(data["private_key_hex"], 16)
        point = keys.get_public_key(self.secret, curve.secp256k1)
        self.pubkey = bytes([2 + (point.y & 1)]) + point.x.to_bytes(32, "big")
        assert self.pubkey.hex() == data["public_key_hex"]
        self.h160 = hash160(self.pubkey)
        self.script = p2wpkh_script(self.h160)
        self.address = segwit_address("bcrt", 0, self.h160)
        assert self.address == data["address"]

    def sign(self, tx: Tx) -> Tx:
        """BIP143 SIGHASH_ALL signatures of every input (all P2WPKH of this key)."""
        version, _, _ = tx._base()
        prevouts = b"".join(bytes.fromhex(c.txid)[::-1] + struct.pack("<I", c.vout)
                            for c, _ in tx.inputs)
        sequences = b"".join(struct.pack("<I", s) for _, s in tx.inputs)
        outputs = b"".join(struct.pack("<q", v) + varint(len(s)) + s for s, v in tx.outputs)
        script_code = b"\x19\x76\xa9\x14" + self.h160 + b"\x88\xac"
        tx.witnesses = []
        for coin, seq in tx.inputs:
            preimage = (version + dsha256(prevouts) + dsha256(sequences)
                        + bytes.fromhex(coin.txid)[::-1] + struct.pack("<I", coin.vout)
                        + script_code + struct.pack("<q", coin.value) + struct.pack("<I", seq)
                        + dsha256(outputs) + struct.pack("<I", tx.locktime)
                        + struct.pack("<I", 1))
            digest = dsha256(preimage)
            r, s = ecdsa.sign(digest, self.secret, curve=curve.secp256k1, prehashed=True)
            if s > curve.secp256k1.q // 2:
                s = curve.secp256k1.q - s  # BIP62 low S, required by standardness
            tx.witnesses.append([_der(r, s) + b"\x01", self.pubkey])
        return tx


def _der(r: int, s: int) -> bytes:
    def part(x: int) -> bytes:
        b = x.to_bytes(32, "big").lstrip(b"\0")
        if b[0] & 0x80:
            b = b"\0" + b
        return b"\x02" + bytes([len(b)]) + b

    body = part(r) + part(s)
    return b"\x30" + bytes([len(body)]) + body


class Rpc(Protocol):
    def rpc(self, method: str, *params: Any, timeout: float = 60.0) -> Any: ...


def sats(value: Any) -> int:
    return int(Decimal(str(value)) * 100_000_000)


class RegtestWallet:
    """Spends the mining key's mature coinbases (and its own change), one coin per payment."""

    def __init__(self, node: Rpc) -> None:
        self.node = node
        self.key = MinerKey()
        self._spent: set[tuple[str, int]] = set()
        self._change: list[Coin] = []
        self._coinbases: dict[str, list[Coin]] = {}

    def mature_coinbases(self) -> list[Coin]:
        height = int(self.node.rpc("getblockcount"))
        coins = []
        for h in range(1, height - COINBASE_MATURITY + 1):
            block_hash = str(self.node.rpc("getblockhash", h))
            cached = self._coinbases.get(block_hash)
            if cached is None:
                txid = self.node.rpc("getblock", block_hash, 1)["tx"][0]
                tx = self.node.rpc("getrawtransaction", txid, 1)
                cached = [Coin(txid, n, sats(out["value"])) for n, out in enumerate(tx["vout"])
                          if out["scriptPubKey"]["hex"] == self.key.script.hex()]
                self._coinbases[block_hash] = cached
            coins.extend(cached)
        return coins

    def coin(self) -> Coin:
        """An unspent coin, mining a block for a new mature coinbase when none is left."""
        while True:
            for c in self._change + self.mature_coinbases():
                if (c.txid, c.vout) in self._spent:
                    continue
                # Unspent on chain and in the mempool (another wallet, or a previous run);
                # btcd's gettxout does not see mempool spends, gettxspendingprevout does.
                spending = self.node.rpc("gettxspendingprevout",
                                         [{"txid": c.txid, "vout": c.vout}])
                if (self.node.rpc("gettxout", c.txid, c.vout, True) is None
                        or spending[0].get("spendingtxid")):
                    self._spent.add((c.txid, c.vout))
                    continue
                return c
            self.node.rpc("generate", 1)

    def build(self, outputs: Sequence[tuple[bytes, int]], *, fee: int = 2_000,
              rbf: bool = False, coin: Coin | None = None) -> Tx:
        """A signed transaction paying ``outputs`` from one coin, change to the miner."""
        c = coin if coin is not None else self.coin()
        change = c.value - fee - sum(v for _, v in outputs)
        assert change > 1_000, "coin too small"
        tx = Tx([(c, SEQUENCE_RBF if rbf else SEQUENCE_FINAL)],
                [*outputs, (self.key.script, change)])
        return self.key.sign(tx)

    def send(self, tx: Tx, replaces: Tx | None = None) -> str:
        txid = str(self.node.rpc("sendrawtransaction", tx.serialize().hex()))
        assert txid == tx.txid
        self.send_known(tx, replaces)
        return txid

    def send_known(self, tx: Tx, replaces: Tx | None = None) -> None:
        """Books a transaction handed to the node by other means (its change becomes
        spendable; the change of the one it replaces is gone)."""
        for c, _ in tx.inputs:
            self._spent.add((c.txid, c.vout))
        if replaces is not None:
            self._change = [c for c in self._change if c.txid != replaces.txid]
        change_n = len(tx.outputs) - 1
        self._change.append(Coin(tx.txid, change_n, tx.outputs[change_n][1]))

    def forget(self, txid: str) -> None:
        """Drops the change of a transaction that will never confirm (replaced, reorged)."""
        self._change = [c for c in self._change if c.txid != txid]

    def pay(self, outputs: Sequence[tuple[bytes, int]], **kw: Any) -> str:
        return self.send(self.build(outputs, **kw))
