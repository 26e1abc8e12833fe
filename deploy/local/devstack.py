#!/usr/bin/env python3
"""Local real-service stack for the deposit watcher (stdlib only, Python >= 3.11).

One implementation used by the shell (``python3 deploy/local/devstack.py up``) and by
the pytest fixtures in ``tests/support/services.py``.  Services, all real, no Docker:

* Apache Kafka, KRaft single node (broker+controller), jars resolved by Maven from
  ``deploy/local/kafka-pom.xml``;
* btcd (regtest, no TLS), built with ``go install``;
* anvil (Foundry), from the ``@foundry-rs/anvil-linux-*`` npm package (plus ``solc``);
* Prometheus, from Debian's ``prometheus`` package.

Every process runs in the background with ``<state>/run/<name>.pid`` and
``<state>/run/<name>.log``; it is waited for until it really answers, and stopped by
its own pid (SIGTERM to its process group, then SIGKILL).

Installed tools are cached in ``$WATCHER_DEV_HOME`` (default ``~/.cache/watcher-dev``);
every install step is skipped when its result is already there.

    python3 deploy/local/devstack.py install
    python3 deploy/local/devstack.py up      [--state-dir .stack] [--watcher-target H:P]
    python3 deploy/local/devstack.py status  [--state-dir .stack]
    python3 deploy/local/devstack.py down    [--state-dir .stack]
    python3 deploy/local/devstack.py settle  # wait for the watcher to commit anvil's head
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_STATE_DIR = REPO_ROOT / ".stack"
KAFKA_POM = HERE / "kafka-pom.xml"
BTC_MINER_FILE = REPO_ROOT / "config" / "local" / "btc-miner.json"

BTCD_MODULE = "github.com/btcsuite/btcd"
BTCD_VERSIONS = ("v0.26.0", "v0.25.0")  # first one the Go proxy serves wins
ANVIL_VERSION = "1.7.1"
SOLC_VERSION = "0.8.30"
PROMETHEUS_DEB_PATH = Path("/usr/bin/prometheus")

# Contract ports (shared/CONTRACT.md, "Local development stack").
DEFAULT_PORTS: dict[str, int] = {
    "kafka": 9092,
    "kafka_controller": 9093,
    "anvil": 8545,
    "btcd": 18334,
    "prometheus": 9090,
}
DEFAULT_WATCHER_TARGET = "127.0.0.1:9308"
BTCD_RPC_USER = "watcher"
BTCD_RPC_PASSWORD = "watcher"
ANVIL_CHAIN_ID = 31337
BTC_INITIAL_BLOCKS = 101  # coinbase maturity is 100: block 1's coinbase becomes spendable
STACK_SERVICES = ("kafka", "btcd", "anvil", "prometheus")

LOG_TAIL_LINES = 40


class DevStackError(RuntimeError):
    """A service could not be installed, started or stopped."""


def _say(msg: str) -> None:
    print(f"[devstack] {msg}", file=sys.stderr, flush=True)


def dev_home() -> Path:
    """Cache of installed tools; override with WATCHER_DEV_HOME."""
    env = os.environ.get("WATCHER_DEV_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "watcher-dev"


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"    (cannot read {path}: {exc})"
    return "\n".join("    " + line for line in data.splitlines()[-lines:])


def _failure(what: str, reason: str, logs: Sequence[Path]) -> DevStackError:
    parts = [f"{what} FAILED: {reason}"]
    for log in logs:
        parts.append(f"  log: {log}")
        if log.exists():
            parts.append(f"  last lines of {log.name}:")
            parts.append(tail(log))
    return DevStackError("\n".join(parts))


# --------------------------------------------------------------------------- installs


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Cross-process lock so a shell `up` and a pytest run never install concurrently."""
    home = dev_home()
    home.mkdir(parents=True, exist_ok=True)
    with (home / f".{name}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_logged(argv: Sequence[str], log_name: str, what: str, *,
                env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    log = dev_home() / "logs" / f"{log_name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"\n=== {time.strftime('%F %T')} $ {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            rc = subprocess.call(list(argv), stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=cwd)
        except FileNotFoundError as exc:
            raise _failure(what, f"command not found: {argv[0]} ({exc})", [log]) from exc
    if rc != 0:
        raise _failure(what, f"`{' '.join(argv)}` exited with {rc}", [log])


def kafka_version() -> str:
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", KAFKA_POM.read_text())
    if not match:
        raise DevStackError(f"no <kafka.version> property in {KAFKA_POM}")
    return match.group(1)


def kafka_libs() -> Path:
    return dev_home() / f"kafka-{kafka_version()}" / "libs"


def _kafka_installed(libs: Path) -> bool:
    ver = kafka_version()
    needed = [f"kafka_2.13-{ver}.jar", f"kafka-tools-{ver}.jar", f"kafka-clients-{ver}.jar"]
    if not all((libs / jar).is_file() for jar in needed):
        return False
    names = [p.name for p in libs.glob("*.jar")]
    return any(n.startswith("log4j-core-") for n in names) and any(
        n.startswith("log4j-slf4j-impl-") for n in names)


def install_kafka() -> Path:
    libs = kafka_libs()
    if _kafka_installed(libs):
        return libs
    with _lock("install-kafka"):
        if _kafka_installed(libs):
            return libs
        mvn = shutil.which("mvn")
        if not mvn:
            raise DevStackError("Kafka install FAILED: `mvn` not found (apt-get install -y maven)")
        _say(f"installing Kafka {kafka_version()} jars into {libs} (maven) ...")
        tmp = libs.parent / "libs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _run_logged([mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
                     f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
                    "mvn", "Kafka install (maven copy-dependencies)")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.rename(libs)
        if not _kafka_installed(libs):
            raise DevStackError(f"Kafka install FAILED: expected jars missing in {libs}")
    return libs


def btcd_bin() -> Path:
    return dev_home() / "bin" / "btcd"


def _btcd_installed(path: Path) -> bool:
    if not os.access(path, os.X_OK):
        return False
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(f"version {v.lstrip('v')}" in out for v in BTCD_VERSIONS)


def install_btcd() -> Path:
    path = btcd_bin()
    if _btcd_installed(path):
        return path
    with _lock("install-btcd"):
        if _btcd_installed(path):
            return path
        go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists()
                                   else None)
        if not go:
            raise DevStackError("btcd install FAILED: `go` toolchain not found")
        env = dict(os.environ, GOBIN=str(path.parent), CGO_ENABLED="0")
        path.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for version in BTCD_VERSIONS:
            _say(f"installing btcd {version} into {path.parent} (go install) ...")
            try:
                _run_logged([go, "install", f"{BTCD_MODULE}@{version}"], "go",
                            f"btcd {version} install (go install)", env=env)
            except DevStackError as exc:
                errors.append(str(exc))
                continue
            if _btcd_installed(path):
                return path
        raise DevStackError("\n".join(errors) or f"btcd install FAILED: {path} not usable")
    return path


def _anvil_pkg() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if arch is None:
        raise DevStackError(f"anvil: unsupported CPU architecture {machine}")
    return f"@foundry-rs/anvil-linux-{arch}"


def npm_dir() -> Path:
    return dev_home() / "npm"


def anvil_bin() -> Path:
    return npm_dir() / "node_modules" / _anvil_pkg() / "bin" / "anvil"


def solc_js() -> Path:
    """solc (solcjs) entry point: run with `node <path>` or import from node."""
    return npm_dir() / "node_modules" / "solc" / "solc.js"


def _npm_pkg_version(name: str) -> str | None:
    try:
        data = json.loads((npm_dir() / "node_modules" / name / "package.json").read_text())
    except (OSError, ValueError):
        return None
    return str(data.get("version"))


def _node_tools_installed() -> bool:
    return (_npm_pkg_version(_anvil_pkg()) == ANVIL_VERSION
            and _npm_pkg_version("solc") == SOLC_VERSION
            and os.access(anvil_bin(), os.X_OK))


def install_node_tools() -> Path:
    if _node_tools_installed():
        return anvil_bin()
    with _lock("install-npm"):
        if _node_tools_installed():
            return anvil_bin()
        npm = shutil.which("npm")
        if not npm:
            raise DevStackError("anvil install FAILED: `npm` not found (apt-get install -y npm)")
        _say(f"installing anvil {ANVIL_VERSION} + solc {SOLC_VERSION} into {npm_dir()} (npm) ...")
        npm_dir().mkdir(parents=True, exist_ok=True)
        _run_logged([npm, "install", "--prefix", str(npm_dir()), "--no-audit", "--no-fund",
                     "--save-exact", f"{_anvil_pkg()}@{ANVIL_VERSION}", f"solc@{SOLC_VERSION}"],
                    "npm", "anvil/solc install (npm)")
        binary = anvil_bin()
        if binary.exists() and not os.access(binary, os.X_OK):
            binary.chmod(0o755)
        if not _node_tools_installed():
            raise DevStackError(f"anvil install FAILED: {binary} missing after npm install")
    return anvil_bin()


def prometheus_bin() -> Path | None:
    if PROMETHEUS_DEB_PATH.exists():
        return PROMETHEUS_DEB_PATH
    found = shutil.which("prometheus")
    return Path(found) if found else None


def install_prometheus() -> Path:
    found = prometheus_bin()
    if found:
        return found
    with _lock("install-apt"):
        found = prometheus_bin()
        if found:
            return found
        prefix: list[str] = []
        if os.geteuid() != 0:
            if not shutil.which("sudo"):
                raise DevStackError("Prometheus install FAILED: not root and no sudo; "
                                    "run `apt-get install -y prometheus` as root")
            prefix = ["sudo", "-n"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        # No init system here: keep the package's maintainer scripts from starting a
        # system Prometheus on :9090 (policy-rc.d exit 101 = "do not start").
        policy = Path("/usr/sbin/policy-rc.d")
        created_policy = False
        if os.geteuid() == 0 and not policy.exists():
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            created_policy = True
        try:
            _say("installing Prometheus (apt-get) ...")
            _run_logged([*prefix, "apt-get", "update"], "apt", "apt-get update", env=env)
            _run_logged([*prefix, "apt-get", "install", "-y", "--no-install-recommends",
                         "prometheus"], "apt", "Prometheus install (apt-get)", env=env)
        finally:
            if created_policy:
                policy.unlink(missing_ok=True)
        found = prometheus_bin()
        if not found:
            raise DevStackError("Prometheus install FAILED: no prometheus binary after apt-get")
    return found


INSTALLERS: dict[str, Callable[[], Path]] = {
    "kafka": install_kafka,
    "btcd": install_btcd,
    "anvil": install_node_tools,
    "prometheus": install_prometheus,
}


def install_all(services: Sequence[str] = STACK_SERVICES) -> None:
    """Install what is missing, in parallel (downloads dominate); no-op when all cached."""
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        futures = {name: pool.submit(INSTALLERS[name]) for name in services}
    errors = []
    for name, fut in futures.items():
        exc = fut.exception()
        if exc is not None:
            errors.append(f"{name}: {exc}")
    if errors:
        raise DevStackError("install failed:\n" + "\n".join(errors))


# ------------------------------------------------------------------- process handling

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()
_PR_SET_PDEATHSIG = 1


def run_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "run"


def pid_path(state_dir: Path, name: str) -> Path:
    return run_dir(state_dir) / f"{name}.pid"


def log_path(state_dir: Path, name: str) -> Path:
    return run_dir(state_dir) / f"{name}.log"


def _meta_path(state_dir: Path, name: str) -> Path:
    return run_dir(state_dir) / f"{name}.meta.json"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, starttime) from /proc/<pid>/stat, None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], fields[19]


def _reap(pid: int) -> bool | None:
    """Reap ``pid`` if it exited; for a child started here, whether it did (None for others)."""
    with _CHILDREN_LOCK:
        child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return False
        with _CHILDREN_LOCK:
            _CHILDREN.pop(pid, None)
        return True
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    return None


def pid_alive(pid: int, starttime: str | None = None) -> bool:
    exited = _reap(pid)
    if exited is not None:
        # A child's exit is known from wait(), not from its state "Z": a killed
        # multi-threaded process (btcd, the JVM) shows "Z" while its other threads still
        # exit and hold its listening sockets, so a restart on the same port would fail.
        return not exited
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return starttime is None or stat[1] == starttime


@dataclass(frozen=True)
class Proc:
    name: str
    pid: int
    starttime: str | None
    state_dir: Path

    @property
    def log(self) -> Path:
        return log_path(self.state_dir, self.name)

    def alive(self) -> bool:
        return pid_alive(self.pid, self.starttime)


def read_proc(state_dir: Path, name: str) -> Proc | None:
    try:
        pid = int(pid_path(state_dir, name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    starttime = None
    with contextlib.suppress(OSError, ValueError):
        starttime = json.loads(_meta_path(state_dir, name).read_text()).get("starttime")
    return Proc(name, pid, starttime, Path(state_dir))


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(name: str, argv: Sequence[str], state_dir: Path, *, env: dict[str, str] | None = None,
          cwd: Path | None = None, die_with_parent: bool = False) -> Proc:
    """Start argv in the background (own session), stdout+stderr to run/<name>.log."""
    state_dir = Path(state_dir)
    run_dir(state_dir).mkdir(parents=True, exist_ok=True)
    old = read_proc(state_dir, name)
    if old is not None and old.alive():
        raise DevStackError(f"{name} is already running (pid {old.pid}, {pid_path(state_dir, name)})")
    log = log_path(state_dir, name)
    # PDEATHSIG fires when the *thread* that forked exits, so only use it from the main thread.
    use_pdeathsig = die_with_parent and threading.current_thread() is threading.main_thread()
    with log.open("ab") as fh:
        fh.write(f"\n=== {time.strftime('%F %T')} devstack start: {' '.join(argv)}\n".encode())
        fh.flush()
        try:
            child = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                env=env, cwd=cwd, start_new_session=True,
                preexec_fn=_set_pdeathsig if use_pdeathsig else None)  # noqa: PLW1509
        except OSError as exc:
            raise _failure(f"starting {name}", f"cannot execute {argv[0]}: {exc}", [log]) from exc
    with _CHILDREN_LOCK:
        _CHILDREN[child.pid] = child
    stat = _proc_stat(child.pid)
    starttime = stat[1] if stat else None
    pid_path(state_dir, name).write_text(f"{child.pid}\n")
    _meta_path(state_dir, name).write_text(json.dumps(
        {"pid": child.pid, "starttime": starttime, "argv": list(argv),
         "started_at": time.time()}, indent=1))
    return Proc(name, child.pid, starttime, state_dir)


def _signal_group(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(proc: Proc, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _CHILDREN_LOCK:
            child = _CHILDREN.get(proc.pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.1)
        if not proc.alive():
            return True
        time.sleep(0.05)
    return not proc.alive()


def stop_proc(proc: Proc, timeout: float = 20.0) -> None:
    """SIGTERM the process (group), wait, then SIGKILL; raise if it survives."""
    if proc.alive():
        _signal_group(proc.pid, signal.SIGTERM)
        if not _wait_gone(proc, timeout):
            _say(f"{proc.name} (pid {proc.pid}) ignored SIGTERM for {timeout:.0f}s; SIGKILL")
            _signal_group(proc.pid, signal.SIGKILL)
            if not _wait_gone(proc, 10.0):
                raise DevStackError(f"{proc.name} (pid {proc.pid}) survived SIGKILL; log: {proc.log}")
    with _CHILDREN_LOCK:
        _CHILDREN.pop(proc.pid, None)
    for path in (pid_path(proc.state_dir, proc.name), _meta_path(proc.state_dir, proc.name)):
        with contextlib.suppress(OSError):
            # only remove files that still describe this process
            if path.suffix == ".pid" and path.read_text().split()[0] != str(proc.pid):
                continue
            path.unlink()


def stop(state_dir: Path, name: str, timeout: float = 20.0) -> bool:
    """Stop service `name` of state_dir; True if it was running."""
    proc = read_proc(state_dir, name)
    if proc is None:
        return False
    was_alive = proc.alive()
    stop_proc(proc, timeout)
    return was_alive


def started_names(state_dir: Path) -> list[str]:
    """Services devstack started in state_dir (pid files without a meta file, such as the
    watcher's, belong to someone else and are left alone)."""
    return sorted(p.name.removesuffix(".meta.json") for p in run_dir(state_dir).glob("*.meta.json")
                  if pid_path(state_dir, p.name.removesuffix(".meta.json")).exists())


def stop_all(state_dir: Path) -> list[str]:
    """Stop every process started in state_dir (in parallel); return names still alive."""
    names = started_names(state_dir)
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        list(pool.map(lambda n: _stop_quiet(state_dir, n), names))
    return [n for n in names if (p := read_proc(state_dir, n)) is not None and p.alive()]


def _stop_quiet(state_dir: Path, name: str) -> None:
    try:
        if stop(state_dir, name):
            _say(f"stopped {name}")
    except DevStackError as exc:
        _say(str(exc))


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _require_free(name: str, *ports: int) -> None:
    for port in ports:
        if port_open(port):
            raise DevStackError(f"{name} cannot start: 127.0.0.1:{port} is already in use "
                                f"(another stack running? try `devstack.py status`)")


def wait_ready(proc: Proc, probe: Callable[[], bool], timeout: float, what: str,
               extra_logs: Sequence[Path] = ()) -> None:
    """Poll probe() until True; on timeout or early exit stop proc and raise with the log tail."""
    deadline = time.monotonic() + timeout
    last: object = "no answer yet"
    while True:
        if not proc.alive():
            raise _failure(what, f"process {proc.pid} exited during startup",
                           [proc.log, *extra_logs])
        try:
            if probe():
                return
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            with contextlib.suppress(DevStackError):
                stop_proc(proc, timeout=10)
            raise _failure(what, f"not ready after {timeout:.0f}s (last probe: {last})",
                           [proc.log, *extra_logs])
        time.sleep(0.25)


# ----------------------------------------------------------------------------- probes


def json_rpc(url: str, method: str, params: Sequence[Any] = (), *,
             auth: tuple[str, str] | None = None, timeout: float = 5.0) -> Any:
    body = json.dumps({"jsonrpc": "1.0" if auth else "2.0", "id": 1, "method": method,
                       "params": list(params)}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        # btcd answers RPC errors with HTTP 500 and a JSON body
        payload = exc.read()
        try:
            data = json.loads(payload)
        except ValueError:
            raise DevStackError(f"{method}: HTTP {exc.code} {payload[:200]!r}") from exc
    if data.get("error"):
        raise DevStackError(f"{method} -> error {data['error']}")
    return data.get("result")


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def processed_height(metrics: str, chain: str) -> int | None:
    """``watcher_processed_height`` of ``chain`` in a Prometheus text exposition."""
    found = re.search(r'^watcher_processed_height\{[^}]*chain="' + re.escape(chain)
                      + r'"[^}]*\} (\S+)$', metrics, re.M)
    return int(float(found.group(1))) if found else None


def settle_watcher(metrics_url: str = f"http://{DEFAULT_WATCHER_TARGET}",
                   anvil_url: str = f"http://127.0.0.1:{DEFAULT_PORTS['anvil']}",
                   chain: str = "eth", timeout: float = 10.0) -> bool:
    """Wait until the local watcher has committed anvil's head: what `make down` does once
    the traffic has stopped, before it stops the watcher (see :func:`anvil_state_args`).
    False when it did not within ``timeout`` or could not be asked."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            head = int(json_rpc(anvil_url, "eth_blockNumber", timeout=2), 16)
            status, body = http_get(f"{metrics_url}/metrics", timeout=2)
            done = processed_height(body.decode(errors="replace"), chain)
            if status == 200 and done is not None and done >= head:
                return True
        except (DevStackError, OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _kafka_request(host: str, port: int, api_key: int, api_version: int, body: bytes,
                   timeout: float = 3.0) -> bytes:
    client_id = b"devstack"
    header = struct.pack(">hhih", api_key, api_version, 7, len(client_id)) + client_id
    payload = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        data = _recv_exact(sock, size)
    if struct.unpack(">i", data[:4])[0] != 7:
        raise DevStackError("kafka: correlation id mismatch")
    return data[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("kafka closed the connection")
        buf += chunk
    return bytes(buf)


def kafka_api_versions(host: str, port: int) -> dict[int, tuple[int, int]]:
    """ApiVersions v0 round trip: {api_key: (min_version, max_version)}."""
    data = _kafka_request(host, port, 18, 0, b"")
    error, count = struct.unpack(">hi", data[:6])
    if error:
        raise DevStackError(f"kafka ApiVersions error code {error}")
    out = {}
    for i in range(count):
        key, lo, hi = struct.unpack(">hhh", data[6 + 6 * i: 12 + 6 * i])
        out[key] = (lo, hi)
    return out


def kafka_broker_count(host: str, port: int) -> int:
    """Metadata v4 round trip (no topics); number of live brokers the broker reports."""
    data = _kafka_request(host, port, 3, 4, struct.pack(">i?", 0, False))
    return int(struct.unpack(">i", data[4:8])[0])  # after throttle_time_ms


# ------------------------------------------------------------------------------ Kafka


@dataclass(frozen=True)
class KafkaInfo:
    bootstrap_servers: str
    port: int
    controller_port: int
    cluster_id: str
    version: str
    pid: int
    log: Path
    server_log: Path


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise DevStackError("Kafka cannot start: `java` not found (apt-get install -y default-jre)")
    return found


def _kafka_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return f"""# generated by deploy/local/devstack.py - single-node KRaft (broker+controller)
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
num.partitions=3
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
log.segment.bytes=268435456
"""


def _kafka_log4j2(run: Path) -> str:
    server_log = run / "kafka-server.log"
    return f"""# generated by deploy/local/devstack.py
status = warn
name = watcher-devstack-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {server_log}
appender.file.filePattern = {server_log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = info
rootLogger.appenderRef.console.ref = STDOUT
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = warn
"""


def _kafka_jvm_opts(log4j2: Path, run: Path) -> list[str]:
    heap = os.environ.get("KAFKA_HEAP_OPTS", "-Xms128m -Xmx512m").split()
    extra = os.environ.get("WATCHER_KAFKA_JVM_OPTS", "").split()
    return [*heap, "-XX:+UseSerialGC", "-XX:+ExitOnOutOfMemoryError", "-Xss1m",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j2}",
            f"-Dkafka.logs.dir={run}", *extra]


def start_kafka(state_dir: Path, port: int = DEFAULT_PORTS["kafka"],
                controller_port: int = DEFAULT_PORTS["kafka_controller"], *,
                timeout: float = 120.0, die_with_parent: bool = False) -> KafkaInfo:
    state_dir = Path(state_dir)
    libs = install_kafka()
    version = kafka_version()
    home = state_dir / "kafka"
    data = home / "data"
    run = run_dir(state_dir)
    run.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    log4j2 = home / "log4j2.properties"
    stamp = home / "formatted.json"
    server_log = run / "kafka-server.log"
    wanted = {"version": version, "port": port, "controller_port": controller_port}

    existing = read_proc(state_dir, "kafka")
    if existing is not None and existing.alive():
        info = json.loads(stamp.read_text())
        if {k: info.get(k) for k in wanted} == wanted and kafka_broker_count("127.0.0.1", port):
            return KafkaInfo(f"127.0.0.1:{port}", port, controller_port, info["cluster_id"],
                             version, existing.pid, existing.log, server_log)
        raise DevStackError(f"kafka already running in {state_dir} with other settings; "
                            "run `devstack.py down` first")
    _require_free("kafka", port, controller_port)

    props.write_text(_kafka_properties(data, port, controller_port))
    log4j2.write_text(_kafka_log4j2(run))
    java = _java()
    classpath = f"{libs}/*"
    stamp_info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        stamp_info = json.loads(stamp.read_text())
    formatted = (data / "meta.properties").exists()
    if formatted and {k: stamp_info.get(k) for k in wanted} != wanted:
        # the standalone controller's endpoint is recorded at format time
        _say(f"kafka: settings changed ({stamp_info} -> {wanted}); wiping dev data {data}")
        shutil.rmtree(data)
        formatted = False
    if not formatted:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        fmt_log = run / "kafka-format.log"
        with fmt_log.open("ab") as fh:
            rc = subprocess.call(
                [java, "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 f"-Dlog4j2.configurationFile={log4j2}", "-cp", classpath,
                 "kafka.tools.StorageTool", "format", "--standalone", f"--cluster-id={cluster_id}",
                 "-c", str(props)],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if rc != 0:
            raise _failure("kafka storage format", f"StorageTool exited with {rc}", [fmt_log])
        stamp.write_text(json.dumps({**wanted, "cluster_id": cluster_id}))
    else:
        cluster_id = stamp_info["cluster_id"]

    log_offset = server_log.stat().st_size if server_log.exists() else 0
    proc = spawn("kafka", [java, *_kafka_jvm_opts(log4j2, run), "-cp", classpath,
                           "kafka.Kafka", str(props)],
                 state_dir, cwd=home, die_with_parent=die_with_parent)

    def probe() -> bool:
        if kafka_broker_count("127.0.0.1", port) < 1:
            return False
        with server_log.open("rb") as fh:  # only this run's lines
            size = server_log.stat().st_size
            fh.seek(log_offset if size >= log_offset else 0)
            return b"Kafka Server started" in fh.read()

    wait_ready(proc, probe, timeout, f"kafka {version} on 127.0.0.1:{port}", [server_log])
    return KafkaInfo(f"127.0.0.1:{port}", port, controller_port, cluster_id, version, proc.pid,
                     proc.log, server_log)


# ------------------------------------------------------------------------------- btcd


@dataclass(frozen=True)
class BtcdInfo:
    rpc_url: str
    rpc_port: int
    p2p_port: int | None
    rpc_user: str
    rpc_password: str
    mining_address: str
    pid: int
    log: Path

    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        return json_rpc(self.rpc_url, method, params, auth=(self.rpc_user, self.rpc_password),
                        timeout=timeout)


# btcd deletes its regtest database at every start (btcd.go, removeRegressionDB), so a
# restarted btcd would mine a new chain under the watcher's checkpoints in Kafka, which name
# the old one's blocks: a reorg below finality, and the watcher halts, as it must. With
# ``persist`` (what `make up` does) devstack keeps the chain itself, like anvil's --state:
# the raw blocks, appended at every save, and the mempool, submitted again at the next start.
BTCD_CHAIN_FILE = "chain.blocks"
"""Under ``<state>/btcd``: one hex-encoded raw block a line, heights 1.. in order."""
BTCD_MEMPOOL_FILE = "mempool.txs"
"""Under ``<state>/btcd``: one hex-encoded raw transaction a line, as of the last save."""

Rpc = Callable[..., Any]
"""``rpc(method, *params)`` of a btcd: :meth:`BtcdInfo.rpc` or any client of the same shape."""


def block_hash(raw: bytes) -> str:
    """A block's hash as RPC prints it: double SHA-256 of its 80-byte header, reversed."""
    return hashlib.sha256(hashlib.sha256(raw[:80]).digest()).digest()[::-1].hex()


def _prev_hash(raw: bytes) -> str:
    return raw[4:36][::-1].hex()


def _decoded(line: str) -> bytes:
    """A saved line's raw block, or b"" for one that is not hex (nothing matches it)."""
    try:
        return bytes.fromhex(line)
    except ValueError:
        return b""


def _saved_lines(path: Path) -> tuple[list[str], bool]:
    """The complete lines of ``path``, and whether nothing follows them: a line a kill cut
    short (no newline yet) is not one, and must not be appended to."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return [], False
    *lines, rest = text.split("\n")
    return [ln for ln in lines if ln], rest == ""


def _write_lines(path: Path, lines: Sequence[str], *, append: bool = False) -> None:
    """``lines`` written and synced: appended to ``path``, or else replacing it whole (a
    reader sees the old file or the new one, never half of it)."""
    target = path if append else path.with_name(path.name + ".tmp")
    with open(target, "a" if append else "w") as out:
        out.write("".join(f"{ln}\n" for ln in lines))
        out.flush()
        os.fsync(out.fileno())
    if not append:
        os.replace(target, path)


def save_btcd_chain(rpc: Rpc, home: Path) -> int:
    """Write btcd's chain to ``home``: blocks new since the last save are appended (what the
    node reorganised away is cut first), and the mempool is rewritten. Returns the height
    saved. Called at `make down`, after `make up`'s first blocks, and by the traffic
    generator after each block it mines, so a kill -9 loses at most what came since."""
    path = home / BTCD_CHAIN_FILE
    saved, appendable = _saved_lines(path)
    tip = int(rpc("getblockcount"))
    keep = min(len(saved), tip)
    while keep and block_hash(_decoded(saved[keep - 1])) != rpc("getblockhash", keep):
        keep -= 1
    new = [str(rpc("getblock", rpc("getblockhash", h), 0)) for h in range(keep + 1, tip + 1)]
    if keep == len(saved) and appendable:
        _write_lines(path, new, append=True)
    else:
        _write_lines(path, saved[:keep] + new)
    txs = [str(rpc("getrawtransaction", txid)) for txid in rpc("getrawmempool")]
    _write_lines(home / BTCD_MEMPOOL_FILE, txs)
    return tip


def restore_btcd_chain(rpc: Rpc, home: Path) -> tuple[int, int]:
    """Submit the saved chain to a btcd that starts from its genesis block, then the saved
    mempool; returns (blocks, transactions) accepted. A block that does not follow the one
    before it, or that btcd refuses, fails the start with the file and height named: the
    chain under the watcher's checkpoints cannot be rebuilt, and a new one would be a fork."""
    path = home / BTCD_CHAIN_FILE
    blocks, _ = _saved_lines(path)
    if not blocks or int(rpc("getblockcount")) != 0:
        return 0, 0
    prev = str(rpc("getblockhash", 0))
    for height, hexed in enumerate(blocks, 1):
        raw = _decoded(hexed)
        if len(raw) < 80 or _prev_hash(raw) != prev:
            raise DevStackError(f"{path}, line {height}: not the block after {prev}; the saved "
                                "chain cannot be rebuilt")
        refused = rpc("submitblock", hexed)
        if refused is not None:
            raise DevStackError(f"{path}, line {height}: btcd refused the block: {refused}")
        prev = block_hash(raw)
    # In any order: a child sent before its parent is refused, and sent again next round.
    pending, _ = _saved_lines(home / BTCD_MEMPOOL_FILE)
    accepted = 0
    while pending:
        left = []
        for tx in pending:
            try:
                rpc("sendrawtransaction", tx)
                accepted += 1
            except DevStackError:
                left.append(tx)
        if len(left) == len(pending):
            _say(f"btcd: {len(left)} saved mempool transaction(s) not accepted again, dropped")
            break
        pending = left
    return len(blocks), accepted


def btc_miner() -> dict[str, str]:
    data: dict[str, str] = json.loads(BTC_MINER_FILE.read_text())
    return data


def start_btcd(state_dir: Path, rpc_port: int = DEFAULT_PORTS["btcd"],
               p2p_port: int | None = None, *, initial_blocks: int = BTC_INITIAL_BLOCKS,
               timeout: float = 60.0, die_with_parent: bool = False,
               extra_args: Sequence[str] = (), persist: bool = False) -> BtcdInfo:
    """btcd --regtest; P2P on 127.0.0.1:p2p_port, or --nolisten when p2p_port is None.
    ``extra_args`` go last (policy flags of a test: --minrelaytxfee, --blockprioritysize).
    ``persist``: the chain outlives a restart (:func:`save_btcd_chain`); else every start
    begins at the genesis block, as btcd's regtest does."""
    state_dir = Path(state_dir)
    binary = install_btcd()
    home = state_dir / "btcd"
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "btcd.conf"
    if not conf.exists():
        conf.write_text("; generated by devstack.py: all settings are on the command line\n")
    address = btc_miner()["address"]
    info = BtcdInfo(f"http://127.0.0.1:{rpc_port}", rpc_port, p2p_port, BTCD_RPC_USER,
                    BTCD_RPC_PASSWORD, address, 0, log_path(state_dir, "btcd"))

    existing = read_proc(state_dir, "btcd")
    if existing is not None and existing.alive():
        info.rpc("getblockcount", timeout=5)
        return BtcdInfo(**{**info.__dict__, "pid": existing.pid})
    _require_free("btcd", rpc_port, *([p2p_port] if p2p_port else []))

    argv = [str(binary), "--regtest", "--txindex", "--notls",
            f"--configfile={conf}", f"--datadir={home / 'data'}", f"--logdir={home / 'logs'}",
            f"--rpclisten=127.0.0.1:{rpc_port}", f"--rpcuser={BTCD_RPC_USER}",
            f"--rpcpass={BTCD_RPC_PASSWORD}", "--rpcmaxclients=64", "--rpcmaxwebsockets=32",
            f"--miningaddr={address}", "--nodnsseed", "--debuglevel=info"]
    argv += [f"--listen=127.0.0.1:{p2p_port}"] if p2p_port else ["--nolisten"]
    argv += list(extra_args)
    proc = spawn("btcd", argv, state_dir, die_with_parent=die_with_parent)
    info = BtcdInfo(**{**info.__dict__, "pid": proc.pid})
    what = f"btcd regtest on 127.0.0.1:{rpc_port}"
    wait_ready(proc, lambda: isinstance(info.rpc("getblockcount", timeout=2), int), timeout, what)
    step = "restoring the saved chain"
    try:
        if persist:
            blocks, txs = restore_btcd_chain(info.rpc, home)
            if blocks:
                _say(f"btcd: restored {blocks} saved blocks and {txs} mempool transaction(s)")
        height = int(info.rpc("getblockcount"))
        if height < initial_blocks:
            step = f"mining {initial_blocks - height} initial blocks"
            info.rpc("generate", initial_blocks - height, timeout=300)
        if persist:
            step = "saving the chain"
            save_btcd_chain(info.rpc, home)
    except (DevStackError, OSError) as exc:
        with contextlib.suppress(DevStackError):
            stop_proc(proc, 10)
        raise _failure(what, f"{step}: {exc}", [proc.log]) from exc
    return info


def btcd_rpc(url: str, timeout: float = 30.0) -> Rpc:
    """``rpc(method, *params)`` of the btcd at ``url``, with devstack's credentials."""
    return lambda method, *params: json_rpc(url, method, params,
                                            auth=(BTCD_RPC_USER, BTCD_RPC_PASSWORD),
                                            timeout=timeout)


def _started_btcd_rpc(state_dir: Path, timeout: float = 30.0) -> Rpc:
    """The RPC of the btcd started in ``state_dir``, its port read from its recorded argv."""
    argv = " ".join(json.loads(_meta_path(state_dir, "btcd").read_text())["argv"])
    port = int(re.search(r"--rpclisten=127\.0\.0\.1:(\d+)", argv).group(1))  # type: ignore[union-attr]
    return btcd_rpc(f"http://127.0.0.1:{port}", timeout)


def save_persisted_btcd(state_dir: Path) -> None:
    """Before a stop: save the chain of a running btcd that was started with ``persist``."""
    home = Path(state_dir) / "btcd"
    proc = read_proc(state_dir, "btcd")
    if proc is None or not proc.alive() or not (home / BTCD_CHAIN_FILE).exists():
        return
    try:
        height = save_btcd_chain(_started_btcd_rpc(state_dir), home)
    except (DevStackError, OSError) as exc:
        _say(f"btcd: saving its chain FAILED ({exc}); the saved one is kept")
        return
    _say(f"btcd: chain saved to height {height} ({home / BTCD_CHAIN_FILE})")


# ------------------------------------------------------------------------------ anvil


@dataclass(frozen=True)
class AnvilInfo:
    name: str
    url: str
    ws_url: str
    port: int
    chain_id: int
    pid: int
    log: Path

    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        return json_rpc(self.url, method, params, timeout=timeout)


def anvil_state_args(state_dir: Path) -> tuple[str, ...]:
    """anvil's chain kept in ``<state>/anvil/state.json``, dumped every 2 s and at exit.

    Not its historical states (--preserve-historical-states): they made the file grow as
    blocks times accounts (3.6 MB after 140 blocks, rewritten every 2 s). Without them
    anvil cannot trace a block it loaded ("Resource not found"), and the watcher, which
    traces every block, sets it aside at its checkpoint; so `make down` lets the watcher
    commit anvil's head before stopping it (:func:`settle_watcher`), and a restart traces
    only blocks mined live."""
    home = Path(state_dir) / "anvil"
    home.mkdir(parents=True, exist_ok=True)
    return ("--state", str(home / "state.json"), "--state-interval", "2")


def start_anvil(state_dir: Path, port: int = DEFAULT_PORTS["anvil"], *, name: str = "anvil",
                chain_id: int = ANVIL_CHAIN_ID, block_time: float | None = None,
                extra_args: Sequence[str] = (), timeout: float = 30.0,
                die_with_parent: bool = False) -> AnvilInfo:
    """anvil with the default mnemonic accounts; automine unless block_time is given."""
    state_dir = Path(state_dir)
    binary = install_node_tools()
    info = AnvilInfo(name, f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", port, chain_id,
                     0, log_path(state_dir, name))
    existing = read_proc(state_dir, name)
    if existing is not None and existing.alive():
        if int(info.rpc("eth_chainId", timeout=5), 16) == chain_id:
            return AnvilInfo(**{**info.__dict__, "pid": existing.pid})
        raise DevStackError(f"{name} already running in {state_dir} with another chain id")
    _require_free(name, port)
    argv = [str(binary), "--chain-id", str(chain_id), "--host", "127.0.0.1", "--port", str(port)]
    if block_time is not None:
        argv += ["--block-time", str(block_time)]
    argv += list(extra_args)
    proc = spawn(name, argv, state_dir, die_with_parent=die_with_parent)
    info = AnvilInfo(**{**info.__dict__, "pid": proc.pid})
    wait_ready(proc, lambda: int(info.rpc("eth_chainId", timeout=2), 16) == chain_id, timeout,
               f"{name} (anvil) on 127.0.0.1:{port}")
    return info


# ------------------------------------------------------------------------- Prometheus


@dataclass(frozen=True)
class PrometheusInfo:
    url: str
    port: int
    config: Path
    targets_dir: Path
    pid: int
    log: Path

    def set_targets(self, job: str, targets: Sequence[str],
                    labels: dict[str, str] | None = None) -> Path:
        """Scrape `targets` (host:port) as job `job` (file_sd; picked up within seconds)."""
        return write_file_sd(self.targets_dir, job, targets, labels)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body = http_get(url)
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise DevStackError(f"prometheus query {expr!r}: HTTP {status} {body[:300]!r}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result


def write_file_sd(targets_dir: Path, job: str, targets: Sequence[str],
                  labels: dict[str, str] | None = None) -> Path:
    targets_dir.mkdir(parents=True, exist_ok=True)
    path = targets_dir / f"{job}.json"
    tmp = targets_dir / f".{job}.json.tmp"
    tmp.write_text(json.dumps([{"targets": list(targets), "labels": {"job": job, **(labels or {})}}]))
    tmp.replace(path)
    return path


def _prometheus_config(targets: Sequence[str], scrape_interval: str, targets_dir: Path) -> str:
    static = json.dumps(list(targets))
    return f"""# generated by deploy/local/devstack.py
global:
  scrape_interval: {scrape_interval}
  scrape_timeout: {scrape_interval}
  evaluation_interval: {scrape_interval}
scrape_configs:
  - job_name: watcher
    metrics_path: /metrics
    static_configs:
      - targets: {static}
  - job_name: file_sd
    file_sd_configs:
      - files: ['{targets_dir}/*.json']
        refresh_interval: 2s
"""


def start_prometheus(state_dir: Path, port: int = DEFAULT_PORTS["prometheus"], *,
                     targets: Sequence[str] = (DEFAULT_WATCHER_TARGET,),
                     scrape_interval: str = "5s", timeout: float = 60.0,
                     die_with_parent: bool = False) -> PrometheusInfo:
    state_dir = Path(state_dir)
    binary = install_prometheus()
    home = state_dir / "prometheus"
    targets_dir = home / "targets"
    targets_dir.mkdir(parents=True, exist_ok=True)
    config = home / "prometheus.yml"
    info = PrometheusInfo(f"http://127.0.0.1:{port}", port, config, targets_dir, 0,
                          log_path(state_dir, "prometheus"))
    existing = read_proc(state_dir, "prometheus")
    if existing is not None and existing.alive():
        if http_get(f"{info.url}/-/ready")[0] == 200:
            return PrometheusInfo(**{**info.__dict__, "pid": existing.pid})
        raise DevStackError(f"prometheus pid {existing.pid} is running but not ready")
    _require_free("prometheus", port)
    config.write_text(_prometheus_config(targets, scrape_interval, targets_dir))
    argv = [str(binary), f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=3d", "--log.level=info"]
    proc = spawn("prometheus", argv, state_dir, cwd=home, die_with_parent=die_with_parent)
    info = PrometheusInfo(**{**info.__dict__, "pid": proc.pid})
    wait_ready(proc, lambda: http_get(f"{info.url}/-/ready", timeout=2)[0] == 200, timeout,
               f"prometheus on 127.0.0.1:{port}")
    return info


# --------------------------------------------------------------------------- the stack


def up(state_dir: Path = DEFAULT_STATE_DIR, *, ports: dict[str, int] | None = None,
       watcher_target: str = DEFAULT_WATCHER_TARGET, install: bool = True) -> dict[str, Any]:
    """Install what is missing and start the four services in parallel."""
    ports = {**DEFAULT_PORTS, **(ports or {})}
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if install:
        install_all()
    starters: dict[str, Callable[[], Any]] = {
        "kafka": lambda: start_kafka(state_dir, ports["kafka"], ports["kafka_controller"]),
        "btcd": lambda: start_btcd(state_dir, ports["btcd"], ports.get("btcd_p2p"),
                                   persist=True),
        # The chain must outlive a restart like Kafka's data does: the watcher's checkpoint
        # in Kafka names anvil's blocks, and a fresh chain under it looks like a node that
        # fell behind (or a reorg below the window). Dumped every 2 s, so kill -9 loses little.
        "anvil": lambda: start_anvil(state_dir, ports["anvil"], extra_args=anvil_state_args(state_dir)),
        "prometheus": lambda: start_prometheus(state_dir, ports["prometheus"],
                                               targets=[watcher_target]),
    }
    with ThreadPoolExecutor(max_workers=len(starters)) as pool:
        futures = {name: pool.submit(fn) for name, fn in starters.items()}
    results: dict[str, Any] = {}
    errors = []
    for name, fut in futures.items():
        exc = fut.exception()
        if exc is None:
            results[name] = fut.result()
        else:
            errors.append(str(exc) if isinstance(exc, DevStackError) else f"{name}: {exc!r}")
    if errors:
        left = stop_all(state_dir)
        raise DevStackError("\n\n".join(errors) + (f"\n(still alive: {left})" if left else ""))
    return results


def status(state_dir: Path = DEFAULT_STATE_DIR) -> dict[str, str]:
    """name -> 'up' / 'running, not answering' / 'dead (stale pid file)' / 'not started'."""
    out: dict[str, str] = {}
    names = sorted(set(STACK_SERVICES) | set(started_names(state_dir)))
    for name in names:
        proc = read_proc(state_dir, name)
        if proc is None:
            out[name] = "not started"
            continue
        if not proc.alive():
            out[name] = f"dead (stale pid file, pid {proc.pid}; log {proc.log})"
            continue
        if not _meta_path(state_dir, name).exists():  # a pid file devstack did not write
            out[name] = f"running (pid {proc.pid}; not managed by devstack)"
            continue
        out[name] = f"up (pid {proc.pid})" if _answers(state_dir, name) else \
            f"running but NOT answering (pid {proc.pid}; log {proc.log})"
    return out


def _answers(state_dir: Path, name: str) -> bool:
    try:
        meta = json.loads(_meta_path(state_dir, name).read_text())
        argv = " ".join(meta["argv"])
        if name == "kafka":
            stamp = json.loads((Path(state_dir) / "kafka" / "formatted.json").read_text())
            return kafka_broker_count("127.0.0.1", int(stamp["port"])) >= 1
        if name == "btcd":
            return isinstance(_started_btcd_rpc(state_dir, 2)("getblockcount"), int)
        if name.startswith("anvil"):
            port = int(re.search(r"--port (\d+)", argv).group(1))  # type: ignore[union-attr]
            return bool(json_rpc(f"http://127.0.0.1:{port}", "eth_chainId", timeout=2))
        if name == "prometheus":
            port = int(re.search(r"--web\.listen-address=127\.0\.0\.1:(\d+)", argv).group(1))  # type: ignore[union-attr]
            return http_get(f"http://127.0.0.1:{port}/-/ready", timeout=2)[0] == 200
    except Exception:
        return False
    return True


def _summary(results: dict[str, Any]) -> str:
    lines = []
    if "kafka" in results:
        k = results["kafka"]
        lines.append(f"  kafka {k.version:<8} bootstrap {k.bootstrap_servers}  (log {k.server_log})")
    if "btcd" in results:
        b = results["btcd"]
        lines.append(f"  btcd regtest    {b.rpc_url}  user {b.rpc_user}/{b.rpc_password}  "
                     f"mining to {b.mining_address}")
    if "anvil" in results:
        a = results["anvil"]
        lines.append(f"  anvil           {a.url}  chain id {a.chain_id}")
    if "prometheus" in results:
        p = results["prometheus"]
        lines.append(f"  prometheus      {p.url}  config {p.config}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["install", "up", "down", "status", "settle"])
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"where data, pid files and logs go (default {DEFAULT_STATE_DIR})")
    parser.add_argument("--watcher-target", default=DEFAULT_WATCHER_TARGET,
                        help="host:port Prometheus scrapes as job 'watcher'")
    parser.add_argument("--no-install", action="store_true", help="up: do not install anything")
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir.resolve()
    started = time.monotonic()
    try:
        if args.command == "install":
            install_all()
            _say(f"installed (cache {dev_home()}) in {time.monotonic() - started:.1f}s")
        elif args.command == "up":
            results = up(state_dir, watcher_target=args.watcher_target,
                         install=not args.no_install)
            _say(f"stack up in {time.monotonic() - started:.1f}s (state {state_dir}, logs "
                 f"{run_dir(state_dir)}):\n{_summary(results)}")
        elif args.command == "settle":
            if not settle_watcher():
                _say("the watcher did not commit anvil's head within 10 s; a restart may "
                     "meet blocks anvil cannot trace")
                return 1
        elif args.command == "down":
            save_persisted_btcd(state_dir)
            left = stop_all(state_dir)
            if left:
                _say(f"NOT stopped: {left} (pid files in {run_dir(state_dir)})")
                return 1
            _say(f"stack down ({time.monotonic() - started:.1f}s); no process left")
        else:
            rows = status(state_dir)
            for name, state in rows.items():
                print(f"{name:<12} {state}")
            return 0 if all(rows.get(n, "").startswith("up") for n in STACK_SERVICES) else 1
    except DevStackError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
