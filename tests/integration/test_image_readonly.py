"""The image's contents run with a read-only root filesystem, as a non-root user.

There is no Docker engine here, so the test builds what the Dockerfile builds (the
project's wheel, installed into its own prefix; bitcoinlib's data directory prepared by
deploy/docker/init_bitcoinlib.py) and runs the ``watcher`` entry point inside bubblewrap:
``/`` bound read-only, only ``/tmp`` writable, the source tree and the dev venv hidden,
uid 10001, no network. Dependencies come from the dev venv's site-packages (the same pins
the image installs), bound read-only. The wheel is built from the sources (a C compiler
compiles the Bitcoin block walk, as in the Dockerfile's build stage), never from a .so
left in the work tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def bwrap() -> str:
    found = shutil.which("bwrap")
    if found is None:
        pytest.fail("bwrap not found: `make test` installs it (apt-get install -y bubblewrap)")
    probe = subprocess.run([found, "--ro-bind", "/", "/", "--unshare-all", "--uid", "10001", "true"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"bubblewrap cannot create namespaces here: {probe.stderr.strip()}")
    return found


def build_prefix(tmp: Path) -> tuple[Path, Path]:
    """(installed wheel prefix, prepared bitcoinlib data directory)."""
    dist, prefix, bcl, src = tmp / "dist", tmp / "watcher", tmp / "bitcoinlib", tmp / "src"
    # What the Dockerfile copies into its build stage, and nothing else (setuptools also
    # writes its build/ folder there rather than into the work tree).
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("watcher", "chains"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("chain_watcher-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(prefix),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    subprocess.run([sys.executable, str(ROOT / "deploy" / "docker" / "init_bitcoinlib.py")],
                   env={**os.environ, "BCL_DATA_DIR": str(bcl)}, check=True, capture_output=True,
                   timeout=120)
    return prefix, bcl


def sandboxed(binary: str, prefix: Path, bcl: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    python = Path(os.path.realpath(sys.executable))
    python_home = Path(sys.base_prefix)
    deps = Path(sysconfig.get_paths()["purelib"])
    # Hide the source tree (wherever the checkout lives: CI clones it elsewhere than /work),
    # the dev venv and root's home; re-add only what the image has. The working directory
    # is /tmp, because `python -c` puts the working directory first on sys.path.
    hidden = ["/work", "/root", "/opt"]
    for extra in (ROOT, Path(sys.prefix)):
        if not any(extra.is_relative_to(h) for h in hidden):
            hidden.append(str(extra))
    cmd = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--tmpfs", "/tmp",
           *[arg for h in hidden for arg in ("--tmpfs", h)],
           "--ro-bind", str(python_home), str(python_home),
           "--ro-bind", str(prefix), "/opt/watcher",
           "--ro-bind", str(deps), "/opt/deps",
           "--ro-bind", str(bcl), "/opt/bitcoinlib",
           "--ro-bind", str(ROOT / "config" / "example.yaml"), "/opt/etc/config.yaml",
           *[arg for h in hidden for arg in ("--remount-ro", h)],
           "--chdir", "/tmp",
           "--unshare-all", "--die-with-parent", "--uid", "10001", "--gid", "10001",
           "--clearenv", "--setenv", "PATH", "/opt/watcher/bin:/usr/bin:/bin",
           "--setenv", "PYTHONPATH", "/opt/watcher:/opt/deps", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
           "--setenv", "BCL_DATA_DIR", "/opt/bitcoinlib", "--setenv", "HOME", "/tmp",
           # The example's btc chain reads its RPC credentials from the environment, as the
           # chart's Secret references provide them.
           "--setenv", "BTC_RPC_USER", "watcher-example",
           "--setenv", "BTC_RPC_PASSWORD", "example-password",
           str(python), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_entry_point_checks_the_example_config_on_a_read_only_root(tmp_path: Path) -> None:
    binary = bwrap()
    prefix, bcl = build_prefix(tmp_path)

    # The console script pip generated, as ENTRYPOINT ["watcher"] runs it.
    check = sandboxed(binary, prefix, bcl, "/opt/watcher/bin/watcher", "check-config",
                      "-c", "/opt/etc/config.yaml")
    assert check.returncode == 0, check.stderr
    assert check.stdout.rstrip().endswith("configuration ok")
    assert "Traceback" not in check.stderr

    # The code that `run` imports (bitcoinlib included) loads from the wheel, writing nothing.
    imports = sandboxed(binary, prefix, bcl, "-c",
                        "import bitcoinlib.keys, watcher, watcher.app, chains.evm.adapter, os; "
                        "print(watcher.__file__, os.getuid())")
    assert imports.returncode == 0, imports.stderr
    assert imports.stdout.split() == ["/opt/watcher/watcher/__init__.py", "10001"]

    # The wheel carries the compiled Bitcoin block walk and probe (the Dockerfile requires them).
    walk = sandboxed(binary, prefix, bcl, "-c",
                     "from chains.bitcoin import walker, _blockwalk; from watcher.core import _probe; "
                     "print(walker.IMPLEMENTATION, _blockwalk.__file__, _probe.__file__)")
    assert walk.returncode == 0, walk.stderr
    kind, walk_so, probe_so = walk.stdout.split()
    assert kind == "compiled"
    assert walk_so.startswith("/opt/watcher/chains/bitcoin/_blockwalk.") and walk_so.endswith(".so")
    assert probe_so.startswith("/opt/watcher/watcher/core/_probe.") and probe_so.endswith(".so")

    # And the root really is read-only: only /tmp takes writes.
    probe = sandboxed(binary, prefix, bcl, "-c",
                      "import pathlib\n"
                      "for p in ('/probe', '/opt/watcher/probe', '/opt/bitcoinlib/probe', '/tmp/probe'):\n"
                      "    try:\n        pathlib.Path(p).write_text('x'); print(p, 'writable')\n"
                      "    except OSError:\n        print(p, 'read-only')\n")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.splitlines() == ["/probe read-only", "/opt/watcher/probe read-only",
                                         "/opt/bitcoinlib/probe read-only", "/tmp/probe writable"]
