"""Configuration: valid files load, bad ones fail naming the key and the reason."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from watcher.config import FinalityMode, apply_env_overrides, load, parse
from watcher.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def base() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    return raw


def with_(path: str, value: Any) -> dict[str, Any]:
    raw = base()
    node = raw
    parts = path.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


DELETE = object()

# The shipped example reads its Bitcoin endpoints' credentials from these variables.
EXAMPLE_ENV = {"BTC_RPC_USER": "watcher-example", "BTC_RPC_PASSWORD": "example-password"}


@pytest.fixture(autouse=True)
def _example_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("name", ["example.yaml", "local.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load(ROOT / "config" / name, environ=EXAMPLE_ENV)
    assert set(cfg.chains) == {"eth", "btc"}


def test_example_values() -> None:
    cfg = parse(base())
    eth = cfg.chains["eth"]  # type: ignore[index]
    assert eth.finality_mode is FinalityMode.FINALIZED
    assert eth.rule_for("ETH").required_for(10**19 - 1) == 12
    assert eth.rule_for("ETH").required_for(10**19) == 64
    assert eth.rule_for("USDC").required_for(10**12) == 12
    assert [t.symbol for t in eth.tokens] == ["USDC", "USDT"]
    assert "geth" not in repr(eth.endpoints[0])
    assert eth.confirm_quorum == 1  # default: today's behaviour
    assert parse(with_("chains.eth.confirm_quorum", 2)).chains["eth"].confirm_quorum == 2  # type: ignore[index]


@pytest.mark.parametrize(("path", "value", "key", "reason"), [
    ("kafka.bootstrap_servers", DELETE, "kafka.bootstrap_servers", "missing"),
    ("kafka.security_protocol", "TLS", "kafka.security_protocol", "must be"),
    ("kafka.sasl_mechanism", DELETE, "kafka.sasl_mechanism", "required"),
    ("kafka.topics.deposits", "bad topic!", "kafka.topics.deposits", "topic name"),
    ("kafka.colour", "red", "kafka.colour", "unknown key"),
    ("chains.eth.family", "solana", "chains.eth.family", "unknown family"),
    ("chains.eth.chain_id", DELETE, "chains.eth.chain_id", "required"),
    ("chains.eth.chain_id", "one", "chains.eth.chain_id", "integer"),
    ("chains.eth.endpoints", [], "chains.eth.endpoints", "at least one"),
    ("chains.eth.endpoints.0.url", "ftp://x", "chains.eth.endpoints[0].url", "http"),
    ("chains.eth.endpoints.0.url", "http://n:85a5", "chains.eth.endpoints[0].url", "http"),
    ("chains.eth.endpoints.1.name", "primary", "chains.eth.endpoints", "unique"),
    ("chains.eth.poll_interval_ms", 0, "chains.eth.poll_interval_ms", ">= 10"),
    ("chains.eth.confirm_quorum", 3, "chains.eth.confirm_quorum", "more than the 2 endpoint(s)"),
    ("chains.eth.confirm_quorum", 0, "chains.eth.confirm_quorum", ">= 1"),
    ("chains.eth.start_block", -1, "chains.eth.start_block", "block number"),
    ("chains.eth.finality.mode", "soon", "chains.eth.finality.mode", "depth"),
    ("chains.eth.tokens.0.contract", "0x1234", "chains.eth.tokens[0].contract", "20-byte"),
    ("chains.eth.tokens.1.symbol", "USDC", "chains.eth.tokens", "unique"),
    ("chains.eth.confirmations.DAI", 3, "chains.eth.confirmations.DAI", "unknown asset"),
    ("chains.eth.confirmations.ETH", [{"below": 5, "required": 1}], "chains.eth.confirmations.ETH[0]",
     "last tier"),
    ("chains.eth.confirmations.ETH", [{"below": 1.5, "required": 1}, {"required": 2}],
     "chains.eth.confirmations.ETH[0].below", "integers"),
    ("chains.eth.confirmations.ETH", [{"below": 9, "required": 1}, {"below": 5, "required": 2},
                                      {"required": 3}], "chains.eth.confirmations.ETH", "increasing"),
    ("chains.eth.confirmations.ETH", 0, "chains.eth.confirmations.ETH", ">= 1"),
    ("chains.eth.reorg_window", 10, "chains.eth.reorg_window", "deepest confirmation rule (64)"),
    ("chains.eth.traces", "maybe", "chains.eth.traces", "auto, on or off"),
    ("chains.eth.blocks_per_request", 0, "chains.eth.blocks_per_request", ">= 1"),
    ("chains.eth.batch_size", 5000, "chains.eth.batch_size", "<= 1000"),
    ("chains.ETH!", {}, "chains.ETH!", "chain id"),
    ("logging.level", "loud", "logging.level", "one of"),
    ("leadership.session_timeout_ms", 100, "leadership.session_timeout_ms", ">= 6000"),
    ("leadership.enabled", "yes", "leadership.enabled", "true or false"),
    ("leadership.lease", 1, "leadership.lease", "unknown key"),
])
def test_errors_name_key_and_reason(path: str, value: Any, key: str, reason: str) -> None:
    raw = with_(path, value) if not path.startswith("chains.ETH") else {**base(), "chains": {"ETH!": {}}}
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert err.value.key == key
    assert reason in err.value.reason


def test_env_overrides_take_yaml_values() -> None:
    raw = base()
    apply_env_overrides(raw, {
        "WATCHER__KAFKA__BOOTSTRAP_SERVERS": "b:9092",
        "WATCHER__KAFKA__SASL_PASSWORD": "s3cret",
        "WATCHER__CHAINS__ETH__POLL_INTERVAL_MS": "250",
        "WATCHER__CHAINS__ETH__ENDPOINTS": '[{name: only, url: "http://n:8545"}]',
        "UNRELATED": "x",
    })
    cfg = parse(raw)
    assert cfg.kafka.bootstrap_servers == "b:9092"
    assert cfg.kafka.sasl_password == "s3cret"
    assert "s3cret" not in repr(cfg.kafka)
    eth = cfg.chains["eth"]  # type: ignore[index]
    assert eth.poll_interval_ms == 250
    assert [e.name for e in eth.endpoints] == ["only"]


def test_env_override_of_a_scalar_with_a_mapping_fails_clearly() -> None:
    raw = copy.deepcopy(base())
    with pytest.raises(ConfigError) as err:
        apply_env_overrides(raw, {"WATCHER__KAFKA__BOOTSTRAP_SERVERS__X": "1"})
    assert err.value.key == "kafka.bootstrap_servers"


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(bad, environ={})
