"""Prepares bitcoinlib's data directory at image build time, so the watcher runs on a
read-only root filesystem.

On its first import bitcoinlib creates ``$BCL_DATA_DIR/database``, writes
``install.log`` and copies its ``config.ini`` and network files there; on every
import it opens a log file there unless ``config.ini`` disables it. Done once here,
then logging to that file is switched off (the watcher logs to stderr): later imports
only read the directory. Used by the Dockerfile and by the read-only image test.

    BCL_DATA_DIR=/opt/bitcoinlib python deploy/docker/init_bitcoinlib.py
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

DISABLED = "enable_bitcoinlib_logging=False"


def main() -> int:
    data_dir = os.environ.get("BCL_DATA_DIR")
    if not data_dir:
        print("init_bitcoinlib: set BCL_DATA_DIR", file=sys.stderr)
        return 2
    importlib.import_module("bitcoinlib.keys")  # first import: initialises the directory
    config = Path(data_dir) / "config.ini"
    text = config.read_text(encoding="utf-8")
    if DISABLED not in text:
        marker = ";enable_bitcoinlib_logging=True"
        if marker not in text:
            print(f"init_bitcoinlib: {config} has no {marker!r} line to replace", file=sys.stderr)
            return 1
        config.write_text(text.replace(marker, DISABLED), encoding="utf-8")
    (Path(data_dir) / "bitcoinlib.log").unlink(missing_ok=True)
    print(f"init_bitcoinlib: {data_dir} ready (file logging off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
