"""Intake of withdrawal requests: one record's bytes in, one verdict out. Pure.

The verdict is exactly one of

* :class:`Accepted`   -- authenticated and valid; hand ``request`` to
  :meth:`watcher.core.withdrawals.WithdrawalBook.accept` of ``chain``;
* :class:`Rejected`   -- a ``withdrawal.rejected`` event with the contract's ``reason``;
* :class:`Repeat`     -- the exact request was already accepted (or refused after
  authentication): no event at all;
* :class:`DeadLetter` -- not a JSON object at all: to the dead-letter topic.

Checks run in this order, and the first that fails decides: shape (``malformed``),
signature (``bad_signature``), the duplicate rule (``duplicate`` or :class:`Repeat`),
``unknown_chain``, ``unknown_asset``, ``invalid_address``, ``invalid_amount``, then the
per-request and rolling 24-hour limits (``limit_exceeded``). Authentication comes before
anything that reads the configuration, so an unsigned record learns nothing from the
reason it gets. Nothing here raises on any input.

The verdict depends only on the record, ``now_ms`` and the state passed in: the
runtime passes the input record's timestamp, so reprocessing a record after a crash
(its transaction never committed) reaches the same verdict.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from watcher.core.withdrawals import Request, RequestId
from watcher.errors import InvalidAddress
from watcher.ports import AddressCodec
from watcher.types import Address, AddressKey, AssetSymbol, ChainId

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
AMOUNT_RE = re.compile(r"^[1-9][0-9]*\Z")
MAX_AMOUNT_DIGITS = 78
"""2**256 has 78 digits: nothing longer is an amount on any chain (and int() stays cheap)."""
REQUIRED_FIELDS = ("request_id", "chain", "asset", "to_address", "amount", "signature")


class RejectReason(StrEnum):
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_CHAIN = "unknown_chain"
    UNKNOWN_ASSET = "unknown_asset"
    INVALID_ADDRESS = "invalid_address"
    INVALID_AMOUNT = "invalid_amount"
    LIMIT_EXCEEDED = "limit_exceeded"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True)
class AssetRule:
    symbol: AssetSymbol
    token_contract: Address | None
    decimals: int
    per_request_limit: int
    daily_limit: int


@dataclass(frozen=True, slots=True)
class ChainRule:
    chain: ChainId
    codec: AddressCodec
    assets: Mapping[str, AssetRule]
    """Only the assets listed here may be withdrawn (the ERC-20 allow-list)."""
    min_amount: Callable[[AddressKey], int] | None = None
    """The smallest amount a payment to the address may carry (UTXO: the dust limit of its
    output script, which nodes refuse to relay below); None: any positive amount."""


@dataclass(frozen=True, slots=True)
class IntakePolicy:
    public_keys: Mapping[str, bytes]
    """Requesting service name -> its raw 32-byte Ed25519 public key."""
    chains: Mapping[str, ChainRule]


class IntakeState(Protocol):
    """What intake reads of a chain's withdrawal state (a ``WithdrawalBook``)."""

    def seen(self, request_id: str, digest: str) -> bool | None:
        """None: the id was never taken; True: taken by this very request; False: by other
        content."""
        ...

    def used_today(self, asset: AssetSymbol, now_ms: int) -> int: ...


@dataclass(frozen=True, slots=True)
class Accepted:
    chain: ChainId
    request: Request
    signer: str
    """Which requesting service's key verified the signature (for logs and metrics)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    message: str
    digest: str
    """SHA-256 of the canonical bytes (of the raw record while it has none): part of the event id."""
    request_id: str | None = None
    chain: str | None = None
    asset: str | None = None
    to_address: str | None = None
    amount: str | None = None
    decimals: int | None = None
    remember_in: ChainId | None = None
    """Set for an authenticated request of a configured chain: the runtime records it with
    that chain's :meth:`WithdrawalBook.reject`, so that the same request sent again later
    (when a limit has rolled, say) stays refused instead of being paid after the ledger
    took the refusal as final."""


@dataclass(frozen=True, slots=True)
class Repeat:
    chain: ChainId
    request_id: RequestId


@dataclass(frozen=True, slots=True)
class DeadLetter:
    error: str


Verdict = Accepted | Rejected | Repeat | DeadLetter


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def canonical_bytes(request: Mapping[str, Any]) -> bytes:
    """The signed form: the request without ``signature``, keys sorted, ``,`` and ``:``
    separators, no whitespace, UTF-8 (non-ASCII characters are not escaped)."""
    body = {k: v for k, v in request.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def evaluate(value: bytes | None, now_ms: int, policy: IntakePolicy,
             states: Mapping[ChainId, IntakeState]) -> Verdict:
    """The verdict on one input record's value. ``states`` holds every chain's withdrawal
    state, so that a ``request_id`` is unique across chains."""
    if value is None:
        return DeadLetter("empty record (tombstone)")
    try:
        obj = json.loads(value.decode("utf-8"), object_pairs_hook=_pairs, parse_constant=_no_constant)
    except _DuplicateKey as exc:
        return Rejected(RejectReason.MALFORMED, f"field {exc} appears twice",
                        hashlib.sha256(value).hexdigest())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return DeadLetter(f"not JSON: {type(exc).__name__}")
    if not isinstance(obj, dict):
        return DeadLetter(f"not a JSON object but {type(obj).__name__}")
    return _evaluate(obj, now_ms, policy, states)


def _evaluate(obj: dict[str, Any], now_ms: int, policy: IntakePolicy,
              states: Mapping[ChainId, IntakeState]) -> Verdict:
    canonical = canonical_bytes(obj)
    digest = hashlib.sha256(canonical).hexdigest()

    def text(name: str) -> str | None:
        v = obj.get(name)
        return v if isinstance(v, str) else None

    rid = text("request_id")
    amount_text = text("amount")

    def reject(reason: RejectReason, message: str, decimals: int | None = None,
               remember_in: ChainId | None = None) -> Rejected:
        return Rejected(reason, message, digest, remember_in=remember_in,
                        request_id=rid if rid is not None and REQUEST_ID_RE.match(rid) else None,
                        chain=text("chain"), asset=text("asset"), to_address=text("to_address"),
                        amount=amount_text if amount_text and AMOUNT_RE.match(amount_text) else None,
                        decimals=decimals)

    for name in REQUIRED_FIELDS:
        if name not in obj:
            return reject(RejectReason.MALFORMED, f"field {name} is missing")
        if not isinstance(obj[name], str):
            return reject(RejectReason.MALFORMED, f"field {name} must be a string")
    assert rid is not None and amount_text is not None
    if not REQUEST_ID_RE.match(rid):
        return reject(RejectReason.MALFORMED, "field request_id must be 1 to 128 characters of "
                                              "[A-Za-z0-9._:-]")
    try:
        signature = base64.b64decode(obj["signature"], validate=True)
    except (binascii.Error, ValueError):
        return reject(RejectReason.MALFORMED, "field signature is not base64")
    if len(signature) != 64:
        return reject(RejectReason.MALFORMED, f"field signature decodes to {len(signature)} bytes, "
                                              "an Ed25519 signature has 64")

    signer = _verify(canonical, signature, policy.public_keys)
    if signer is None:
        return reject(RejectReason.BAD_SIGNATURE, "the signature does not verify with the public key "
                                                  "of any requesting service")

    for cid, state in states.items():
        known = state.seen(rid, digest)
        if known is None:
            continue
        if known:
            return Repeat(cid, RequestId(rid))
        return reject(RejectReason.DUPLICATE, f"request_id {rid} was already used with other content")

    chain_rule = policy.chains.get(obj["chain"])
    if chain_rule is None:
        return reject(RejectReason.UNKNOWN_CHAIN, f"chain {obj['chain']!r} has no withdrawals configured")
    asset = chain_rule.assets.get(obj["asset"])
    if asset is None:
        return reject(RejectReason.UNKNOWN_ASSET,
                      f"asset {obj['asset']!r} cannot be withdrawn on chain {chain_rule.chain}",
                      remember_in=chain_rule.chain)
    try:
        to_address, to_key = chain_rule.codec.parse(obj["to_address"])
    except (InvalidAddress, ValueError) as exc:
        return reject(RejectReason.INVALID_ADDRESS, f"to_address is not a {chain_rule.chain} address: {exc}",
                      asset.decimals, chain_rule.chain)
    if len(amount_text) > MAX_AMOUNT_DIGITS or not AMOUNT_RE.match(amount_text):
        return reject(RejectReason.INVALID_AMOUNT, "amount must be a positive integer in base units, "
                                                   "digits only, no sign, leading zero or exponent",
                      asset.decimals, chain_rule.chain)
    amount = int(amount_text)
    floor = chain_rule.min_amount(to_key) if chain_rule.min_amount is not None else 1
    if amount < floor:
        return reject(RejectReason.INVALID_AMOUNT, f"amount is below {floor}, the dust limit of a "
                                                   "payment to this address type",
                      asset.decimals, chain_rule.chain)
    if amount > asset.per_request_limit:
        return reject(RejectReason.LIMIT_EXCEEDED, f"amount is above the per-request limit of "
                                                   f"{asset.per_request_limit} for {asset.symbol}",
                      asset.decimals, chain_rule.chain)
    book = states.get(chain_rule.chain)
    used = book.used_today(asset.symbol, now_ms) if book is not None else 0
    if used + amount > asset.daily_limit:
        return reject(RejectReason.LIMIT_EXCEEDED, f"amount would exceed the rolling 24-hour limit of "
                                                   f"{asset.daily_limit} for {asset.symbol} "
                                                   f"({used} already accepted)", asset.decimals,
                      chain_rule.chain)
    request = Request(RequestId(rid), asset.symbol, asset.token_contract, to_address, amount,
                      asset.decimals, digest, now_ms)
    return Accepted(chain_rule.chain, request, signer)


def _verify(message: bytes, signature: bytes, keys: Mapping[str, bytes]) -> str | None:
    for name, key in keys.items():
        try:
            VerifyKey(key).verify(message, signature)
        except BadSignatureError:
            continue
        return name
    return None
