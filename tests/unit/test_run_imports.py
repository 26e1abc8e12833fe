"""``watcher run`` for an EVM-only deposit watcher imports only what it runs.

Every module imported is CPU on the daemon's start-up critical path (the first range is
scanned only after it), so what a deposit-only EVM configuration never uses stays out:
the operator commands, the Bitcoin/UTXO family, the withdrawal machinery, leadership.
The daemon is run for real (``watcher.cli.main``) up to the first Kafka request, which
fails at once (nothing listens on port 9): by then the chain's adapter and the Kafka sink
are imported, as in a real start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

NOT_IMPORTED = (
    "watcher.ops",        # status, rescan, audit, halt (and their HTTP client)
    "watcher.tail",
    "watcher.withdrawals",
    "watcher.core.withdrawals",
    "watcher.core.coins",
    "watcher.core.utxo",
    "watcher.core.settled",
    "watcher.core.rederive",
    "watcher.core.resume",
    "watcher.kafka.settled",
    "watcher.kafka.leadership",
    "chains.bitcoin",
    "chains.evm.tx",
    "chains.evm.wallet",
    "eth_keys",
    "pydantic",
    "cffi",               # pycryptodome's keccak is bound through ctypes (chains.evm.keccak)
    "pycparser",
)
"""Packages (and their submodules) a deposit-only EVM ``watcher run`` must not import."""

IMPORTED = ("watcher.app", "chains.evm.adapter", "watcher.kafka.sink",
            "watcher.kafka.registrations", "yaml")
"""What proves the run got as far as a real start (and that the probe sees imports)."""

PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), flush=True))
from watcher.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def evm_only_config(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "local.yaml").read_text())
    raw["chains"] = {"eth": raw["chains"]["eth"]}
    raw["addresses_file"] = str(tmp_path / "addresses.yaml")
    raw["kafka"]["bootstrap_servers"] = "127.0.0.1:9"  # nothing listens: the run stops there
    (tmp_path / "addresses.yaml").write_text("eth: ['0xa0Ee7A142d267C1f36714E4a8F75612F20a79720']\n")
    path = tmp_path / "evm-only.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def modules_of_run(config: Path) -> set[str]:
    env = {**os.environ, "WATCHER_EVM_SCAN_WORKER": "off"}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(config)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=ROOT, env=env)
    assert proc.returncode == 1, proc.stderr  # Kafka unreachable: a runtime failure
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES ")))


def under(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


@pytest.fixture(scope="module")
def run_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    return modules_of_run(evm_only_config(tmp_path_factory.mktemp("run-imports")))


@pytest.mark.parametrize("package", IMPORTED)
def test_a_run_imports_what_it_uses(run_modules: set[str], package: str) -> None:
    assert package in run_modules


@pytest.mark.parametrize("package", NOT_IMPORTED)
def test_an_evm_deposit_run_does_not_import(run_modules: set[str], package: str) -> None:
    assert under(run_modules, package) == []


def test_the_full_help_still_lists_the_operator_commands() -> None:
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", "--help"], capture_output=True,
                          text=True, timeout=60, check=True, cwd=ROOT)
    for command in ("run", "check-config", "tail", "status", "rescan", "audit", "halt"):
        assert command in proc.stdout


def test_an_operator_command_still_parses_its_own_arguments() -> None:
    proc = subprocess.run([sys.executable, "-m", "watcher.cli", "rescan", "--help"],
                          capture_output=True, text=True, timeout=60, check=True, cwd=ROOT)
    assert "--chain" in proc.stdout and "--from" in proc.stdout
