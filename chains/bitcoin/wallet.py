"""The UTXO hot wallet as the withdrawal runtime sees it: what a payment needs of a node.

No node wallet (btcd has none; Bitcoin Core's is not used): the hot wallet's coins are
found by scanning each canonical block, parsed and checked by :func:`parse_block` (hash
and merkle root recomputed), for outputs paying the hot wallet's script and inputs
spending its coins. Every call goes through the chain's
:class:`watcher.runtime.pool.EndpointPool` (retries, failover); a malformed answer is a
:class:`NodeAnswerInvalid` and that endpoint is set aside, never believed.

Send refusals were classified once in :mod:`chains.bitcoin.errors`; here they only
become a :class:`BroadcastOutcome` through its table.
"""

from __future__ import annotations

from chains.bitcoin import script as _script
from chains.bitcoin.block import Outpoint, RawBlock, parse_block
from chains.bitcoin.errors import BitcoinRpcError, broadcast_outcome
from chains.bitcoin.rpc import BitcoinRpcClient
from watcher.core.coins import HotOutput
from watcher.core.withdrawals import BroadcastOutcome, Spend
from watcher.errors import ChainError
from watcher.ports import HotBlock
from watcher.runtime.pool import EndpointPool
from watcher.types import ChainHead, TxId

FEE_TARGET_BLOCKS = 6
"""Confirmation target of the fee-rate estimate (an hour on mainnet)."""


def _outpoint(text: str) -> Outpoint:
    txid, _, vout = text.partition(":")
    return Outpoint(TxId(txid), int(vout))


class UtxoHotWallet:
    """Reads and sends for the hot wallet (one scriptPubKey) of one UTXO chain."""

    def __init__(self, pool: EndpointPool[BitcoinRpcClient], hot_script: bytes) -> None:
        key = _script.script_key(hot_script)
        if key is None:
            raise ValueError("the hot wallet's script has no address")
        self._pool = pool
        self._key = key
        self._watch: set[str] = set()

    def watch_outpoints(self, outpoints: frozenset[str]) -> None:
        self._watch = set(outpoints)

    async def head(self) -> ChainHead:
        """The tip of the best in-sync endpoint after one round of the pool."""
        return await self._pool.refresh()

    async def send_raw(self, raw: bytes, txid: TxId) -> BroadcastOutcome:
        """Hands the bytes over. Never raises: a refusal or a failure to reach any node is an
        outcome (RETRIABLE: the same bytes are sent again later)."""
        async def op(c: BitcoinRpcClient) -> TxId:
            return await c.send_raw_transaction(raw)

        try:
            answer = await self._pool.ask(op, what="sendrawtransaction")
        except ChainError as exc:
            return broadcast_outcome(exc)
        if answer.lower() != txid.lower():
            # The node took something, but names another txid: do not believe it was ours.
            return BroadcastOutcome.RETRIABLE
        return BroadcastOutcome.OK

    async def fee_rate(self) -> int | None:
        """Core ``estimatesmartfee`` / btcd ``estimatefee`` in sat/vB, rounded up; None when
        the node has no estimate (regtest: "insufficient data", btcd's -1 or an error
        object): the configured floor applies then, and a stuck payment is bumped."""
        async def op(c: BitcoinRpcClient) -> int | None:
            try:
                per_kvb = await c.estimate_fee_rate(FEE_TARGET_BLOCKS)
            except BitcoinRpcError:
                return None  # the node answered, with no estimate: not a failure of the node
            return None if per_kvb is None else -(-per_kvb // 1000)
        return await self._pool.ask(op, what="fee-rate estimate")

    async def block(self, number: int) -> HotBlock | None:
        """Block ``number`` with the hot wallet's outputs and the inputs spending its coins;
        None above the tip."""
        async def op(c: BitcoinRpcClient) -> HotBlock | None:
            hashes = await c.block_hashes(number, 1)
            if not hashes:
                return None
            raw = await c.raw_block(hashes[0])
            if raw is None:
                return None  # reorganised away between the two calls: asked again next round
            return self._hot_block(number, parse_block(raw, hashes[0]))
        return await self._pool.ask(op, what="hot wallet block scan")

    def _hot_block(self, number: int, blk: RawBlock) -> HotBlock:
        txs = blk.txs
        key = self._key
        mine = [pos for pos, k in enumerate(txs.keys) if k == key]
        located = [(txs.locate_output(pos), pos) for pos in mine]
        # Our coins and every output this block pays us: a coin created and spent in the
        # same block (a chain of our own payments) is seen spent too.
        watch = self._watch | {f"{txs.txid(t)}:{vout}" for (t, vout), _ in located}
        spenders = txs.spenders([_outpoint(o) for o in watch])
        spends = tuple(Spend(f"in:{op.txid}:{op.vout}", txs.txid(t))
                       for op, t in sorted(spenders.items(), key=lambda x: (x[1], x[0].txid,
                                                                          x[0].vout)))
        from_us = set(spenders.values())
        outputs = tuple(HotOutput(f"{txs.txid(t)}:{vout}", txs.output(pos).value,
                                  change=t in from_us, coinbase=t == 0)
                        for (t, vout), pos in located if txs.output(pos).value > 0)
        self._watch = watch
        return HotBlock(number, blk.header.hash, blk.header.prev_hash, spends, outputs)
