"""Intake: every verdict from a literal input, the signature's golden vector, limits, duplicates."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from nacl.signing import SigningKey

from chains.evm.adapter import EvmAddressCodec
from watcher.core.withdrawals import DAY_MS, MachineConfig, RequestId, WithdrawalBook, load_settled
from watcher.core.withdrawals import Fees as _Fees
from watcher.errors import InvalidAddress
from watcher.types import Address, AddressKey, AssetSymbol, ChainId
from watcher.withdrawals.intake import (
    Accepted,
    AssetRule,
    ChainRule,
    DeadLetter,
    IntakePolicy,
    IntakeState,
    Rejected,
    RejectReason,
    Repeat,
    canonical_bytes,
    evaluate,
)

SEED = bytes(range(32))
SK = SigningKey(SEED)
PUBLIC_B64 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
TO = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
GOLDEN = {"request_id": "w-2026-0001", "chain": "eth", "asset": "ETH", "to_address": TO,
          "amount": "1500000000000000000"}
GOLDEN_CANONICAL = (b'{"amount":"1500000000000000000","asset":"ETH","chain":"eth",'
                    b'"request_id":"w-2026-0001","to_address":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}')
# Ed25519 of GOLDEN_CANONICAL under the key of seed 00 01 .. 1f (RFC 8032 signing, PyNaCl).
GOLDEN_SIGNATURE = "M6ptUoZdkljgQWaM+5GW9znQJA3NQcrRNLq25/NQQJ6M4RYiQYCUjBF8pCvTTv1WHbGfRMjAviIdV3IkqyZyDg=="

ETH = ChainId("eth")
TOKEN = Address("0x5FbDB2315678afecb367f032d93F642f64180aa3")


class _UtxoLikeCodec:
    """Any family's codec fits: this one knows only lower-case 'bcrt1' text."""

    def parse(self, text: str) -> tuple[Address, AddressKey]:
        if not text.startswith("bcrt1"):
            raise InvalidAddress("not a regtest bech32 address")
        return Address(text.lower()), AddressKey(text.encode())


POLICY = IntakePolicy(
    public_keys={"other": bytes(SigningKey(bytes([9]) * 32).verify_key),
                 "ledger": base64.b64decode(PUBLIC_B64)},
    chains={
        "eth": ChainRule(ETH, EvmAddressCodec(), {
            "ETH": AssetRule(AssetSymbol("ETH"), None, 18, 2 * 10**18, 3 * 10**18),
            "USDC": AssetRule(AssetSymbol("USDC"), TOKEN, 6, 10**9, 10**10),
        }),
        "btc": ChainRule(ChainId("btc"), _UtxoLikeCodec(), {
            "BTC": AssetRule(AssetSymbol("BTC"), None, 8, 10**8, 10**9),
        }),
    },
)
CFG = MachineConfig(confirmations=3, stuck_blocks=5, fee_cap=_Fees(10**12, 10**10), uses_nonces=True)


def books() -> dict[ChainId, WithdrawalBook]:
    return {ETH: WithdrawalBook(ETH, CFG), ChainId("btc"): WithdrawalBook(ChainId("btc"), CFG)}


def signed(fields: dict[str, Any], key: SigningKey = SK) -> bytes:
    body = dict(fields)
    body["signature"] = base64.b64encode(key.sign(canonical_bytes(body)).signature).decode()
    return json.dumps(body).encode()


def req(**over: Any) -> dict[str, Any]:
    return {**GOLDEN, **over}


def test_golden_signature_vector() -> None:
    assert canonical_bytes({**GOLDEN, "signature": "x"}) == GOLDEN_CANONICAL
    record = json.dumps({**GOLDEN, "signature": GOLDEN_SIGNATURE}).encode()
    verdict = evaluate(record, 1_000, POLICY, books())
    assert isinstance(verdict, Accepted), verdict
    assert verdict.signer == "ledger"
    r = verdict.request
    assert (r.request_id, r.asset, r.to_address, r.amount, r.decimals, r.token_contract) == (
        "w-2026-0001", "ETH", TO, 1_500_000_000_000_000_000, 18, None)


def test_canonical_form_is_independent_of_the_sender_formatting() -> None:
    # Keys in another order, whitespace, non-ASCII escaped: the same signed bytes.
    record = (b'{ "to_address" : "' + TO.encode() + b'", "amount":"1500000000000000000", '
              b'"asset":"ETH","chain":"\\u0065th","request_id":"w-2026-0001","signature":"'
              + GOLDEN_SIGNATURE.encode() + b'"}')
    assert isinstance(evaluate(record, 1_000, POLICY, books()), Accepted)


def test_non_ascii_is_signed_as_utf8() -> None:
    body = req(note="café")
    assert canonical_bytes(body) == (
        b'{"amount":"1500000000000000000","asset":"ETH","chain":"eth","note":"caf\xc3\xa9",'
        b'"request_id":"w-2026-0001","to_address":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}')
    assert isinstance(evaluate(signed(body), 1, POLICY, books()), Accepted)


@dataclass(frozen=True)
class Case:
    name: str
    record: bytes | None
    reason: RejectReason | None  # None: a dead letter
    message: str = ""


def _tampered() -> bytes:
    body = json.loads(signed(req()))
    body["amount"] = "1600000000000000000"
    return json.dumps(body).encode()


CASES = [
    Case("not JSON", b"{nope", None),
    Case("not UTF-8", b'{"a":"\xff"}', None),
    Case("a JSON array", b"[1,2]", None),
    Case("a JSON string", b'"w-1"', None),
    Case("NaN is not JSON", b'{"amount": NaN}', None),
    Case("tombstone", None, None),
    Case("missing field", signed({k: v for k, v in GOLDEN.items() if k != "amount"}),
         RejectReason.MALFORMED, "field amount is missing"),
    Case("number where a string belongs", signed(req(amount=15)), RejectReason.MALFORMED,
         "field amount must be a string"),
    Case("request_id with a space", signed(req(request_id="w 1")), RejectReason.MALFORMED, "request_id"),
    Case("request_id of 129 characters", signed(req(request_id="a" * 129)), RejectReason.MALFORMED,
         "request_id"),
    Case("request_id with a trailing newline", signed(req(request_id="w-1\n")), RejectReason.MALFORMED,
         "request_id"),
    Case("signature not base64", json.dumps({**GOLDEN, "signature": "!!"}).encode(),
         RejectReason.MALFORMED, "not base64"),
    Case("signature of 32 bytes", json.dumps({**GOLDEN, "signature": base64.b64encode(bytes(32)).decode()}
                                             ).encode(), RejectReason.MALFORMED, "32 bytes"),
    Case("a key appears twice", b'{"amount":"1","amount":"2"}', RejectReason.MALFORMED, "twice"),
    Case("signed by an unknown key", signed(req(), SigningKey(bytes([1]) * 32)),
         RejectReason.BAD_SIGNATURE, "does not verify"),
    Case("content changed after signing", _tampered(), RejectReason.BAD_SIGNATURE, "does not verify"),
    Case("unknown chain", signed(req(chain="sol")), RejectReason.UNKNOWN_CHAIN, "'sol'"),
    Case("asset not allowed on the chain", signed(req(asset="DAI")), RejectReason.UNKNOWN_ASSET, "'DAI'"),
    Case("asset of another chain", signed(req(asset="BTC")), RejectReason.UNKNOWN_ASSET, "'BTC'"),
    Case("bad EIP-55 checksum", signed(req(to_address="0x70997970c51812dc3A010C7d01b50e0d17dc79C8")),
         RejectReason.INVALID_ADDRESS, "bad checksum"),
    Case("address too short", signed(req(to_address="0x1234")), RejectReason.INVALID_ADDRESS, "40 hex"),
    Case("EVM address on a UTXO chain", signed(req(chain="btc", asset="BTC", amount="5")),
         RejectReason.INVALID_ADDRESS, "regtest"),
    Case("zero", signed(req(amount="0")), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("leading zero", signed(req(amount="01")), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("sign", signed(req(amount="+1")), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("negative", signed(req(amount="-1")), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("exponent", signed(req(amount="1e18")), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("decimal point", signed(req(amount="1.5")), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("unicode digits", signed(req(amount="\uff11")), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("79 digits", signed(req(amount="1" * 79)), RejectReason.INVALID_AMOUNT, "positive integer"),
    Case("above the per-request limit", signed(req(amount=str(2 * 10**18 + 1))),
         RejectReason.LIMIT_EXCEEDED, "per-request limit of 2000000000000000000 for ETH"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_verdicts(case: Case) -> None:
    verdict = evaluate(case.record, 1_000, POLICY, books())
    if case.reason is None:
        assert isinstance(verdict, DeadLetter), verdict
        return
    assert isinstance(verdict, Rejected), verdict
    assert verdict.reason is case.reason
    assert case.message in verdict.message


def test_rejection_echoes_only_well_formed_fields() -> None:
    v = evaluate(signed(req(amount="-5", request_id="ok-1")), 1, POLICY, books())
    assert isinstance(v, Rejected)
    assert (v.request_id, v.chain, v.asset, v.to_address, v.amount, v.decimals) == (
        "ok-1", "eth", "ETH", TO, None, 18)
    v = evaluate(signed(req(request_id="bad id")), 1, POLICY, books())
    assert isinstance(v, Rejected) and v.request_id is None


def test_lower_case_address_is_accepted_and_made_canonical() -> None:
    v = evaluate(signed(req(to_address=TO.lower())), 1, POLICY, books())
    assert isinstance(v, Accepted) and v.request.to_address == TO


def test_erc20_request_carries_the_token() -> None:
    v = evaluate(signed(req(asset="USDC", amount="2500000")), 1, POLICY, books())
    assert isinstance(v, Accepted)
    assert (v.request.token_contract, v.request.decimals) == (TOKEN, 6)


def _accept(b: dict[ChainId, WithdrawalBook], record: bytes, now: int) -> Accepted:
    v = evaluate(record, now, POLICY, b)
    assert isinstance(v, Accepted), v
    b[v.chain].accept(v.request)
    return v


def test_exact_repeat_is_silent_and_other_content_is_a_duplicate() -> None:
    b = books()
    _accept(b, signed(req()), 1_000)
    assert evaluate(signed(req()), 2_000, POLICY, b) == Repeat(ETH, RequestId("w-2026-0001"))
    # Another requesting service signing the same content: still the same request.
    assert isinstance(evaluate(signed(req(), SigningKey(bytes([9]) * 32)), 2_000, POLICY, b), Repeat)
    v = evaluate(signed(req(amount="1")), 2_000, POLICY, b)
    assert isinstance(v, Rejected) and v.reason is RejectReason.DUPLICATE
    v = evaluate(signed(req(chain="btc", asset="BTC", to_address="bcrt1qxyz")), 2_000, POLICY, b)
    assert isinstance(v, Rejected) and v.reason is RejectReason.DUPLICATE  # unique across chains


def test_a_repeat_is_recognised_after_a_restart() -> None:
    b = books()
    _accept(b, signed(req()), 1_000)
    restored = {ETH: WithdrawalBook.restore(b[ETH].snapshot(), ETH, CFG)}
    assert isinstance(evaluate(signed(req()), 2_000, POLICY, restored), Repeat)


def test_rolling_daily_limit_survives_restarts_and_rolls() -> None:
    b = books()
    _accept(b, signed(req(request_id="a", amount=str(2 * 10**18))), 0)
    _accept(b, signed(req(request_id="b", amount=str(10**18))), 3_600_000)  # exactly at 3 ETH
    state: dict[ChainId, IntakeState] = {ETH: WithdrawalBook.restore(b[ETH].snapshot(), ETH, CFG)}
    v = evaluate(signed(req(request_id="c", amount="1")), 7_200_000, POLICY, state)
    assert isinstance(v, Rejected) and v.reason is RejectReason.LIMIT_EXCEEDED
    assert "rolling 24-hour limit of 3000000000000000000 for ETH (3000000000000000000 already" in v.message
    # 24 h after the first: its 2 ETH left the window, the 1 ETH of "b" is still in it.
    assert isinstance(evaluate(signed(req(request_id="c", amount=str(2 * 10**18))), DAY_MS, POLICY,
                               state), Accepted)
    v = evaluate(signed(req(request_id="c", amount=str(2 * 10**18 + 1))), DAY_MS, POLICY, state)
    assert isinstance(v, Rejected) and v.reason is RejectReason.LIMIT_EXCEEDED
    # Limits are per asset.
    assert isinstance(evaluate(signed(req(request_id="d", asset="USDC", amount="5")), 7_200_000,
                               POLICY, state), Accepted)


def test_an_authenticated_refusal_stays_refused() -> None:
    b = books()
    _accept(b, signed(req(request_id="a", amount=str(2 * 10**18))), 0)
    _accept(b, signed(req(request_id="b", amount=str(10**18))), 0)
    v = evaluate(signed(req(request_id="c", amount="7")), 1_000, POLICY, b)
    assert isinstance(v, Rejected) and v.reason is RejectReason.LIMIT_EXCEEDED and v.remember_in == ETH
    b[ETH].reject(RequestId("c"), v.digest)
    changes = b[ETH].take_changes()  # the refusal is a settled record, not in the snapshot
    assert list(changes.records) == ["c"] and b'"c"' not in changes.snapshot
    restored = {ETH: WithdrawalBook.restore(changes.snapshot, ETH, CFG, load_settled(
        (k.encode(), v) for k, v in changes.records.items()))}
    # A day later the limit has room, but the ledger took the refusal as final.
    assert evaluate(signed(req(request_id="c", amount="7")), DAY_MS + 1, POLICY, restored) == Repeat(
        ETH, RequestId("c"))
    v = evaluate(signed(req(request_id="c", amount="8")), DAY_MS + 1, POLICY, restored)
    assert isinstance(v, Rejected) and v.reason is RejectReason.DUPLICATE


def test_unauthenticated_refusals_are_not_remembered() -> None:
    for record in (signed(req(), SigningKey(bytes([1]) * 32)), signed(req(amount=15)),
                   signed(req(chain="sol"))):
        v = evaluate(record, 1, POLICY, books())
        assert isinstance(v, Rejected) and v.remember_in is None
