"""The narrow interfaces between the runtime and the outside world.

One protocol per chain family (implemented in ``chains/<family>``) and one for
the transactional sink (implemented over Kafka in ``watcher/kafka``). The
runtime sees nothing else of a node or a broker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from watcher.core.endpoints import EndpointView
from watcher.types import (
    Address,
    AddressKey,
    BlockContents,
    BlockHash,
    BlockRef,
    ChainHead,
    Outpoint,
    TxId,
)

# Annotations only: the UTXO and withdrawal cores are imported by the modules that use
# them, not by every process that follows a chain (a deposit-only EVM daemon never does).
if TYPE_CHECKING:
    from watcher.core.coins import HotOutput
    from watcher.core.mempool import MempoolChange
    from watcher.core.settled import SettledIndex
    from watcher.core.withdrawals import BroadcastOutcome, Spend
    from watcher.kafka.client import Consumed
    from watcher.kafka.settled import SettledLoad


class WatchedAddressLookup(Protocol):
    def __contains__(self, key: object) -> bool: ...


class AddressCodec(Protocol):
    """Parses a chain family's address text into canonical text and an index key."""

    def parse(self, text: str) -> tuple[Address, AddressKey]:
        """Raises :class:`watcher.errors.InvalidAddress` with the reason."""
        ...


class NodeClient(Protocol):
    """One endpoint of one chain, as its chain family asks it: the only part of endpoint
    handling a family supplies.

    The chain-agnostic :class:`watcher.runtime.pool.EndpointPool` owns every client of a
    chain: it verifies identity, polls heads, keeps one explicit state per endpoint
    (:mod:`watcher.core.endpoints`), picks which endpoint answers, retries and fails over.
    A family's client adds its own request methods (blocks, logs, raw transactions) beside
    these three; each raises only :class:`watcher.errors.ChainError` (classified at the
    family's edge), :class:`watcher.errors.NodeAnswerInvalid` for an answer that fails a
    check, or :class:`watcher.errors.ChainIdentityMismatch`.
    """

    @property
    def name(self) -> str:
        """The configured endpoint name: the only way it is ever named in logs and labels."""
        ...

    async def identify(self) -> None:
        """Checks that this endpoint serves the configured chain (EVM chain id, UTXO genesis
        hash or network). Raises :class:`ChainIdentityMismatch` when it serves another one,
        a RETRIABLE :class:`ChainError` when it cannot be asked."""
        ...

    async def head(self) -> ChainHead:
        """The endpoint's tip (and finalized height where the chain has one)."""
        ...

    async def close(self) -> None:
        ...


class ChainSource(Protocol):
    """Read access to one chain through one or more nodes.

    Every answer is checked by the adapter before it is returned: hashes are
    recomputed or compared with what was asked for, and shapes validated.
    Errors are raised as :class:`watcher.errors.ChainError`.
    """

    async def verify_identity(self) -> None:
        """Identifies every endpoint; one on another chain is set aside (an endpoint state,
        never an exception). Raises a RETRIABLE :class:`ChainError` when none is alive."""
        ...

    async def head(self) -> ChainHead:
        """The tip of the best in-sync node; a lagging node is never the answer."""
        ...

    def endpoint_states(self) -> Mapping[str, EndpointView]:
        """Each endpoint's state (for readiness and metrics)."""
        ...

    async def canonical_hashes(self, heights: Sequence[int]) -> Mapping[str, Mapping[int, BlockHash]]:
        """For each alive endpoint that answered: its canonical block hash at each height it
        has (used to cross-check confirmations against ``confirm_quorum`` endpoints)."""
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


class MempoolSource(Protocol):
    """A UTXO chain's mempool, polled at the follower's interval (mempool watching on).

    The chain source of such a family implements it beside :class:`ChainSource`; its
    blocks' :class:`BlockContents` then carry ``spends``. Each call costs work in
    proportion to what changed since the previous call: txids listed, and only new
    transactions fetched and parsed.
    """

    async def mempool(self, watched: WatchedAddressLookup, *, full: bool) -> MempoolChange:
        """What changed in the node's mempool since the previous call: transactions added
        (each with its outputs paying ``watched`` addresses, possibly none, and every
        outpoint it spends), txids gone, and the node's best block hash at the time.

        ``full``: forget the previous call and report every transaction now in the
        mempool as added, with ``present`` set to all their txids. The follower asks
        for it after a start, a failed commit (the state went back to the checkpoint)
        and a reorg (transactions of removed blocks return to the mempool). Errors are
        raised as :class:`watcher.errors.ChainError`; a call that raises leaves the
        previous call as the baseline of the next one. Transactions that cannot be
        parsed are left out (and counted) at the source's edge, never passed on.
        """
        ...

    def watch_outpoints(self, outpoints: frozenset[Outpoint]) -> None:
        """From now on, every :class:`BlockContents` this source returns lists in
        ``spends`` each input of its block that spends one of ``outpoints`` (the inputs
        of the seen transactions); listing every input of the block is also correct.
        The follower calls it before it asks for block contents."""
        ...


class Leadership(Protocol):
    """Which replica of a chain may act: exactly one leads, the others stand by.

    Leading is a belief that can be out of date for up to the election's timeout (a
    paused process); whatever a leader writes must therefore also be fenced (the chain's
    transactional id), so a stale leader can never commit.
    """

    async def start(self) -> None: ...

    def is_leader(self) -> bool: ...

    async def wait_leading(self) -> None:
        """Returns once this replica leads; raises if the election itself failed for good."""
        ...

    async def wait_lost(self) -> None:
        """Returns once this replica no longer leads."""
        ...

    async def stop(self) -> None:
        """Leaves the election at once, handing the role over."""
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


@dataclass(frozen=True, slots=True)
class RecoverableSignature:
    """A secp256k1 ECDSA signature in low-s form with its recovery bit."""

    r: int
    s: int
    y_parity: int


class Signer(Protocol):
    """The hot wallet's key, wherever it lives: a local secret, an HSM, a remote signer.

    It signs 32-byte digests that the chain family computed (EVM: the EIP-1559 signing
    hash; UTXO: a sighash), so the key never meets a transaction format and any signer
    that can sign a digest fits. The caller checks that the signature recovers to
    :attr:`public_key` before it records the transaction: a signer that answers wrongly is
    never believed. Implementations never log, print or ``repr`` the key.
    """

    @property
    def name(self) -> str:
        """The configured name of the key: the only way it is named in logs and labels."""
        ...

    @property
    def public_key(self) -> bytes:
        """The 64-byte uncompressed public key (x || y, without the 0x04 prefix)."""
        ...

    async def sign_digest(self, digest: bytes) -> RecoverableSignature:
        """Signs exactly 32 bytes; raises :class:`watcher.errors.SignerError` when it cannot."""
        ...


# ---------------------------------------------------------------- withdrawals (issue #8)


@dataclass(frozen=True, slots=True)
class HotBlock:
    """One canonical block as the withdrawal runtime needs it: its link and the hot
    wallet's consumptions in it (``nonce:<n>`` spends on EVM, ``in:<txid>:<vout>`` on UTXO
    chains) and, on UTXO chains, the outputs it creates that pay the hot wallet."""

    number: int
    hash: BlockHash
    parent_hash: BlockHash
    spends: tuple[Spend, ...]
    outputs: tuple[HotOutput, ...] = ()


class HotWalletNode(Protocol):
    """What paying from the hot wallet needs of a chain's nodes, whatever the family.
    Every method raises only :class:`watcher.errors.ChainError`, except :meth:`send_raw`,
    which never raises (a refusal is a classified outcome)."""

    async def head(self) -> ChainHead: ...

    async def block(self, number: int) -> HotBlock | None:
        """Block ``number`` of the canonical chain; None above the tip."""
        ...

    async def send_raw(self, raw: bytes, txid: TxId) -> BroadcastOutcome: ...


class EvmHotWalletNode(HotWalletNode, Protocol):
    """The EVM hot wallet's nodes (:class:`chains.evm.wallet.EvmHotWallet`)."""

    async def nonce_counts(self) -> tuple[int, int]:
        """``(latest, pending)`` transaction counts of the hot wallet."""
        ...

    async def balances(self, tokens: Sequence[Address]) -> tuple[int, dict[Address, int]]:
        """The native balance and each token's balance of the hot wallet."""
        ...

    async def fee_quote(self) -> tuple[int, int]:
        """``(base fee, priority fee)`` per unit of gas, as the node suggests them now."""
        ...


class UtxoHotWalletNode(HotWalletNode, Protocol):
    """A UTXO chain's hot wallet nodes (:class:`chains.bitcoin.wallet.UtxoHotWallet`): no
    node wallet; the coins come from the blocks (:attr:`HotBlock.outputs`)."""

    def watch_outpoints(self, outpoints: frozenset[str]) -> None:
        """From now on :meth:`block` lists in ``spends`` every input that consumes one of
        ``outpoints`` (the hot wallet's coins) or an output paying the hot wallet that an
        earlier :meth:`block` call returned."""
        ...

    async def fee_rate(self) -> int | None:
        """The node's fee-rate estimate in sat/vB (rounded up), None when it has none."""
        ...


class RequestSource(Protocol):
    """The withdrawal-requests topic by manual assignment (read_committed):
    :class:`watcher.kafka.client.ManualConsumer`."""

    async def start(self, partitions: Sequence[int] | None = None) -> list[int]: ...

    async def seek_to_beginning(self) -> None: ...

    def seek(self, partition: int, offset: int) -> None: ...

    async def fetch(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Consumed]: ...

    async def behind(self) -> frozenset[int]:
        """Partitions with records written but not fetched yet (see the runner's order rule)."""
        ...

    async def stop(self) -> None: ...


class SettledRecords(Protocol):
    """A chain's settled-withdrawal records, a compacted topic keyed by request id, and
    snapshots of their index: :class:`watcher.kafka.settled.KafkaSettledRecords`. Written
    only as records of the runner's own transactions (:attr:`topic`,
    :meth:`index_records`); loaded when a runner starts."""

    @property
    def topic(self) -> str: ...

    async def ensure(self) -> None: ...

    async def load(self) -> SettledLoad:
        """The index of every committed settled record."""
        ...

    async def end_offset(self) -> int:
        """The offset below which every committed settled record lies."""
        ...

    def index_records(self, index: SettledIndex, covered: int) -> list[OutRecord]:
        """A snapshot of ``index`` (which holds exactly the records below ``covered``)."""
        ...
