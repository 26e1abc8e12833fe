"""``watcher``: run the daemon, or check a configuration without connecting anywhere."""

from __future__ import annotations

import argparse
import asyncio
import sys

from watcher import config as config_mod
from watcher.errors import ConfigError, WatcherError
from watcher.logs import configure
from watcher.ops.common import quiet_libraries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="watcher", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="follow the configured chains and publish events")
    run.add_argument("--config", "-c", required=True)
    check = sub.add_parser("check-config", help="validate a configuration and print a summary")
    check.add_argument("--config", "-c", required=True)
    from watcher.ops import register

    register(sub)  # status, rescan, audit, halt: exit codes in watcher.ops.common
    args = parser.parse_args(argv)
    if getattr(args, "ops_main", None) is not None:
        configure("warning", json=False)
        quiet_libraries()
        return int(args.ops_main(args))

    try:
        cfg = config_mod.load(args.config)
    except ConfigError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for cid, c in cfg.chains.items():
            tokens = ", ".join(t.symbol for t in c.tokens) or "none"
            print(f"{cid}: family={c.family.value} endpoints={[e.name for e in c.endpoints]} "
                  f"window={c.reorg_window} finality={c.finality_mode.value} "
                  f"native={c.native_symbol} tokens={tokens}")
        print("configuration ok")
        return 0
    configure(cfg.log_level, cfg.log_json)
    from watcher.app import serve

    try:
        return asyncio.run(serve(cfg))
    except ConfigError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return 2
    except WatcherError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
