"""Real services for tests, started through ``deploy/local/devstack.py``.

The same code as the shell stack (``devstack.py up``), but every service gets free loopback
ports and a private state folder, so a test session runs beside a running dev stack.
Processes die with the test process (PR_SET_PDEATHSIG) even if pytest is killed.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVSTACK_PATH = REPO_ROOT / "deploy" / "local" / "devstack.py"
BTC_MINER_PATH = REPO_ROOT / "config" / "local" / "btc-miner.json"

_MODULE_NAME = "watcher_devstack"
_load_lock = threading.Lock()


def devstack() -> ModuleType:
    """deploy/local/devstack.py as a module (it is a script, not part of a package)."""
    with _load_lock:
        module = sys.modules.get(_MODULE_NAME)
        if module is None:
            spec = importlib.util.spec_from_file_location(_MODULE_NAME, DEVSTACK_PATH)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[_MODULE_NAME] = module  # dataclasses need the module registered
            spec.loader.exec_module(module)
        return module


def json_rpc(url: str, method: str, params: tuple[Any, ...] = (), *,
             auth: tuple[str, str] | None = None, timeout: float = 30.0) -> Any:
    """Synchronous JSON-RPC call; raises RuntimeError (DevStackError) on an RPC error."""
    return devstack().json_rpc(url, method, params, auth=auth, timeout=timeout)


@dataclass(frozen=True)
class KafkaService:
    bootstrap_servers: str
    port: int
    cluster_id: str
    version: str
    log: Path


@dataclass(frozen=True)
class AnvilService:
    name: str
    url: str
    ws_url: str
    port: int
    chain_id: int
    log: Path

    def rpc(self, method: str, *params: Any) -> Any:
        return json_rpc(self.url, method, params)


@dataclass(frozen=True)
class BtcdService:
    rpc_url: str
    rpc_user: str
    rpc_password: str
    port: int
    mining_address: str
    mining_wif: str
    log: Path

    def rpc(self, method: str, *params: Any, timeout: float = 60.0) -> Any:
        return json_rpc(self.rpc_url, method, params, auth=(self.rpc_user, self.rpc_password),
                        timeout=timeout)


@dataclass(frozen=True)
class PrometheusService:
    url: str
    port: int
    targets_dir: Path
    log: Path

    def set_targets(self, job: str, targets: list[str],
                    labels: dict[str, str] | None = None) -> None:
        """Scrape host:port `targets` as job `job` (file_sd: picked up within ~2 s)."""
        devstack().write_file_sd(self.targets_dir, job, targets, labels)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query via /api/v1/query; the `result` list."""
        ds = devstack()
        info = ds.PrometheusInfo(self.url, self.port, Path(), self.targets_dir, 0, self.log)
        result: list[dict[str, Any]] = info.query(expr)
        return result


class ServiceManager:
    """Starts services on free ports under one state folder; close() stops them all."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._ports: set[int] = set()
        self._lock = threading.Lock()
        self._anvil_count = 0

    def free_port(self) -> int:
        with self._lock:
            while True:
                port = int(devstack().free_port())
                if port not in self._ports:
                    self._ports.add(port)
                    return port

    def kafka(self) -> KafkaService:
        info = devstack().start_kafka(self.state_dir, self.free_port(), self.free_port(),
                                      die_with_parent=True)
        return KafkaService(info.bootstrap_servers, info.port, info.cluster_id, info.version,
                            info.server_log)

    def btcd(self, *, state_dir: Path | None = None, extra_args: tuple[str, ...] = ()) -> BtcdService:
        """A btcd regtest; ``state_dir`` for one of the caller's own (stopped with
        ``devstack().stop(state_dir, "btcd")``), ``extra_args`` for policy flags."""
        info = devstack().start_btcd(state_dir or self.state_dir, self.free_port(), None,
                                     die_with_parent=True, extra_args=extra_args)
        wif = str(json.loads(BTC_MINER_PATH.read_text())["wif"])
        return BtcdService(info.rpc_url, info.rpc_user, info.rpc_password, info.rpc_port,
                           info.mining_address, wif, info.log)

    def anvil(self, *, block_time: float | None = None, chain_id: int = 31337,
              extra_args: tuple[str, ...] = ()) -> AnvilService:
        with self._lock:
            self._anvil_count += 1
            name = "anvil" if self._anvil_count == 1 else f"anvil-{self._anvil_count}"
        info = devstack().start_anvil(self.state_dir, self.free_port(), name=name,
                                      chain_id=chain_id, block_time=block_time,
                                      extra_args=extra_args, die_with_parent=True)
        return AnvilService(name, info.url, info.ws_url, info.port, info.chain_id, info.log)

    def prometheus(self, *, scrape_interval: str = "1s") -> PrometheusService:
        info = devstack().start_prometheus(self.state_dir, self.free_port(), targets=[],
                                           scrape_interval=scrape_interval,
                                           die_with_parent=True)
        return PrometheusService(info.url, info.port, info.targets_dir, info.log)

    def stop(self, name: str) -> None:
        devstack().stop(self.state_dir, name)

    def close(self) -> None:
        left: list[str] = devstack().stop_all(self.state_dir)
        if left:
            raise RuntimeError(f"services still running after teardown: {left} "
                               f"(pid files in {self.state_dir / 'run'})")


class AnvilFactory:
    """Extra anvil instances (second endpoint, fresh chain); all stopped at session end."""

    def __init__(self, manager: ServiceManager) -> None:
        self._manager = manager

    def __call__(self, *, block_time: float | None = None, chain_id: int = 31337,
                 extra_args: tuple[str, ...] = ()) -> AnvilService:
        return self._manager.anvil(block_time=block_time, chain_id=chain_id,
                                   extra_args=extra_args)

    def stop(self, anvil: AnvilService) -> None:
        """Stop one instance early (e.g. to simulate an endpoint going down)."""
        self._manager.stop(anvil.name)
