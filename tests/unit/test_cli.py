"""The CLI: a bad configuration stops the start with the key and the reason, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
