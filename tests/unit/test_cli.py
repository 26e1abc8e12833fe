"""The CLI: one line and a documented exit code on every error; secrets masked in its output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from watcher.cli import main
from watcher.errors import ErrorKind, SinkError

ROOT = Path(__file__).resolve().parents[2]


def test_check_config_accepts_the_shipped_example(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BTC_RPC_USER", "watcher-example")
    monkeypatch.setenv("BTC_RPC_PASSWORD", "example-password")
    assert main(["check-config", "-c", str(ROOT / "config" / "example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "eth: family=evm" in out and "configuration ok" in out
    assert "btc: family=bitcoin" in out
    assert "example-password" not in out  # the btc RPC password, from the environment
    effective = yaml.safe_load(out.split("eth: family=evm")[0])
    assert effective["chains"]["eth"]["endpoints"][0] == {"name": "primary", "url": "http://geth-0.geth:8545",
                                                          "username": None, "password": None}
    assert effective["chains"]["eth"]["finality_mode"] == "finalized"
    assert effective["kafka"]["sasl_password"] is None


SECRET_URL_CONFIG = """
kafka: {bootstrap_servers: "127.0.0.1:9092", security_protocol: SASL_SSL, sasl_mechanism: PLAIN,
        sasl_username: svc}
chains:
  eth:
    family: evm
    chain_id: 1
    endpoints:
      - {name: infura, url: "https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef"}
      - {name: keyed, url: "https://node.internal:8545/?apikey=QueryKey99"}
    native_asset: {symbol: ETH, decimals: 18}
  btc:
    family: bitcoin
    network: regtest
    endpoints:
      - {name: core, url: "http://core.internal:8332", username_env: T_BTC_USER,
         password_env: T_BTC_PASSWORD}
    native_asset: {symbol: BTC, decimals: 8}
"""


def test_check_config_masks_every_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(SECRET_URL_CONFIG)
    monkeypatch.setenv("WATCHER__KAFKA__SASL_PASSWORD", "Sasl-Secret-From-Env")
    monkeypatch.setenv("T_BTC_USER", "rpcuser")
    monkeypatch.setenv("T_BTC_PASSWORD", "Rpc-Pa55word")
    assert main(["check-config", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    for secret in ("Sasl-Secret-From-Env", "0123456789abcdef0123456789abcdef", "rpcuser",
                   "Rpc-Pa55word", "QueryKey99"):
        assert secret not in out
    effective = yaml.safe_load(out.split("eth: family=evm")[0])
    assert effective["kafka"]["sasl_password"] == "***"
    assert [e["url"] for e in effective["chains"]["eth"]["endpoints"]] == [
        "https://mainnet.infura.io/v3/***", "https://node.internal:8545/?apikey=***"]
    assert effective["chains"]["btc"]["endpoints"][0]["password"] == "***"


def test_usage_error_is_one_line_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", "tail"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("watcher: ")
    assert "--config" in proc.stderr


@pytest.mark.parametrize("limit", ["0", "many"])
def test_bad_limit_is_a_usage_error(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["tail", "-c", str(ROOT / "config" / "local.yaml"), "--limit", limit])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("watcher: argument --limit:") and err.count("\n") == 1


def test_missing_file_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", "check-config", "-c",
                           str(tmp_path / "absent.yaml")], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("watcher: config <file>: cannot read") and "Traceback" not in proc.stderr


def test_runtime_failure_exits_1_with_secrets_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import watcher.tail

    async def unreachable(*_: object, **__: object) -> int:
        raise SinkError(ErrorKind.RETRIABLE, "cannot reach https://rpcuser:Rpc-Pa55word@node.internal:8545")

    monkeypatch.setattr(watcher.tail, "tail", unreachable)
    monkeypatch.setenv("T_BTC_USER", "rpcuser")
    monkeypatch.setenv("T_BTC_PASSWORD", "Rpc-Pa55word")
    path = tmp_path / "secret.yaml"
    path.write_text(SECRET_URL_CONFIG)
    monkeypatch.setenv("WATCHER__KAFKA__SASL_PASSWORD", "Sasl-Secret-From-Env")
    assert main(["tail", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == "watcher: [retriable] cannot reach https://***@node.internal:8545\n"


def test_internal_error_exits_4_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import watcher.cli

    def broken(*_: object) -> int:
        raise KeyError("chains")

    monkeypatch.setattr(watcher.cli, "_check_config", broken)
    monkeypatch.setenv("BTC_RPC_USER", "watcher-example")
    monkeypatch.setenv("BTC_RPC_PASSWORD", "example-password")
    assert main(["check-config", "-c", str(ROOT / "config" / "example.yaml")]) == 4
    assert capsys.readouterr().err == "watcher: internal error: KeyError: 'chains'\n"


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config" / "local.yaml").read_text().replace("reorg_window: 64",
                                                                        "reorg_window: 2"))
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", command, "-c", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "config chains.eth.reorg_window:" in proc.stderr
    assert "deepest confirmation rule" in proc.stderr


def test_environment_override_error_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("WATCHER__CHAINS__ETH__POLL_INTERVAL_MS", "soon")
    assert main(["check-config", "-c", str(ROOT / "config" / "local.yaml")]) == 2
    assert "chains.eth.poll_interval_ms" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["status", "--url", "http://127.0.0.1:9"], 3, "watcher status: cannot reach the watcher"),
    (["audit", "-c", "config/local.yaml", "--chain", "eth", "--from", "9", "--to", "3"], 2,
     "watcher audit: --to 3: must be >= --from 9"),
    (["rescan", "-c", "config/local.yaml", "--chain", "nope", "--from", "1", "--to", "3"], 2,
     "watcher rescan: --chain nope: not configured"),
    (["halt", "resume", "-c", "config/local.yaml", "--chain", "eth", "--from-block", "0",
      "--reason", "x"], 2, "watcher halt resume: --from-block 0: must be >= 1"),
    (["halt", "resume", "-c", "config/local.yaml", "--chain", "eth", "--from-block", "5",
      "--reason", " "], 2, "watcher halt resume: --reason: say why"),
    (["audit", "-c", "missing.yaml", "--chain", "eth", "--from", "1", "--to", "3"], 2,
     "watcher audit: config <file>: cannot read missing.yaml"),
    (["audit", "-c", "config/local.yaml", "--from", "1"], 2,
     "watcher audit: the following arguments are required: --chain, --to (see --help)"),
    (["rescan", "-c", "config/local.yaml", "--chain", "eth", "--from", "x", "--to", "3"], 2,
     "watcher rescan: argument --from: invalid int value: 'x'"),
])
def test_operator_commands_fail_with_one_line_and_the_documented_code(
        argv: list[str], code: int, message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", *argv], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith(message), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_kafka_down_is_exit_3_at_once_without_library_chatter() -> None:
    env = {**os.environ, "WATCHER__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", "audit", "-c", "config/local.yaml",
                           "--chain", "eth", "--from", "1", "--to", "2"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT, env=env)
    assert proc.returncode == 3
    assert proc.stderr.startswith("watcher audit: [retriable] cannot start consumer of "
                                  "payments.address-registrations")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_addresses_file_of_several_chains_is_read_for_the_one_asked(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "config" / "local.yaml").read_text())
    raw["chains"]["polygon"] = {**raw["chains"]["eth"], "chain_id": 137}
    raw["chains"].pop("btc", None)  # its credential files are relative to config/, not tmp
    raw["addresses_file"] = str(tmp_path / "addresses.yaml")
    (tmp_path / "addresses.yaml").write_text(
        "eth: ['0xa0Ee7A142d267C1f36714E4a8F75612F20a79720']\n"
        "polygon: ['0x23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f']\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "WATCHER__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", "audit", "-c", str(tmp_path / "c.yaml"),
                           "--chain", "eth", "--from", "1", "--to", "2"], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT, env=env)
    # Past the file (no "unknown chain"), stopped by Kafka being away.
    assert proc.returncode == 3, proc.stderr
    assert "cannot start consumer" in proc.stderr
