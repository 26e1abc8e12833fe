"""Configuration of a bitcoin-family chain: network, credentials, dust, mempool.

Every error names the key path; no credential value ever appears in an error or a repr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from watcher.config import Family, parse
from watcher.errors import ConfigError

PASSWORD = "pw-Zq8!never-printed"


def raw_config(chain: dict[str, Any]) -> dict[str, Any]:
    btc: dict[str, Any] = {
        "family": "bitcoin",
        "network": "regtest",
        "endpoints": [{"name": "core", "url": "http://127.0.0.1:18443",
                       "username_env": "T_BTC_USER", "password_env": "T_BTC_PASSWORD"}],
        "native_asset": {"symbol": "BTC", "decimals": 8},
        "reorg_window": 16,
        "confirmations": {"default": 3},
    }
    btc.update(chain)
    return {"kafka": {"bootstrap_servers": "k:9092"}, "chains": {"btc": btc}}


ENV = {"T_BTC_USER": "alice", "T_BTC_PASSWORD": PASSWORD}


def parse_btc(chain: dict[str, Any], env: dict[str, str] | None = None,
              base_dir: Path = Path()) -> Any:
    cfg = parse(raw_config(chain), base_dir=base_dir, environ=ENV if env is None else env)
    return cfg.chains["btc"]  # type: ignore[index]


def config_error(chain: dict[str, Any], env: dict[str, str] | None = None,
                 base_dir: Path = Path()) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        parse_btc(chain, env, base_dir)
    assert PASSWORD not in str(err.value)
    return err.value


def test_defaults_and_credentials_from_the_environment() -> None:
    btc = parse_btc({})
    assert btc.family is Family.BITCOIN
    assert btc.network == "regtest"
    assert btc.dust_threshold == 546
    assert btc.mempool.enabled is False
    assert btc.mempool.poll_interval_ms == 1000
    assert btc.mempool.drop_after_s == 86_400
    (ep,) = btc.endpoints
    assert (ep.username, ep.password) == ("alice", PASSWORD)
    assert PASSWORD not in repr(ep) and "alice" not in repr(ep)
    assert PASSWORD not in repr(btc) and "18443" not in repr(btc)


def test_credentials_from_secret_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "user").write_text("bob\n")
    (tmp_path / "secrets" / "password").write_text(PASSWORD + "\n")
    btc = parse_btc({"endpoints": [{"name": "core", "url": "http://n:8332",
                                    "username_file": "secrets/user",
                                    "password_file": "secrets/password"}]},
                    env={}, base_dir=tmp_path)
    assert (btc.endpoints[0].username, btc.endpoints[0].password) == ("bob", PASSWORD)


def test_an_endpoint_without_credentials_is_allowed() -> None:
    btc = parse_btc({"endpoints": [{"name": "open", "url": "http://n:8332"}]})
    assert btc.endpoints[0].username is None and btc.endpoints[0].password is None


def test_mempool_and_dust_values() -> None:
    btc = parse_btc({"dust_threshold": 1000,
                     "mempool": {"enabled": True, "poll_interval_ms": 250, "drop_after_s": 600}})
    assert btc.dust_threshold == 1000
    assert (btc.mempool.enabled, btc.mempool.poll_interval_ms, btc.mempool.drop_after_s) == (
        True, 250, 600)


@pytest.mark.parametrize("network", ["bitcoin", "testnet", "testnet4", "signet", "regtest",
                                     "litecoin", "litecoin_testnet", "dogecoin",
                                     "dogecoin_testnet"])
def test_supported_networks(network: str) -> None:
    assert parse_btc({"network": network}).network == network


@pytest.mark.parametrize(("chain", "key", "reason"), [
    ({"network": None}, "chains.btc.network", "required"),
    ({"network": "bitcoin-cash"}, "chains.btc.network", "unknown network 'bitcoin-cash'"),
    ({"endpoints": [{"name": "c", "url": f"http://alice:{PASSWORD}@n:8332"}]},
     "chains.btc.endpoints[0].url", "must not embed credentials"),
    ({"endpoints": [{"name": "c", "url": "http://alice@n:8332"}]},
     "chains.btc.endpoints[0].url", "must not embed credentials"),
    ({"endpoints": [{"name": "c", "url": "http://n:8332", "password": PASSWORD}]},
     "chains.btc.endpoints[0].password", "unknown key"),
    ({"endpoints": [{"name": "c", "url": "http://n:8332", "username": "alice"}]},
     "chains.btc.endpoints[0].username", "unknown key"),
    ({"endpoints": [{"name": "c", "url": "http://n:8332", "username_env": "T_BTC_USER"}]},
     "chains.btc.endpoints[0].password_env", "required with the other credential"),
    ({"endpoints": [{"name": "c", "url": "http://n:8332", "password_env": "T_BTC_PASSWORD"}]},
     "chains.btc.endpoints[0].username_env", "required with the other credential"),
    ({"endpoints": [{"name": "c", "url": "http://n:8332", "username_env": "T_BTC_USER",
                     "password_env": "T_UNSET"}]},
     "chains.btc.endpoints[0].password_env", "T_UNSET is not set"),
    ({"endpoints": [{"name": "c", "url": "http://n:8332", "username_env": "T_BTC_USER",
                     "password_env": "T_BTC_PASSWORD", "password_file": "x"}]},
     "chains.btc.endpoints[0].password_env", "not both"),
    ({"endpoints": [{"name": "c", "url": "http://n:8332", "username_env": "T_BTC_USER",
                     "password_file": "no-such-secret"}]},
     "chains.btc.endpoints[0].password_file", "cannot read"),
    ({"dust_threshold": -1}, "chains.btc.dust_threshold", ">= 0"),
    ({"dust_threshold": 1.5}, "chains.btc.dust_threshold", "integer"),
    ({"mempool": {"enabled": "yes"}}, "chains.btc.mempool.enabled", "true or false"),
    ({"mempool": {"poll_interval_ms": 1}}, "chains.btc.mempool.poll_interval_ms", ">= 50"),
    ({"mempool": {"drop_after_s": 0}}, "chains.btc.mempool.drop_after_s", ">= 1"),
    ({"mempool": {"interval": 5}}, "chains.btc.mempool.interval", "unknown key"),
    ({"poll_interval_ms": 5}, "chains.btc.poll_interval_ms", ">= 10"),
    ({"confirmations": {"BTC": [{"below": "100000000", "required": 1}, {"required": 30}]}},
     "chains.btc.reorg_window", "deepest confirmation rule (30)"),
])
def test_errors_name_the_key(chain: dict[str, Any], key: str, reason: str) -> None:
    err = config_error(chain)
    assert err.key == key
    assert reason in err.reason


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    err = config_error({"endpoints": [{"name": "c", "url": "http://n:8332",
                                       "username_env": "T_BTC_USER", "password_file": "pw"}]},
                       base_dir=tmp_path)
    assert (err.key, "is empty" in err.reason) == ("chains.btc.endpoints[0].password_file", True)


def test_amount_tiers_in_satoshis() -> None:
    btc = parse_btc({"confirmations": {"BTC": [{"below": "100000000", "required": 1},
                                               {"below": 1_000_000_000, "required": 3},
                                               {"required": 6}]}})
    rule = btc.rule_for("BTC")
    assert [rule.required_for(a) for a in (99_999_999, 100_000_000, 999_999_999,
                                           1_000_000_000)] == [1, 3, 3, 6]


def test_network_and_mempool_are_refused_on_an_evm_chain() -> None:
    raw = raw_config({})
    raw["chains"]["eth"] = {"family": "evm", "chain_id": 1, "network": "regtest",
                            "endpoints": [{"name": "a", "url": "http://n:8545"}],
                            "native_asset": {"symbol": "ETH", "decimals": 18}}
    with pytest.raises(ConfigError) as err:
        parse(raw, environ=ENV)
    assert err.value.key == "chains.eth.network"
    del raw["chains"]["eth"]["network"]
    raw["chains"]["eth"]["mempool"] = {"enabled": True}
    with pytest.raises(ConfigError) as err:
        parse(raw, environ=ENV)
    assert err.value.key == "chains.eth.mempool.enabled"
