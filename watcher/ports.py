"""The narrow interfaces between the runtime and the outside world.

One protocol per chain family (implemented in ``chains/<family>``) and one for
the transactional sink (implemented over Kafka in ``watcher/kafka``). The
runtime sees nothing else of a node or a broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from watcher.types import Address, AddressKey, BlockContents, BlockHash, BlockRef, ChainHead


class WatchedAddressLookup(Protocol):
    def __contains__(self, key: object) -> bool: ...


class AddressCodec(Protocol):
    """Parses a chain family's address text into canonical text and an index key."""

    def parse(self, text: str) -> tuple[Address, AddressKey]:
        """Raises :class:`watcher.errors.InvalidAddress` with the reason."""
        ...


class ChainSource(Protocol):
    """Read access to one chain through one or more nodes.

    Every answer is checked by the adapter before it is returned: hashes are
    recomputed or compared with what was asked for, and shapes validated.
    Errors are raised as :class:`watcher.errors.ChainError`.
    """

    async def verify_identity(self) -> None:
        """Raises :class:`watcher.errors.ChainIdentityMismatch` if a node serves another chain."""
        ...

    async def head(self) -> ChainHead:
        """The tip of the best in-sync node; a lagging node is never the answer."""
        ...

    async def headers(self, start: int, count: int) -> list[BlockRef]:
        """Headers ``start .. start+count-1`` from one node, possibly fewer at its tip.

        The caller checks parent links; heights are only a way to ask.
        """
        ...

    async def header_by_hash(self, block_hash: BlockHash) -> BlockRef | None:
        ...

    async def contents(
        self, refs: Sequence[BlockRef], watched: WatchedAddressLookup
    ) -> list[BlockContents]:
        """Transfers to watched addresses in each block, fetched by hash, in the order given."""
        ...

    async def close(self) -> None:
        ...


@dataclass(frozen=True, slots=True)
class OutRecord:
    topic: str
    key: bytes
    value: bytes | None


class TransactionalSink(Protocol):
    """Publishes records and the chain's checkpoint as one atomic step."""

    async def start(self) -> None:
        """Fences any older instance with the same transactional id."""
        ...

    async def load_checkpoint(self, name: str) -> bytes | None:
        """The last committed checkpoint; call after :meth:`start` so open transactions of a
        fenced instance are aborted and cannot hold back the read."""
        ...

    async def commit(self, records: Sequence[OutRecord], checkpoint_name: str,
                     checkpoint: bytes) -> None:
        """All records and the checkpoint become visible together, or none does."""
        ...

    async def stop(self) -> None:
        ...
