"""The EVM hot wallet as the withdrawal runtime sees it: what a payment needs of a node.

Every call goes through the chain's :class:`watcher.runtime.pool.EndpointPool` (retries,
failover) and every answer is checked before it is returned; a malformed one is a
:class:`NodeAnswerInvalid` (the pool sets that endpoint aside). Send errors were classified
once in :mod:`chains.evm.errors`; here they only become a :class:`BroadcastOutcome`.

The hot wallet's own transactions are found by a light scan: one
``eth_getBlockByNumber(n, true)`` per new block, filtered on ``from``, and one receipt per
hot-wallet transaction found (status, fee paid). It is independent of the deposit
follower's block path, which skips blocks without deposits and knows nothing of nonces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from chains.evm.rpc import EvmRpcClient
from watcher.core.withdrawals import BroadcastOutcome, Spend
from watcher.errors import AnswerCheck, ChainError, ErrorKind, NodeAnswerInvalid
from watcher.ports import HotBlock
from watcher.runtime.pool import EndpointPool
from watcher.types import Address, BlockHash, ChainHead, TxId

BALANCE_OF_SELECTOR = bytes.fromhex("70a08231")


def _qty(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value.startswith("0x") or len(value) > 66:
        raise NodeAnswerInvalid(f"{what} is not a hex quantity", check=AnswerCheck.SHAPE)
    try:
        return int(value, 16)
    except ValueError:
        raise NodeAnswerInvalid(f"{what} is not a hex quantity", check=AnswerCheck.SHAPE) from None


def _hash(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
        raise NodeAnswerInvalid(f"{what} is not a 32-byte hash", check=AnswerCheck.SHAPE)
    return value.lower()


class EvmHotWallet:
    """Reads and sends for one hot wallet address of one EVM chain."""

    def __init__(self, pool: EndpointPool[EvmRpcClient], address: Address) -> None:
        self._pool = pool
        self.address = address
        self._lower = address.lower()

    async def head(self) -> ChainHead:
        """The tip of the best in-sync endpoint after one round of the pool."""
        return await self._pool.refresh()

    async def send_raw(self, raw: bytes, txid: TxId) -> BroadcastOutcome:
        """Hands the bytes over. Never raises: a refusal or a failure to reach any node is an
        outcome (RETRIABLE: the same bytes are sent again later)."""
        async def op(c: EvmRpcClient) -> Any:
            return await c.call("eth_sendRawTransaction", ["0x" + raw.hex()])

        try:
            answer = await self._pool.ask(op, what="eth_sendRawTransaction")
        except ChainError as exc:
            return BroadcastOutcome.of(exc.kind)
        if not isinstance(answer, str) or answer.lower() != txid.lower():
            # The node took something, but names another hash: do not believe it was ours.
            return BroadcastOutcome.RETRIABLE
        return BroadcastOutcome.OK

    async def nonce_counts(self) -> tuple[int, int]:
        """``(latest, pending)`` transaction counts of the hot wallet, from one endpoint."""
        async def op(c: EvmRpcClient) -> tuple[int, int]:
            latest, pending = await c.batch([("eth_getTransactionCount", [self.address, "latest"]),
                                             ("eth_getTransactionCount", [self.address, "pending"])])
            return _qty(latest, "latest count"), _qty(pending, "pending count")
        return await self._pool.ask(op, what="eth_getTransactionCount")

    async def balances(self, tokens: Sequence[Address]) -> tuple[int, dict[Address, int]]:
        """Native balance and ``balanceOf`` of each token, at ``latest``."""
        data = "0x" + (BALANCE_OF_SELECTOR + bytes(12) + bytes.fromhex(self._lower[2:])).hex()

        async def op(c: EvmRpcClient) -> tuple[int, dict[Address, int]]:
            calls: list[tuple[str, list[Any]]] = [("eth_getBalance", [self.address, "latest"])]
            calls += [("eth_call", [{"to": t, "data": data}, "latest"]) for t in tokens]
            replies = await c.batch(calls)
            native = _qty(replies[0], "balance")
            out: dict[Address, int] = {}
            for t, r in zip(tokens, replies[1:], strict=True):
                if not isinstance(r, str) or not r.startswith("0x") or len(r) != 66:
                    raise NodeAnswerInvalid("balanceOf answer is not 32 bytes", check=AnswerCheck.SHAPE)
                out[t] = int(r, 16)
            return native, out
        return await self._pool.ask(op, what="hot wallet balances")

    async def fee_quote(self) -> tuple[int, int]:
        """``(base fee of the latest block, suggested priority fee)`` in wei."""
        async def op(c: EvmRpcClient) -> tuple[int, int]:
            block, tip = await c.batch([("eth_getBlockByNumber", ["latest", False]),
                                        ("eth_maxPriorityFeePerGas", [])])
            if not isinstance(block, dict):
                raise NodeAnswerInvalid("latest block is not an object", check=AnswerCheck.SHAPE)
            return _qty(block.get("baseFeePerGas"), "baseFeePerGas"), _qty(tip, "priority fee")
        return await self._pool.ask(op, what="fee quote")

    async def block(self, number: int) -> HotBlock | None:
        """Block ``number`` with the hot wallet's transactions in it; None above the tip."""
        async def op(c: EvmRpcClient) -> HotBlock | None:
            blk = await c.call("eth_getBlockByNumber", [hex(number), True])
            if blk is None:
                return None
            if not isinstance(blk, dict) or not isinstance(blk.get("transactions"), list):
                raise NodeAnswerInvalid("block is not an object with transactions",
                                        check=AnswerCheck.SHAPE)
            if _qty(blk.get("number"), "block number") != number:
                raise NodeAnswerInvalid("block answered for another height", check=AnswerCheck.SHAPE)
            bhash = BlockHash(_hash(blk.get("hash"), "block hash"))
            ours = [t for t in blk["transactions"]
                    if isinstance(t, dict) and str(t.get("from", "")).lower() == self._lower]
            receipts = await c.batch([("eth_getTransactionReceipt", [t.get("hash")]) for t in ours]) \
                if ours else []
            spends: list[Spend] = []
            for t, rc in zip(ours, receipts, strict=True):
                txid = _hash(t.get("hash"), "transaction hash")
                if not isinstance(rc, dict) or _hash(rc.get("blockHash"), "receipt block") != bhash:
                    # The receipt of another fork (a reorg between the two calls): ask again.
                    raise ChainError(ErrorKind.RETRIABLE, f"receipt of {txid} is not of block {number}")
                fee = _qty(rc.get("gasUsed"), "gasUsed") * _qty(rc.get("effectiveGasPrice"),
                                                                 "effectiveGasPrice")
                spends.append(Spend(f"nonce:{_qty(t.get('nonce'), 'nonce')}", TxId(txid),
                                    reverted=_qty(rc.get("status"), "status") == 0, fee_paid=fee))
            return HotBlock(number, bhash, BlockHash(_hash(blk.get("parentHash"), "parent hash")),
                            tuple(spends))
        return await self._pool.ask(op, what="hot wallet block scan")
