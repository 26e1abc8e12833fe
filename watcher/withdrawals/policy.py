"""From the validated configuration to the pure parts' inputs: intake policy, machine
configuration, the hot-key signer. Called once by the composition root."""

from __future__ import annotations

from collections.abc import Mapping

from watcher.config import ChainConfig, ChainWithdrawals, Family, WithdrawalsConfig
from watcher.core.withdrawals import Fees, MachineConfig
from watcher.errors import ConfigError, InvalidAddress
from watcher.ports import AddressCodec
from watcher.types import Address, ChainId
from watcher.withdrawals.intake import AssetRule, ChainRule, IntakePolicy
from watcher.withdrawals.signer import HotKeySigner


def intake_policy(cfg: WithdrawalsConfig, chains: Mapping[ChainId, ChainConfig],
                  codecs: Mapping[ChainId, AddressCodec]) -> IntakePolicy:
    """``codecs`` holds the address codec of every chain family in use (any family fits)."""
    rules: dict[str, ChainRule] = {}
    for cid, cw in cfg.chains.items():
        chain = chains[cid]
        codec = codecs.get(cid)
        if codec is None:
            raise ConfigError(f"withdrawals.chains.{cid}", f"no address codec for family {chain.family}")
        assets: dict[str, AssetRule] = {}
        for symbol, limits in cw.assets.items():
            token: Address | None = None
            decimals = chain.native_decimals
            if symbol != chain.native_symbol:
                t = next(t for t in chain.tokens if t.symbol == symbol)
                try:
                    token = codec.parse(t.contract)[0]
                except InvalidAddress as exc:
                    raise ConfigError(f"chains.{cid}.tokens", f"contract of {symbol}: {exc}") from None
                decimals = t.decimals
            assets[symbol] = AssetRule(symbol, token, decimals, limits.per_request_limit, limits.daily_limit)
        min_amount = None
        if chain.family is Family.BITCOIN:
            from chains.bitcoin.tx import dust_limit

            min_amount = dust_limit
        rules[cid] = ChainRule(cid, codec, assets, min_amount)
    return IntakePolicy(public_keys=dict(cfg.requesters), chains=rules)


def machine_config(cw: ChainWithdrawals, family: Family) -> MachineConfig:
    return MachineConfig(confirmations=cw.confirmations, stuck_blocks=cw.stuck_blocks,
                         fee_cap=Fees(cw.max_fee, cw.max_tip), uses_nonces=family is Family.EVM)


def hot_key_signer(cw: ChainWithdrawals, environ: Mapping[str, str] | None = None) -> HotKeySigner:
    name = f"{cw.chain}-hot"
    if cw.hot_key.file is not None:
        return HotKeySigner.from_file(name, cw.hot_key.file)
    assert cw.hot_key.env is not None  # exactly one of the two, checked at config load
    return HotKeySigner.from_env(name, cw.hot_key.env, environ)
