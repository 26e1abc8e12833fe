"""Golden vectors of EIP-1559 payments, the signature checks, RLP and the fee policy.

The raw bytes and txids below were produced once by eth-account's own
``Account.sign_transaction`` from the same fields and key (an independent
encoder and signer), and written here literally.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from chains.evm.tx import (
    Eip1559Tx,
    erc20_payment,
    native_payment,
    quote_fees,
    rlp_encode,
    sign,
    sign_withdrawal,
)
from watcher.core.withdrawals import BroadcastOutcome, Fees, NonceBinding, Request, RequestId, Sign
from watcher.errors import ErrorKind, SignerError
from watcher.ports import RecoverableSignature
from watcher.types import Address, AssetSymbol, TxId
from watcher.withdrawals.signer import HotKeySigner

KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
HOT = Address("0x2c7536E3605D9C16a7a3D7b1898e529396a65c23")
TO = Address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
TOKEN = Address("0x5FbDB2315678afecb367f032d93F642f64180aa3")
FEES = Fees(max_fee=30_000_000_000, tip=1_500_000_000)

NATIVE_RAW = (
    "02f875827a69078459682f008506fc23ac008252089470997970c51812dc3a010c7d01b50e0d17dc79c8"
    "8814d1120d7b16000080c001a06b298ce657bb9dcf72c74094f23f822a8689aead109eaacca3764fe188"
    "b4b201a012d840eeb3d09744bab305fc0f532b59c7bf324cbdbd9abcb80cf3521073a710"
)
NATIVE_TXID = "0x38896b6d4396e4dfbe3762b0221393e9a1edc4f609368e6d37a47678dce691a5"
ERC20_RAW = (
    "02f8b2827a69088459682f008506fc23ac0082fde8945fbdb2315678afecb367f032d93f642f64180aa3"
    "80b844a9059cbb00000000000000000000000070997970c51812dc3a010c7d01b50e0d17dc79c8000000"
    "00000000000000000000000000000000000000000000000000002625a0c001a030f559fada03d0389fdc"
    "3965641132fc98a40b7cdb154d44b988a6b0ac8da096a0047ac1f7a1a116f6d92b7500455a5e99b07957"
    "a05e014c0c5a0526f420dacff3"
)
ERC20_TXID = "0x106730301b3a4a8fbe4748f855d7abed18abe2746e7aa34a311e7ab11a853122"


async def test_native_payment_golden() -> None:
    tx = native_payment(31337, 7, TO, 1_500_000_000_000_000_000, FEES)
    signed = await sign(tx, HotKeySigner("hot", KEY))
    assert signed.raw.hex() == NATIVE_RAW
    assert signed.txid == NATIVE_TXID
    assert signed.sender == HOT
    assert tx.max_cost_of_gas == 21_000 * 30_000_000_000


async def test_erc20_payment_golden() -> None:
    tx = erc20_payment(31337, 8, TOKEN, TO, 2_500_000, FEES, 65_000)
    assert tx.value == 0
    assert tx.data.hex().startswith("a9059cbb")  # transfer(address,uint256)
    signed = await sign(tx, HotKeySigner("hot", KEY))
    assert signed.raw.hex() == ERC20_RAW
    assert signed.txid == ERC20_TXID


@pytest.mark.parametrize(("item", "encoded"), [
    (b"", "80"), (0, "80"), (b"\x7f", "7f"), (b"\x80", "8180"), (1024, "820400"),
    (b"dog", "83646f67"), ([], "c0"), ([b"cat", b"dog"], "c88363617483646f67"),
    (b"a" * 56, "b838" + "61" * 56), ([[], [[]], [[], [[]]]], "c7c0c1c0c3c0c1c0"),
])
def test_rlp_vectors(item: object, encoded: str) -> None:
    # Vectors of the Ethereum RLP specification (wiki / yellow paper appendix B).
    assert rlp_encode(item).hex() == encoded


class _LyingSigner:
    """A remote signer that answers with someone else's signature or a high s."""

    def __init__(self, sig: RecoverableSignature) -> None:
        self._sig = sig
        self._real = HotKeySigner("real", KEY)

    @property
    def name(self) -> str:
        return "remote"

    @property
    def public_key(self) -> bytes:
        return self._real.public_key

    async def sign_digest(self, digest: bytes) -> RecoverableSignature:
        return self._sig


async def test_signature_of_another_key_is_refused() -> None:
    other = HotKeySigner("other", bytes([7]) * 32)
    tx = native_payment(31337, 7, TO, 1, FEES)
    sig = await other.sign_digest(tx.signing_hash())
    with pytest.raises(SignerError, match="another key"):
        await sign(tx, _LyingSigner(sig))


async def test_high_s_signature_is_refused() -> None:
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    tx = native_payment(31337, 7, TO, 1, FEES)
    good = await HotKeySigner("hot", KEY).sign_digest(tx.signing_hash())
    flipped = RecoverableSignature(good.r, n - good.s, 1 - good.y_parity)  # valid ECDSA, malleable
    with pytest.raises(SignerError, match="high s"):
        await sign(tx, _LyingSigner(flipped))


def test_tx_fields_are_checked() -> None:
    with pytest.raises(ValueError, match="max_priority_fee_per_gas"):
        Eip1559Tx(1, 0, 10, 9, 21_000, bytes(20), 0)
    with pytest.raises(ValueError, match="nonce"):
        Eip1559Tx(1, -1, 1, 1, 21_000, bytes(20), 0)
    with pytest.raises(ValueError, match="20 bytes"):
        Eip1559Tx(1, 0, 1, 1, 21_000, bytes(19), 0)


GWEI = 10**9
CAP = Fees(max_fee=100 * GWEI, tip=3 * GWEI)


@dataclass(frozen=True)
class FeeCase:
    name: str
    base_fee: int
    priority: int
    minimum: Fees
    want: Fees | None


FEE_CASES = [
    FeeCase("first: twice the base fee plus the tip", 10 * GWEI, 2 * GWEI, Fees(0, 0),
            Fees(22 * GWEI, 2 * GWEI)),
    FeeCase("tip clamped to its cap", 10 * GWEI, 9 * GWEI, Fees(0, 0), Fees(23 * GWEI, 3 * GWEI)),
    FeeCase("fee cap clamped", 60 * GWEI, 1 * GWEI, Fees(0, 0), Fees(100 * GWEI, 1 * GWEI)),
    FeeCase("replacement raised to the minimum", 10 * GWEI, 1 * GWEI, Fees(33 * GWEI, 2 * GWEI),
            Fees(33 * GWEI, 2 * GWEI)),
    FeeCase("market above the minimum wins", 20 * GWEI, 2 * GWEI, Fees(23 * GWEI, 2 * GWEI),
            Fees(42 * GWEI, 2 * GWEI)),
    FeeCase("minimum above the cap: no quote", 10 * GWEI, 1 * GWEI, Fees(110 * GWEI, 1 * GWEI), None),
    FeeCase("tip minimum above the tip cap: no quote", 10 * GWEI, 1 * GWEI, Fees(0, 4 * GWEI), None),
]


@pytest.mark.parametrize("case", FEE_CASES, ids=lambda c: c.name)
def test_quote_fees(case: FeeCase) -> None:
    assert quote_fees(case.base_fee, case.priority, CAP, case.minimum) == case.want


def test_bump_is_at_least_ten_percent_on_both() -> None:
    assert Fees(100, 10).bumped() == Fees(110, 11)
    assert Fees(101, 1).bumped() == Fees(112, 2)  # rounded up, and at least one more
    assert Fees(7, 0).bumped() == Fees(8, 0)


def _request(asset: str, amount: int, token: Address | None) -> Request:
    return Request(RequestId("w-1"), AssetSymbol(asset), token, TO, amount, 18, "d", 0)


async def test_sign_decision_gives_the_golden_native_payment() -> None:
    # Base fee 14.25 gwei and tip 1.5 gwei quote exactly the golden vector's 30 / 1.5 gwei.
    d = Sign(RequestId("w-1"), NonceBinding(7), Fees(0, 0), None)
    s = await sign_withdrawal(_request("ETH", 1_500_000_000_000_000_000, None), d, chain_id=31337,
                              base_fee=14_250_000_000, priority_fee=1_500_000_000,
                              cap=Fees(10**12, 10**10), token_gas_limit=65_000,
                              signer=HotKeySigner("hot", KEY))
    assert s is not None
    assert (s.raw.hex(), s.txid, s.binding, s.fees, s.fee) == (
        NATIVE_RAW, NATIVE_TXID, NonceBinding(7), FEES, 21_000 * 30_000_000_000)


async def test_sign_decision_gives_the_golden_erc20_payment() -> None:
    d = Sign(RequestId("w-1"), NonceBinding(8), Fees(30_000_000_000, 1_500_000_000), TxId("0xold"))
    s = await sign_withdrawal(_request("USDC", 2_500_000, TOKEN), d, chain_id=31337, base_fee=1,
                              priority_fee=1, cap=Fees(10**12, 10**10), token_gas_limit=65_000,
                              signer=HotKeySigner("hot", KEY))
    assert s is not None and (s.raw.hex(), s.txid) == (ERC20_RAW, ERC20_TXID)


async def test_sign_decision_refuses_another_request_and_respects_the_cap() -> None:
    signer = HotKeySigner("hot", KEY)
    req = _request("ETH", 1, None)
    with pytest.raises(ValueError, match="own request"):
        await sign_withdrawal(req, Sign(RequestId("w-2"), NonceBinding(0), Fees(0, 0), None), chain_id=1,
                              base_fee=1, priority_fee=1, cap=CAP, token_gas_limit=65_000, signer=signer)
    over = Sign(RequestId("w-1"), NonceBinding(0), Fees(CAP.max_fee + 1, 1), TxId("0xold"))
    assert await sign_withdrawal(req, over, chain_id=1, base_fee=1, priority_fee=1, cap=CAP,
                                 token_gas_limit=65_000, signer=signer) is None


@pytest.mark.parametrize(("kind", "outcome"), [
    (None, BroadcastOutcome.OK), (ErrorKind.ALREADY_KNOWN, BroadcastOutcome.ALREADY_KNOWN),
    (ErrorKind.UNDERPRICED, BroadcastOutcome.UNDERPRICED),
    (ErrorKind.NONCE_TOO_LOW, BroadcastOutcome.CONSUMED),
    (ErrorKind.RETRIABLE, BroadcastOutcome.RETRIABLE), (ErrorKind.FINAL, BroadcastOutcome.REFUSED),
])
def test_send_errors_classified_once(kind: ErrorKind | None, outcome: BroadcastOutcome) -> None:
    assert BroadcastOutcome.of(kind) is outcome
