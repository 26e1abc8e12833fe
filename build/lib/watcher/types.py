"""Domain values shared by the pure core, the runtime and the chain adapters.

Every value is immutable. Amounts are integers in base units (wei, satoshi,
token base units); there is no float anywhere near money.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NewType

ChainId = NewType("ChainId", str)
"""The operator's configured id of a chain, e.g. ``eth``; not the EIP-155 id."""

BlockHash = NewType("BlockHash", str)
"""``0x``-prefixed lower-case hex for EVM; plain lower-case hex for UTXO chains."""

TxId = NewType("TxId", str)
Address = NewType("Address", str)
"""Canonical text form: EIP-55 for EVM, lower-case bech32 or base58 for UTXO chains."""

AddressKey = NewType("AddressKey", bytes)
"""Fixed-width binary key of an address in the watched-address index."""

DepositId = NewType("DepositId", str)
EventId = NewType("EventId", str)
AssetSymbol = NewType("AssetSymbol", str)


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block identified by its hash and its parent link; the height is a label only."""

    number: int
    hash: BlockHash
    parent_hash: BlockHash
    timestamp: int = 0


@dataclass(frozen=True, slots=True)
class Transfer:
    """One value movement to a watched address found in a block.

    ``locator`` distinguishes several transfers of one transaction, as the
    contract's ``deposit_id`` requires: ``vout:<n>``, ``log:<n>``, ``tx`` or
    ``trace:<path>``.
    """

    txid: TxId
    locator: str
    asset: AssetSymbol
    token_contract: Address | None
    to_address: Address
    from_address: Address | None
    amount: int
    decimals: int


@dataclass(frozen=True, slots=True)
class BlockContents:
    """A block's header and the transfers in it that pay watched addresses."""

    ref: BlockRef
    transfers: tuple[Transfer, ...]


@dataclass(frozen=True, slots=True)
class ChainHead:
    """What a node reports as its tip, and its finalized height where it has one."""

    number: int
    hash: BlockHash
    finalized_number: int | None = None


class DepositEventType(StrEnum):
    SEEN = "deposit.seen"
    PENDING = "deposit.pending"
    CONFIRMED = "deposit.confirmed"
    REVERTED = "deposit.reverted"


def deposit_id(chain: ChainId, txid: TxId, locator: str) -> DepositId:
    return DepositId(f"{chain}:{txid}:{locator}")
