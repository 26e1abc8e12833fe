"""A deterministic in-memory chain with ``fork_at``, implementing ``ChainSource``.

Used by component tests and property tests of the follower: it answers exactly
like a node would (by height along its canonical branch, by hash for any block
it ever produced), so the follower's reorg handling can be driven precisely.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from watcher.core.endpoints import EndpointState, EndpointView
from watcher.errors import ChainError, ErrorKind, InvalidAddress
from watcher.ports import WatchedAddressLookup
from watcher.types import (
    Address,
    AddressKey,
    AssetSymbol,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainHead,
    Transfer,
    TxId,
)


def addr(n: int) -> Address:
    return Address("0x" + f"{n:040x}")


def key_of(a: Address) -> AddressKey:
    return AddressKey(bytes.fromhex(a[2:]))


_HEX = re.compile(r"0x[0-9a-fA-F]{40}")


class HexCodec:
    """Test codec: 0x + 40 hex digits in any case; canonical form lower-case."""

    def parse(self, text: str) -> tuple[Address, AddressKey]:
        if not isinstance(text, str) or not _HEX.fullmatch(text):
            raise InvalidAddress("expected 0x followed by 40 hex digits")
        return Address(text.lower()), AddressKey(bytes.fromhex(text[2:]))


def transfer(txid: str, to: Address, amount: int, asset: str = "ETH", locator: str = "tx") -> Transfer:
    return Transfer(TxId(txid), locator, AssetSymbol(asset), None, to, None, amount, 18)


@dataclass
class SimChain:
    """``canonical[n]`` is the hash at height n; every block ever made stays fetchable by hash."""

    blocks: dict[BlockHash, tuple[BlockRef, tuple[Transfer, ...]]] = field(default_factory=dict)
    canonical: list[BlockHash] = field(default_factory=list)
    salt: int = 0
    finalized_number: int | None = None
    down: bool = False
    calls: int = 0

    def __post_init__(self) -> None:
        if not self.canonical:
            self._append(())

    @property
    def height(self) -> int:
        return len(self.canonical) - 1

    def _append(self, transfers: Sequence[Transfer]) -> BlockRef:
        number = len(self.canonical)
        parent = self.canonical[-1] if self.canonical else BlockHash("0x" + "00" * 32)
        digest = hashlib.sha256(f"{parent}|{number}|{self.salt}".encode()).hexdigest()
        ref = BlockRef(number, BlockHash("0x" + digest), parent, 1_700_000_000 + number)
        self.blocks[ref.hash] = (ref, tuple(transfers))
        self.canonical.append(ref.hash)
        return ref

    def mine(self, *transfers: Transfer) -> BlockRef:
        return self._append(transfers)

    def mine_empty(self, n: int) -> None:
        for _ in range(n):
            self._append(())

    def fork_at(self, number: int) -> None:
        """Drops the canonical blocks from ``number`` up; the next ``mine`` builds the new branch."""
        if number < 1:
            raise ValueError("cannot fork off genesis")
        del self.canonical[number:]
        self.salt += 1

    def ref_at(self, number: int) -> BlockRef:
        return self.blocks[self.canonical[number]][0]

    # ------------------------------------------------------------ ChainSource

    def _touch(self) -> None:
        self.calls += 1
        if self.down:
            raise ChainError(ErrorKind.RETRIABLE, "node down", "sim")

    async def verify_identity(self) -> None:
        self._touch()

    async def head(self) -> ChainHead:
        self._touch()
        tip = self.ref_at(self.height)
        return ChainHead(tip.number, tip.hash, self.finalized_number)

    async def headers(self, start: int, count: int) -> list[BlockRef]:
        self._touch()
        return [self.ref_at(n) for n in range(start, min(start + count, self.height + 1))]

    async def header_by_hash(self, block_hash: BlockHash) -> BlockRef | None:
        self._touch()
        found = self.blocks.get(block_hash)
        return found[0] if found else None

    async def contents(self, refs: Sequence[BlockRef],
                       watched: WatchedAddressLookup) -> list[BlockContents]:
        self._touch()
        out = []
        for ref in refs:
            stored, transfers = self.blocks[ref.hash]
            assert stored == ref
            out.append(BlockContents(ref, tuple(t for t in transfers if key_of(t.to_address) in watched)))
        return out

    def endpoint_states(self) -> Mapping[str, EndpointView]:
        state = EndpointState.UNREACHABLE if self.down else EndpointState.ALIVE
        return {"sim": EndpointView(state, since=0.0, checked_at=0.0, head=self.height)}

    async def canonical_hashes(self, heights: Sequence[int]) -> dict[str, dict[int, BlockHash]]:
        self._touch()
        return {"sim": {n: self.canonical[n] for n in heights if 0 <= n <= self.height}}

    async def close(self) -> None:
        return None


class Watched:
    """A dict-backed watched-address lookup with labels, for component tests."""

    def __init__(self, *addresses: Address, labels: dict[Address, str] | None = None) -> None:
        self._labels: dict[bytes, str | None] = {key_of(a): None for a in addresses}
        for a, label in (labels or {}).items():
            self._labels[key_of(a)] = label

    def __contains__(self, key: object) -> bool:
        return key in self._labels

    def label(self, key: bytes) -> str | None:
        return self._labels.get(key)
