"""``watcher``: run the daemon, check a configuration, or tail the committed events.

Every failure is one line on stderr, ``watcher: <what went wrong>``, with secrets
masked, and a documented exit code (the README's table); never a traceback:

====  =====================================================================
code  meaning
====  =====================================================================
0     done (``run``: stopped by SIGTERM/SIGINT after draining)
1     a runtime failure: Kafka or every node unreachable, fenced, topic missing
2     bad usage or bad configuration (the line names the key)
3     ``run``: a chain's loop ended by itself (see the log)
4     an internal error (a bug): the line names the exception; details in the log
====  =====================================================================

The operator commands (``status``, ``rescan``, ``audit``, ``halt``) have their own table in
:mod:`watcher.ops.common` (there 1 is "findings" or "refused" and 3 "unreachable").
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import NoReturn

from watcher import config as config_mod
from watcher.errors import ConfigError, WatcherError
from watcher.logs import configure
from watcher.redact import Redactor, masked_config, secret_values

# What ``watcher run`` imports is on the daemon's start-up critical path: the operator
# commands (``watcher.ops``: their HTTP client, the rescan and audit machinery) are
# imported only when one of them, or the full ``--help``, is asked for.
CORE_COMMANDS = frozenset({"run", "check-config", "tail"})

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_LOOP_ENDED = 3
EXIT_INTERNAL = 4


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit 2) like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"watcher: {message} (see: {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _parser(with_ops: bool = True) -> argparse.ArgumentParser:
    """The argument parser; ``with_ops=False`` leaves out the operator subcommands (for a
    command line that names one of :data:`CORE_COMMANDS`, which parses the same)."""
    parser = _Parser(prog="watcher", description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="follow the configured chains and publish events")
    run.add_argument("--config", "-c", required=True)
    check = sub.add_parser("check-config", help="validate a configuration (connects nowhere) and "
                                                "print the effective configuration, secrets masked")
    check.add_argument("--config", "-c", required=True)
    tail = sub.add_parser("tail", help="print committed deposit and withdrawal events as they arrive")
    tail.add_argument("--config", "-c", required=True)
    tail.add_argument("--chain", action="append", default=[], help="only this chain (repeatable)")
    tail.add_argument("--type", action="append", default=[], dest="types",
                      help="only this type (deposit.confirmed) or family (deposit, withdrawal); repeatable")
    tail.add_argument("--address", help="only events to this address (any letter case)")
    tail.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest retained event instead of new ones only")
    tail.add_argument("--json", action="store_true", help="print each record's raw JSON value")
    tail.add_argument("--limit", type=_positive, default=None, metavar="N", help="stop after N events")
    if not with_ops:
        return parser
    from watcher.ops import register

    register(sub)  # status, rescan, audit, halt: their exit codes in watcher.ops.common
    return parser


def _fail(code: int, message: str, redactor: Redactor) -> int:
    print(f"watcher: {redactor.scrub(message)}", file=sys.stderr)
    return code


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand a command line names: its first word not an option (``watcher``
    itself takes no option with a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = _parser(with_ops=_command_of(words) not in CORE_COMMANDS).parse_args(words)
    if getattr(args, "ops_main", None) is not None:
        from watcher.ops.common import quiet_libraries

        configure("warning", json=False)
        quiet_libraries()
        return int(args.ops_main(args))
    redactor = Redactor()
    try:
        cfg = config_mod.load(args.config)
        redactor = Redactor.of(secret_values(cfg))
        if args.command == "check-config":
            return _check_config(cfg)
        if args.command == "tail":
            return _tail(cfg, args)
        configure(cfg.log_level, cfg.log_json, secret_values(cfg))
        from watcher.app import serve

        return asyncio.run(serve(cfg))
    except ConfigError as exc:
        return _fail(EXIT_CONFIG, str(exc), redactor)
    except WatcherError as exc:
        return _fail(EXIT_RUNTIME, str(exc), redactor)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # the one place a bug becomes an exit code instead of a traceback
        if args.command == "run":  # logging is configured (JSON, redacted): keep the details there
            import structlog

            structlog.get_logger("watcher.cli").error("internal error", exc_info=True)
        return _fail(EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}", redactor)


def _check_config(cfg: config_mod.WatcherConfig) -> int:
    import yaml

    sys.stdout.write(yaml.safe_dump(masked_config(cfg), sort_keys=False, default_flow_style=False,
                                    width=120))
    for cid, c in cfg.chains.items():
        tokens = ", ".join(t.symbol for t in c.tokens) or "none"
        print(f"{cid}: family={c.family.value} endpoints={[e.name for e in c.endpoints]} "
              f"window={c.reorg_window} finality={c.finality_mode.value} "
              f"native={c.native_symbol} tokens={tokens}")
    print("configuration ok")
    return EXIT_OK


def _tail(cfg: config_mod.WatcherConfig, args: argparse.Namespace) -> int:
    from watcher.tail import Filter, TailOptions, tail

    opts = TailOptions(
        filter=Filter(chains=frozenset(args.chain), types=frozenset(args.types), address=args.address),
        json=args.json, from_beginning=args.from_beginning, limit=args.limit)
    # Library warnings (aiokafka reconnects) go to stderr as readable lines, not over the events.
    configure("warning", json=False, secrets=secret_values(cfg))
    topics = f"{cfg.kafka.topics.deposits}, {cfg.kafka.topics.withdrawals}"
    where = "from the beginning" if opts.from_beginning else "from now on"

    def ready() -> None:
        print(f"watcher tail: committed events of {topics} {where} (Ctrl-C stops)", file=sys.stderr,
              flush=True)

    return asyncio.run(tail(cfg.kafka, opts, on_ready=ready))


if __name__ == "__main__":
    sys.exit(main())
