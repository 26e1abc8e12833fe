"""The ``withdrawals`` configuration section: valid ones load, bad ones name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from chains.evm.adapter import EvmAddressCodec
from chains.evm.tx import sender_of
from watcher.config import Family, HotKeySource, WithdrawalAssetLimits, apply_env_overrides, parse
from watcher.core.withdrawals import Fees, MachineConfig
from watcher.errors import ConfigError
from watcher.withdrawals.policy import hot_key_signer, intake_policy, machine_config

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_B64 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="

SECTION = f"""
requesters:
  ledger: "{PUBLIC_B64}"
chains:
  eth:
    confirmations: 12
    stuck_blocks: 6
    max_fee_per_gas: "300000000000"
    max_priority_fee_per_gas: "3000000000"
    token_gas_limit: 90000
    hot_key: {{file: /run/secrets/eth-hot-key}}
    assets:
      ETH: {{per_request_limit: "5000000000000000000", daily_limit: "50000000000000000000"}}
      USDC: {{per_request_limit: 100000000000, daily_limit: 1000000000000}}
"""


def raw(**chain_over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    w = yaml.safe_load(SECTION)
    w["chains"]["eth"].update(chain_over)
    doc["withdrawals"] = w
    return doc


def test_section_loads() -> None:
    cfg = parse(raw())
    assert cfg.withdrawals is not None
    assert cfg.withdrawals.requesters["ledger"].hex() == (
        "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
    eth = cfg.withdrawals.chains["eth"]  # type: ignore[index]
    assert (eth.confirmations, eth.stuck_blocks, eth.max_fee, eth.max_tip, eth.token_gas_limit) == (
        12, 6, 300 * 10**9, 3 * 10**9, 90_000)
    assert eth.hot_key == HotKeySource(file=Path("/run/secrets/eth-hot-key"), env=None)
    assert eth.assets["USDC"] == WithdrawalAssetLimits(10**11, 10**12)  # type: ignore[index]


def test_absent_section_means_deposits_only() -> None:
    doc = raw()
    del doc["withdrawals"]
    assert parse(doc).withdrawals is None


def test_key_variable_name_from_the_environment() -> None:
    doc = raw(hot_key={})
    apply_env_overrides(doc, {"WATCHER__WITHDRAWALS__CHAINS__ETH__HOT_KEY__ENV": "ETH_HOT_KEY"})
    w = parse(doc).withdrawals
    assert w is not None and w.chains["eth"].hot_key == HotKeySource(None, "ETH_HOT_KEY")  # type: ignore[index]


@pytest.mark.parametrize(("over", "key", "reason"), [
    ({"hot_key": {"key": "0x4c08"}}, "withdrawals.chains.eth.hot_key.key", "unknown key"),
    ({"hot_key": {}}, "withdrawals.chains.eth.hot_key", "exactly one of file"),
    ({"hot_key": {"file": "/a", "env": "B"}}, "withdrawals.chains.eth.hot_key", "exactly one of file"),
    ({"hot_key": {"env": "0x4c0883a69102937d"}}, "withdrawals.chains.eth.hot_key.env", "variable name"),
    ({"assets": {"DAI": {"per_request_limit": 1, "daily_limit": 1}}}, "withdrawals.chains.eth.assets.DAI",
     "unknown asset"),
    ({"assets": {}}, "withdrawals.chains.eth.assets", "at least one asset"),
    ({"assets": {"ETH": {"per_request_limit": 10, "daily_limit": 5}}},
     "withdrawals.chains.eth.assets.ETH.daily_limit", "at least per_request_limit"),
    ({"assets": {"ETH": {"per_request_limit": 1.5, "daily_limit": 5}}},
     "withdrawals.chains.eth.assets.ETH.per_request_limit", "integers in base units"),
    ({"assets": {"ETH": {"daily_limit": 5}}}, "withdrawals.chains.eth.assets.ETH.per_request_limit",
     "missing"),
    ({"max_priority_fee_per_gas": "400000000000"}, "withdrawals.chains.eth.max_priority_fee_per_gas",
     "must not exceed"),
    ({"max_fee_rate": 50}, "withdrawals.chains.eth.max_fee_rate", "unknown key"),
    ({"confirmations": 0}, "withdrawals.chains.eth.confirmations", ">= 1"),
    ({"confirmations": 129}, "withdrawals.chains.eth.confirmations", "<= 128"),
])
def test_bad_chain_sections_name_the_key(over: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(raw(**over))
    assert exc.value.key == key
    assert reason in exc.value.reason


@pytest.mark.parametrize(("requesters", "key", "reason"), [
    ({}, "withdrawals.requesters", "at least one"),
    ({"ledger": "not base64!"}, "withdrawals.requesters.ledger", "base64"),
    ({"ledger": "AAAA"}, "withdrawals.requesters.ledger", "32 bytes, got 3"),
])
def test_bad_requesters(requesters: dict[str, str], key: str, reason: str) -> None:
    doc = raw()
    doc["withdrawals"]["requesters"] = requesters
    with pytest.raises(ConfigError) as exc:
        parse(doc)
    assert (exc.value.key, reason in exc.value.reason) == (key, True)


def test_unknown_chain() -> None:
    doc = raw()
    doc["withdrawals"]["chains"]["sol"] = doc["withdrawals"]["chains"]["eth"]
    with pytest.raises(ConfigError, match=r"withdrawals\.chains\.sol: not a configured chain"):
        parse(doc)


def test_policy_machine_config_and_signer_from_the_section(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    cfg = parse(raw(hot_key={"file": str(key)}))
    assert cfg.withdrawals is not None
    policy = intake_policy(cfg.withdrawals, cfg.chains, {"eth": EvmAddressCodec()})  # type: ignore[dict-item]
    usdc = policy.chains["eth"].assets["USDC"]
    # The example's USDC contract, EIP-55 canonical; USDT is configured but not allow-listed.
    assert (usdc.token_contract, usdc.decimals) == ("0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", 6)
    assert set(policy.chains["eth"].assets) == {"ETH", "USDC"}
    assert policy.chains["eth"].assets["ETH"].token_contract is None
    cw = cfg.withdrawals.chains["eth"]  # type: ignore[index]
    assert machine_config(cw, Family.EVM) == MachineConfig(12, 6, Fees(300 * 10**9, 3 * 10**9), True)
    assert sender_of(hot_key_signer(cw).public_key) == "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"


def test_bitcoin_chain_section() -> None:
    doc = raw()
    doc["chains"]["btc"] = {"family": "bitcoin", "network": "regtest",
                            "endpoints": [{"name": "btcd", "url": "http://127.0.0.1:18334"}],
                            "native_asset": {"symbol": "BTC", "decimals": 8},
                            "confirmations": {"default": 6}, "reorg_window": 32}
    doc["withdrawals"]["chains"]["btc"] = {
        "max_fee_rate": 200, "min_fee_rate": 2, "hot_key": {"env": "BTC_HOT_KEY"},
        "assets": {"BTC": {"per_request_limit": 10**8, "daily_limit": 10**9}}}
    w = parse(doc).withdrawals
    assert w is not None
    btc = w.chains["btc"]  # type: ignore[index]
    assert (btc.max_fee, btc.min_fee, btc.max_tip, btc.confirmations, btc.token_gas_limit) == (
        200, 2, 0, 6, 0)
    assert machine_config(btc, Family.BITCOIN) == MachineConfig(6, 10, Fees(200, 0), False)
    doc["withdrawals"]["chains"]["btc"]["max_fee_per_gas"] = 1
    with pytest.raises(ConfigError, match="max_fee_per_gas: unknown key"):
        parse(doc)
    del doc["withdrawals"]["chains"]["btc"]["max_fee_per_gas"]
    doc["withdrawals"]["chains"]["btc"]["min_fee_rate"] = 300
    with pytest.raises(ConfigError, match="min_fee_rate: must not exceed max_fee_rate"):
        parse(doc)


def test_low_balance_threshold_is_optional_and_in_base_units() -> None:
    assets: dict[str, dict[str, Any]] = {
        "ETH": {"per_request_limit": "5", "daily_limit": "50", "low_balance": "1000000000000000000"},
        "USDC": {"per_request_limit": 1, "daily_limit": 2}}
    cfg = parse(raw(assets=assets))
    assert cfg.withdrawals is not None
    eth = cfg.withdrawals.chains["eth"]  # type: ignore[index]
    assert eth.assets["ETH"].low_balance == 10**18  # type: ignore[index]
    assert eth.assets["USDC"].low_balance == 0  # type: ignore[index]
    assets["ETH"]["low_balance"] = "1.5"
    with pytest.raises(ConfigError, match=r"withdrawals\.chains\.eth\.assets\.ETH\.low_balance"):
        parse(raw(assets=assets))
