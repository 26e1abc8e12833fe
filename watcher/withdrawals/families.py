"""What differs between chain families when paying: one small strategy per family.

:class:`watcher.withdrawals.runtime.WithdrawalRunner` carries out the book's decisions
for any family; the few that depend on the family go through :class:`Payments`:

* **EVM** (:class:`EvmPayments`): a nonce per payment (the book allocates it), EIP-1559
  fees from the node's quote, funds from the node's balances.
* **UTXO** (:class:`UtxoPayments`): coin selection (:mod:`watcher.core.utxo`) over the
  hot wallet's coins, which the runtime's own block scan maintains
  (:class:`watcher.core.coins.HotCoins`, persisted in the runner's checkpoint and rolled
  back with the blocks a reorg removes); a fee rate from the node's estimate within the
  configured floor and cap; change back to the hot wallet; a bump is a replacement that
  spends exactly the same inputs (the binding) and pays exactly the same outputs.

UTXO batching (:class:`BatchPayments`, on when ``withdrawals.chains.<utxo>.batch`` is
set): several requests paid by one transaction, one output each; the book binds every
member to the transaction's whole input set, and every bump spends those inputs and pays
those outputs, so at most one transaction of the batch confirms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import structlog

from chains.bitcoin.networks import Network
from chains.bitcoin.tx import (
    address_script,
    compressed_public_key,
    output_type,
    p2wpkh_address,
    p2wpkh_script,
    payment_tx,
    sign_p2wpkh,
)
from chains.evm.tx import sender_of, sign_withdrawal
from watcher.config import ChainConfig, ChainWithdrawals
from watcher.core import utxo
from watcher.core.coins import CoinRules, HotCoins
from watcher.core.withdrawals import (
    TERMINAL,
    Fees,
    InputsBinding,
    RequestId,
    Sign,
    SignedTx,
    Withdrawal,
    WithdrawalBook,
)
from watcher.errors import ChainError, ErrorKind, InvalidAddress
from watcher.metrics import HOT_WALLET_BALANCE
from watcher.ports import EvmHotWalletNode, HotBlock, Signer, UtxoHotWalletNode
from watcher.types import Address, AssetSymbol, BlockHash

log = structlog.get_logger("watcher.withdrawals")

NATIVE_GAS_LIMIT = 21_000


class Payments(Protocol):
    """The family-specific part of paying from one chain's hot wallet."""

    @property
    def hot_address(self) -> Address: ...

    async def can_pay(self, book: WithdrawalBook, request_id: RequestId,
                      tip: int) -> tuple[bool, tuple[str, ...] | None]:
        """Whether the hot wallet can pay the request now on top of every payment already
        bound, and (UTXO) the inputs chosen for it: the arguments of :meth:`WithdrawalBook.funds`."""
        ...

    async def sign(self, w: Withdrawal, d: Sign) -> SignedTx | None:
        """The payment of ``w`` spending exactly ``d.binding`` with fees at least
        ``d.min_fees``; None when the cap (or the change) leaves no room for it."""
        ...

    async def nonce_counts(self) -> tuple[int, int]:
        """EVM: the node's ``(latest, pending)`` counts (the book asks only on EVM)."""
        ...

    async def balances(self) -> None:
        """Refreshes the hot-wallet balance gauges."""
        ...

    def before_scan(self) -> None: ...

    def block_added(self, blk: HotBlock) -> None: ...

    def blocks_removed(self, hashes: Sequence[BlockHash]) -> None: ...

    def prune(self, below: int) -> None:
        """No reorg reaches below height ``below`` any more (the scan window moved)."""
        ...

    def state(self) -> Any:
        """The family's own part of the runner's checkpoint (JSON-able, None: nothing)."""
        ...

    def load(self, raw: Any) -> None:
        """Restores :meth:`state` (None: a fresh start); ValueError when unreadable."""
        ...


class BatchPayments(Protocol):
    """What a family that pays several requests by one transaction adds (UTXO)."""

    async def can_pay_batch(self, book: WithdrawalBook, request_ids: Sequence[RequestId],
                            tip: int) -> tuple[tuple[RequestId, ...], tuple[str, ...] | None]:
        """The longest prefix of ``request_ids`` the hot wallet can pay together now, and
        the inputs chosen for it (``((), None)``: not even the first)."""
        ...

    async def sign_batch(self, members: Sequence[Withdrawal], d: Sign) -> SignedTx | None:
        """One transaction paying every member (in the book's batch order) spending
        exactly ``d.binding``; None as :meth:`Payments.sign`."""
        ...


class EvmPayments:
    """Nonce and gas: the book binds nonces; fees come from the node's EIP-1559 quote."""

    def __init__(self, *, chain: ChainConfig, cw: ChainWithdrawals, signer: Signer,
                 node: EvmHotWalletNode, assets: Mapping[AssetSymbol, Address | None]) -> None:
        if chain.chain_id is None:
            raise ValueError(f"chain {chain.id}: an EVM chain needs its chain id")
        self._chain = chain
        self._cw = cw
        self._signer = signer
        self._node = node
        self._cap = Fees(cw.max_fee, cw.max_tip)
        self._assets = dict(assets)
        self._tokens = [t for t in assets.values() if t is not None]
        self._hot = sender_of(signer.public_key)

    @property
    def hot_address(self) -> Address:
        return self._hot

    async def can_pay(self, book: WithdrawalBook, request_id: RequestId,
                      tip: int) -> tuple[bool, tuple[str, ...] | None]:
        """The balances cover the request on top of every payment already bound and not
        yet in a block (their amounts and the most their gas can cost)."""
        w = book.get(request_id)
        if w is None:
            return False, None
        native, tokens = await self._node.balances(self._tokens)
        self._set_balances(native, tokens)
        owed_native = 0
        owed: dict[Address, int] = {}
        for o in book.withdrawals():
            if o.binding is None or o.state in TERMINAL or o.inclusion is not None:
                continue
            r = o.request
            owed_native += self._gas_limit(r.token_contract) * self._cap.max_fee
            if r.token_contract is None:
                owed_native += r.amount
            else:
                owed[r.token_contract] = owed.get(r.token_contract, 0) + r.amount
        r = w.request
        need_native = owed_native + self._gas_limit(r.token_contract) * self._cap.max_fee
        if r.token_contract is None:
            return native >= need_native + r.amount, None
        have = tokens.get(r.token_contract, 0)
        return native >= need_native and have >= owed.get(r.token_contract, 0) + r.amount, None

    def _gas_limit(self, token: Address | None) -> int:
        return NATIVE_GAS_LIMIT if token is None else self._cw.token_gas_limit

    async def sign(self, w: Withdrawal, d: Sign) -> SignedTx | None:
        base_fee, priority_fee = await self._node.fee_quote()
        return await sign_withdrawal(w.request, d, chain_id=int(self._chain.chain_id or 0),
                                     base_fee=base_fee, priority_fee=priority_fee, cap=self._cap,
                                     token_gas_limit=self._cw.token_gas_limit, signer=self._signer)

    async def nonce_counts(self) -> tuple[int, int]:
        return await self._node.nonce_counts()

    async def balances(self) -> None:
        native, tokens = await self._node.balances(self._tokens)
        self._set_balances(native, tokens)

    def _set_balances(self, native: int, tokens: Mapping[Address, int]) -> None:
        for symbol, token in self._assets.items():
            value = native if token is None else tokens.get(token, 0)
            # A float gauge for dashboards and the low-balance alert only; decisions use ints.
            HOT_WALLET_BALANCE.labels(self._chain.id, symbol).set(float(value))

    # The EVM scan needs no state of its own: nonces are the book's.
    def before_scan(self) -> None:
        return None

    def block_added(self, blk: HotBlock) -> None:
        return None

    def blocks_removed(self, hashes: Sequence[BlockHash]) -> None:
        return None

    def prune(self, below: int) -> None:
        return None

    def state(self) -> Any:
        return None

    def load(self, raw: Any) -> None:
        return None


class UtxoPayments:
    """Coin selection and fee rate: the book binds the inputs this strategy selects."""

    def __init__(self, *, chain: ChainConfig, cw: ChainWithdrawals, signer: Signer,
                 node: UtxoHotWalletNode, network: Network) -> None:
        if not 1 <= cw.min_fee <= cw.max_fee or cw.max_tip != 0:
            raise ValueError(f"chain {chain.id}: need 1 <= min_fee_rate <= max_fee_rate")
        self._chain = chain
        self._net = network
        self._signer = signer
        self._node = node
        self._floor = cw.min_fee
        self._cap = cw.max_fee
        self._rules = CoinRules(cw.input_confirmations or cw.confirmations, cw.spend_own_change,
                                network.coinbase_maturity)
        self._hot_script = p2wpkh_script(compressed_public_key(signer.public_key))
        self._hot = Address(p2wpkh_address(signer.public_key, network))
        self.coins = HotCoins()
        self._unpayable: set[RequestId] = set()

    @property
    def hot_address(self) -> Address:
        return self._hot

    @property
    def hot_script(self) -> bytes:
        return self._hot_script

    def _payee(self, to: Address) -> tuple[bytes, utxo.ScriptType] | None:
        """The recipient's script and its weight class; None when it cannot be paid."""
        try:
            spk = address_script(to, self._net)
        except (InvalidAddress, ValueError):
            return None
        kind = output_type(spk)
        return None if kind is None else (spk, kind)

    async def _rate(self) -> int:
        return utxo.fee_rate(await self._node.fee_rate(), self._floor, self._cap)

    async def can_pay(self, book: WithdrawalBook, request_id: RequestId,
                      tip: int) -> tuple[bool, tuple[str, ...] | None]:
        """Coin selection over the spendable coins that no binding holds, at the node's
        fee rate (within floor and cap)."""
        w = book.get(request_id)
        if w is None:
            return False, None
        payee = self._payee(w.request.to_address)
        if payee is None:
            # Accepted by intake but of a script this wallet cannot size: it waits (and is
            # counted as waiting), never paid with a guessed fee. Said once, not every round.
            if request_id not in self._unpayable:
                self._unpayable.add(request_id)
                log.error("withdrawals: recipient script cannot be paid", chain=self._chain.id,
                          request_id=request_id)
            return False, None
        bound = {k.removeprefix("in:") for k in book.bound_keys() if k.startswith("in:")}
        coins = self.coins.spendable(tip, self._rules, bound)
        await self.balances()
        if sum(u.value for u in coins) <= w.request.amount:
            return False, None  # not enough whatever the fee: no need to ask a node
        plan = utxo.select(coins, [utxo.Payment(request_id, payee[1], w.request.amount)],
                           await self._rate(), utxo.ScriptType.P2WPKH)
        return (False, None) if plan is None else (True, plan.outpoints)

    async def can_pay_batch(self, book: WithdrawalBook, request_ids: Sequence[RequestId],
                            tip: int) -> tuple[tuple[RequestId, ...], tuple[str, ...] | None]:
        """Coin selection for the whole group, then for shorter prefixes of it (the oldest
        first); a recipient that cannot be paid is left out (it waits, as alone)."""
        group: list[utxo.Payment] = []
        for rid in request_ids:
            w = book.get(rid)
            payee = None if w is None else self._payee(w.request.to_address)
            if w is not None and payee is not None:
                group.append(utxo.Payment(rid, payee[1], w.request.amount))
        bound = {k.removeprefix("in:") for k in book.bound_keys() if k.startswith("in:")}
        coins = self.coins.spendable(tip, self._rules, bound)
        await self.balances()
        have = sum(u.value for u in coins)
        rate: int | None = None
        for n in range(len(group), 0, -1):
            if have <= sum(p.amount for p in group[:n]):
                continue  # not enough whatever the fee: no need to ask a node
            rate = await self._rate() if rate is None else rate
            plan = utxo.select(coins, group[:n], rate, utxo.ScriptType.P2WPKH)
            if plan is not None:
                return tuple(RequestId(p.request_id) for p in group[:n]), plan.outpoints
        return (), None

    def _inputs(self, binding: InputsBinding) -> list[utxo.Utxo]:
        out = []
        for op in binding.outpoints:
            value = self.coins.value_of(op)
            if value is None:
                # A reorg took the coin's block away: signing waits until it is back.
                raise ChainError(ErrorKind.RETRIABLE, f"bound input {op} is not a hot-wallet coin now")
            out.append(utxo.Utxo(op, value, utxo.ScriptType.P2WPKH))
        return out

    async def sign(self, w: Withdrawal, d: Sign) -> SignedTx | None:
        if d.request_id != w.request.request_id:
            raise ValueError("a UTXO payment is signed for its own request and inputs")
        return await self.sign_batch([w], d)

    async def sign_batch(self, members: Sequence[Withdrawal], d: Sign) -> SignedTx | None:
        """One output per member in the given order, then the change; alone: one member."""
        if (not isinstance(d.binding, InputsBinding) or not members
                or any(m.binding != d.binding for m in members)
                or d.request_id != members[0].request.request_id):
            raise ValueError("a UTXO payment is signed for its own requests and inputs")
        payees = [self._payee(m.request.to_address) for m in members]
        scripts: list[bytes] = []
        payments: list[utxo.Payment] = []
        for m, payee in zip(members, payees, strict=True):
            if payee is None:
                return None
            scripts.append(payee[0])
            payments.append(utxo.Payment(m.request.request_id, payee[1], m.request.amount))
        inputs = self._inputs(d.binding)
        market = max(await self._rate(), d.min_fees.max_fee)
        prev = members[0].latest
        if prev is None:
            # The selection's rate may have moved since: the quote, else the floor (at which
            # these inputs were enough when they were selected).
            plan = (utxo.plan_for(inputs, payments, market, utxo.ScriptType.P2WPKH)
                    or utxo.plan_for(inputs, payments, max(self._floor, d.min_fees.max_fee),
                                     utxo.ScriptType.P2WPKH))
        else:
            plan = utxo.bump(self._plan_of(prev, inputs, payments), market, self._cap)
        if plan is None or plan.fee_rate > self._cap or plan.fee_rate < d.min_fees.max_fee:
            return None
        signed = await sign_p2wpkh(payment_tx(plan, scripts, self._hot_script), self._signer)
        return SignedTx(signed.txid, signed.raw, d.binding, Fees(plan.fee_rate, 0), plan.fee)

    def _plan_of(self, tx: SignedTx, inputs: list[utxo.Utxo],
                 payments: Sequence[utxo.Payment]) -> utxo.Plan:
        """The plan a recorded transaction carried out: same inputs, same payments, its
        (whole) fee; what is left is the change (none when the fee took all of it)."""
        change = sum(u.value for u in inputs) - sum(p.amount for p in payments) - tx.fee
        if change < 0:
            raise ValueError("a recorded payment spends more than its inputs")
        outs = [p.script for p in payments] + ([utxo.ScriptType.P2WPKH] if change else [])
        size = utxo.vsize([u.script for u in inputs], outs)
        return utxo.Plan(tuple(inputs), tuple(payments), utxo.ScriptType.P2WPKH, change, tx.fee,
                         tx.fees.max_fee, size)

    async def nonce_counts(self) -> tuple[int, int]:
        raise ValueError("a UTXO chain has no nonces")

    async def balances(self) -> None:
        self._gauge()

    def _gauge(self) -> None:
        # Sats as a float gauge, for dashboards and the low-balance alert only. No node is
        # asked: the balance is the coin state's, so it moves with each scanned block.
        HOT_WALLET_BALANCE.labels(self._chain.id, self._chain.native_symbol).set(
            float(self.coins.balance()))

    def before_scan(self) -> None:
        self._node.watch_outpoints(self.coins.outpoints())

    def block_added(self, blk: HotBlock) -> None:
        self.coins.block_added(blk.number, blk.hash, blk.outputs,
                               [s.key.removeprefix("in:") for s in blk.spends
                                if s.key.startswith("in:")])
        self._gauge()

    def blocks_removed(self, hashes: Sequence[BlockHash]) -> None:
        self.coins.blocks_removed(hashes)
        self._gauge()

    def prune(self, below: int) -> None:
        self.coins.prune(below)

    def state(self) -> Any:
        return self.coins.snapshot()

    def load(self, raw: Any) -> None:
        self.coins = HotCoins.restore(raw)
        self._gauge()
