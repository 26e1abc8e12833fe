"""The UTXO family's :class:`watcher.ports.AddressCodec`: address text of one network ->
canonical text and the 34-byte index key of :mod:`chains.bitcoin.script`.

Accepted: P2PKH and P2SH (Base58Check with the network's version bytes), P2WPKH and P2WSH
(bech32, BIP173), P2TR and every other witness v1..v16 program (bech32m, BIP350) under the
network's HRP. Canonical text is lower-case bech32, or Base58Check with the network's
preferred version byte (Litecoin's old ``3...`` P2SH form becomes the ``M...`` form of
the same script, so one key has exactly one text, the one events carry).
"""

from __future__ import annotations

from chains.bitcoin import script
from chains.bitcoin.encoding import (
    base58check_decode,
    base58check_encode,
    bech32_decode,
    segwit_decode,
)
from chains.bitcoin.networks import NETWORKS, Network, network
from watcher.errors import InvalidAddress
from watcher.types import Address, AddressKey

_KNOWN_HRPS = frozenset(n.bech32_hrp for n in NETWORKS.values() if n.bech32_hrp)


class UtxoAddressCodec:
    """Parses the addresses of one network; raises :class:`InvalidAddress` with the reason."""

    __slots__ = ("_net",)

    key_size = script.KEY_SIZE

    def __init__(self, net: Network | str) -> None:
        self._net = network(net) if isinstance(net, str) else net

    @property
    def network(self) -> Network:
        return self._net

    def parse(self, text: str) -> tuple[Address, AddressKey]:
        if not isinstance(text, str):
            raise InvalidAddress(f"address must be text, got {type(text).__name__}")
        if not text:
            raise InvalidAddress("empty address")
        hrp = self._net.bech32_hrp
        if hrp is not None and text.startswith(hrp + "1"):
            # Most likely bech32: decode it first (half the cost of a failed base58 attempt
            # before it), but let a base58 text that happens to start so still parse.
            try:
                return self._parse_segwit(text)
            except InvalidAddress as segwit_error:
                try:
                    return self._parse_base58(base58check_decode(text))
                except InvalidAddress:
                    raise segwit_error from None
        try:
            payload = base58check_decode(text)
        except InvalidAddress as b58_error:
            if "1" not in text:
                raise
            try:
                return self._parse_segwit(text)
            except InvalidAddress:
                # Report the failure of the format the text was meant to be in.
                if self._looks_bech32(text):
                    raise
                raise b58_error from None
        return self._parse_base58(payload)

    def _looks_bech32(self, text: str) -> bool:
        """Meant as bech32: a known HRP, or a valid bech32 checksum (any HRP)."""
        try:
            bech32_decode(text)
        except InvalidAddress:
            pass
        else:
            return True
        lower = text.lower()
        sep = lower.rfind("1")
        if sep > 0 and lower[:sep] in _KNOWN_HRPS:
            return True
        hrp = self._net.bech32_hrp
        return hrp is not None and lower.startswith(hrp + "1")

    def _parse_base58(self, payload: bytes) -> tuple[Address, AddressKey]:
        net = self._net
        if len(payload) != 21:
            raise InvalidAddress(f"base58 payload of {len(payload)} bytes, expected 21")
        version, body = payload[0], payload[1:]
        if version == net.p2pkh_version:
            spk = b"\x76\xa9\x14" + body + b"\x88\xac"
            canonical = payload
        elif version in net.p2sh_versions:
            spk = b"\xa9\x14" + body + b"\x87"
            canonical = bytes((net.p2sh_version,)) + body
        else:
            owners = sorted(n.name for n in NETWORKS.values()
                            if version == n.p2pkh_version or version in n.p2sh_versions)
            where = f" (used by {', '.join(owners)})" if owners else ""
            raise InvalidAddress(
                f"base58 version byte {version:#04x} is not {net.name}'s{where}")
        key = script.script_key(spk)
        assert key is not None
        return Address(base58check_encode(canonical)), AddressKey(key)

    def _parse_segwit(self, text: str) -> tuple[Address, AddressKey]:
        net = self._net
        hrp, version, program = segwit_decode(text)
        if net.bech32_hrp is None:
            raise InvalidAddress(f"{net.name} has no segwit addresses (bech32 hrp {hrp!r})")
        if hrp != net.bech32_hrp:
            raise InvalidAddress(
                f"bech32 hrp {hrp!r} is not {net.name}'s {net.bech32_hrp!r}")
        if version >= 1 and not net.taproot:
            raise InvalidAddress(f"{net.name} has no witness v{version} outputs")
        key = script.witness_key(version, program)
        # Re-encoding gives the lower-case form with the checksum variant of its version.
        return Address(text.lower()), AddressKey(key)
