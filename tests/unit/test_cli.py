"""The CLI: a bad configuration stops the start with the key and the reason, exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from watcher.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_check_config_accepts_the_shipped_example(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BTC_RPC_USER", "watcher-example")
    monkeypatch.setenv("BTC_RPC_PASSWORD", "example-password")
    assert main(["check-config", "-c", str(ROOT / "config" / "example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "eth: family=evm" in out and "configuration ok" in out
    assert "btc: family=bitcoin" in out
    assert "example-password" not in out
    assert "geth-0" not in out  # endpoint URLs (which may hold API keys) are never printed


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
