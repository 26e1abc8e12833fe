"""EIP-1559 payment transactions: build, sign through a :class:`watcher.ports.Signer`, check.

Pure except :func:`sign`, which awaits the signer. A native payment is a plain value
transfer; an ERC-20 payment calls ``transfer(to, amount)`` on an allow-listed token
contract with no value. The signature is checked before the transaction is returned:
``s`` in the low half, and the sender recovered from it is the hot wallet, so a signer
that answers wrongly never produces bytes that get recorded.

Fee policy (pure, :func:`quote_fees`): the tip is the node's suggested priority fee,
the fee cap twice the base fee plus the tip (room for six full blocks of base-fee rises),
both clamped to the configured caps and raised to the minimum a replacement needs
(:meth:`watcher.core.withdrawals.Fees.bumped`: at least 10% on both).
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError

from watcher.core.withdrawals import Fees, NonceBinding, Request, Sign, SignedTx
from watcher.errors import SignerError
from watcher.ports import Signer
from watcher.types import Address, TxId

TX_TYPE_EIP1559 = 2
NATIVE_GAS_LIMIT = 21_000
ERC20_TRANSFER_SELECTOR = keccak(b"transfer(address,uint256)")[:4]
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_UINT256_MAX = 2**256 - 1


def rlp_encode(item: object) -> bytes:
    """Recursive-length prefix encoding of bytes, non-negative integers and lists of them."""
    if isinstance(item, bool):
        raise TypeError("RLP has no booleans")
    if isinstance(item, int):
        if item < 0:
            raise ValueError("RLP integers are non-negative")
        item = item.to_bytes((item.bit_length() + 7) // 8, "big")  # 0 is the empty string
    if isinstance(item, bytes):
        if len(item) == 1 and item[0] < 0x80:
            return item
        return _rlp_length(len(item), 0x80) + item
    if isinstance(item, list):
        body = b"".join(rlp_encode(x) for x in item)
        return _rlp_length(len(body), 0xC0) + body
    raise TypeError(f"RLP cannot encode {type(item).__name__}")


def _rlp_length(n: int, offset: int) -> bytes:
    if n < 56:
        return bytes([offset + n])
    nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([offset + 55 + len(nb)]) + nb


@dataclass(frozen=True, slots=True)
class Eip1559Tx:
    chain_id: int
    nonce: int
    max_priority_fee_per_gas: int
    max_fee_per_gas: int
    gas_limit: int
    to: bytes
    """20 bytes: the recipient (native) or the token contract (ERC-20)."""
    value: int
    data: bytes = b""

    def __post_init__(self) -> None:
        for name in ("chain_id", "nonce", "max_priority_fee_per_gas", "max_fee_per_gas", "gas_limit",
                     "value"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _UINT256_MAX:
                raise ValueError(f"{name} must be an integer in 0 .. 2**256-1")
        if len(self.to) != 20:
            raise ValueError("to must be 20 bytes")
        if self.max_priority_fee_per_gas > self.max_fee_per_gas:
            raise ValueError("max_priority_fee_per_gas must not exceed max_fee_per_gas")

    def _fields(self) -> list[object]:
        return [self.chain_id, self.nonce, self.max_priority_fee_per_gas, self.max_fee_per_gas,
                self.gas_limit, self.to, self.value, self.data, []]

    def signing_hash(self) -> bytes:
        return keccak(bytes([TX_TYPE_EIP1559]) + rlp_encode(self._fields()))

    def encode_signed(self, y_parity: int, r: int, s: int) -> bytes:
        return bytes([TX_TYPE_EIP1559]) + rlp_encode([*self._fields(), y_parity, r, s])

    @property
    def fees(self) -> Fees:
        return Fees(self.max_fee_per_gas, self.max_priority_fee_per_gas)

    @property
    def max_cost_of_gas(self) -> int:
        """The most the transaction can pay for gas, in wei: the ``fee`` of the events."""
        return self.gas_limit * self.max_fee_per_gas


@dataclass(frozen=True, slots=True)
class SignedEvmTx:
    tx: Eip1559Tx
    raw: bytes
    txid: TxId
    sender: Address


def address_bytes(address: str) -> bytes:
    if not isinstance(address, str) or len(address) != 42 or not address.startswith("0x"):
        raise ValueError("not 0x followed by 40 hex digits")
    return bytes.fromhex(address[2:])


def native_payment(chain_id: int, nonce: int, to: Address, amount: int, fees: Fees) -> Eip1559Tx:
    return Eip1559Tx(chain_id, nonce, fees.tip, fees.max_fee, NATIVE_GAS_LIMIT, address_bytes(to), amount)


def erc20_transfer_data(to: Address, amount: int) -> bytes:
    if not 0 <= amount <= _UINT256_MAX:
        raise ValueError("amount must fit in uint256")
    return ERC20_TRANSFER_SELECTOR + bytes(12) + address_bytes(to) + amount.to_bytes(32, "big")


def erc20_payment(chain_id: int, nonce: int, token: Address, to: Address, amount: int, fees: Fees,
                  gas_limit: int) -> Eip1559Tx:
    return Eip1559Tx(chain_id, nonce, fees.tip, fees.max_fee, gas_limit, address_bytes(token), 0,
                     erc20_transfer_data(to, amount))


def txid_of(raw: bytes) -> TxId:
    return TxId("0x" + keccak(raw).hex())


def sender_of(public_key: bytes) -> Address:
    return Address(to_checksum_address(keccak(public_key)[-20:]))


async def sign(tx: Eip1559Tx, signer: Signer) -> SignedEvmTx:
    """Signs ``tx`` and checks the answer; raises :class:`SignerError` on a wrong one."""
    digest = tx.signing_hash()
    sig = await signer.sign_digest(digest)
    if sig.y_parity not in (0, 1) or not 0 < sig.r < _SECP256K1_N or not 0 < sig.s <= _SECP256K1_N // 2:
        raise SignerError(f"signer {signer.name} returned a signature out of range (or high s)")
    expected = signer.public_key
    try:
        recovered = Signature(vrs=(sig.y_parity, sig.r, sig.s)).recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError):
        raise SignerError(f"signer {signer.name} returned a signature that recovers no key") from None
    if recovered.to_bytes() != expected:
        raise SignerError(f"signer {signer.name} returned a signature of another key")
    raw = tx.encode_signed(sig.y_parity, sig.r, sig.s)
    return SignedEvmTx(tx, raw, txid_of(raw), sender_of(expected))


def quote_fees(base_fee: int, priority_fee: int, cap: Fees, minimum: Fees) -> Fees | None:
    """Fees for a payment from the node's latest base fee and suggested priority fee.

    ``minimum`` is what the state machine demands (zero for a first transaction, the
    previous fees raised by 10% for a replacement). Returns None when the cap leaves no
    room for it: the payment is then sent again unchanged, never with lower fees.
    """
    if min(base_fee, priority_fee) < 0:
        raise ValueError("fees are non-negative")
    tip = max(min(priority_fee, cap.tip), minimum.tip)
    max_fee = max(min(2 * base_fee + tip, cap.max_fee), minimum.max_fee)
    tip = min(tip, max_fee)
    fees = Fees(max_fee, tip)
    if not cap.covers(fees) or not fees.covers(minimum):
        return None
    return fees


async def sign_withdrawal(request: Request, decision: Sign, *, chain_id: int, base_fee: int,
                          priority_fee: int, cap: Fees, token_gas_limit: int,
                          signer: Signer) -> SignedTx | None:
    """Carries out a :class:`Sign` decision on an EVM chain: the payment of ``request``
    (native, or ERC-20 ``transfer`` when it names a token) with the decision's nonce, fees
    from the node's quote raised to the decision's minimum. None when the cap leaves no room
    (the state machine decides again later)."""
    if not isinstance(decision.binding, NonceBinding) or decision.request_id != request.request_id:
        raise ValueError("an EVM payment is signed for its own request and nonce")
    fees = quote_fees(base_fee, priority_fee, cap, decision.min_fees)
    if fees is None:
        return None
    nonce = decision.binding.nonce
    if request.token_contract is None:
        tx = native_payment(chain_id, nonce, request.to_address, request.amount, fees)
    else:
        tx = erc20_payment(chain_id, nonce, request.token_contract, request.to_address, request.amount,
                           fees, token_gas_limit)
    signed = await sign(tx, signer)
    return SignedTx(signed.txid, signed.raw, decision.binding, fees, tx.max_cost_of_gas)
