"""What the operator commands share: exit codes, one-line errors, the watched addresses,
scanning a block range through the :class:`~watcher.ports.ChainSource` port, progress.

Exit codes of every operator command (``status``, ``rescan``, ``audit``, ``halt``):

* ``0``: done (``audit``: the range is clean);
* ``1``: ``audit`` found something, or the command refused or failed on what it read
  (an unreadable checkpoint, a chain that changed under the scan, a resume of a chain
  the daemon does not report halted);
* ``2``: usage or configuration error (bad arguments, a range above the head);
* ``3``: a node, Kafka or the daemon could not be reached or used; try again later.

Each error is one line on stderr starting with ``watcher <command>:``, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import orjson

from watcher.config import ChainConfig, WatcherConfig
from watcher.config import load as load_config
from watcher.core.addresses import AddressIndex
from watcher.core.chainstate import SnapshotError
from watcher.core.window import BrokenBranch
from watcher.errors import (
    ChainError,
    ChainIdentityMismatch,
    ConfigError,
    ErrorKind,
    SinkError,
    WatcherError,
)
from watcher.ports import AddressCodec, ChainSource
from watcher.runtime.httpclient import HttpClient, HttpError
from watcher.types import AddressKey, BlockContents, BlockRef, ChainId, Transfer

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class UsageError(WatcherError):
    """Arguments that cannot work (exit 2)."""


class Refused(WatcherError):
    """The command will not do what was asked, and says why (exit 1)."""


class Unavailable(WatcherError):
    """The daemon's HTTP endpoint cannot be used (exit 3)."""


def run_command(name: str, body: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Runs a command's coroutine; every error becomes one line on stderr and an exit code."""
    try:
        return asyncio.run(body())
    except KeyboardInterrupt:
        print(f"watcher {name}: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, UsageError) as exc:
        return fail(name, str(exc), EXIT_USAGE)
    except (ChainError, SinkError, Unavailable) as exc:
        return fail(name, str(exc), EXIT_UNAVAILABLE)
    except (Refused, ChainIdentityMismatch, SnapshotError, BrokenBranch) as exc:
        return fail(name, str(exc), EXIT_FINDINGS)
    except WatcherError as exc:
        return fail(name, str(exc), EXIT_FINDINGS)
    except Exception as exc:  # the last line of defence: a line, not a traceback
        return fail(name, f"unexpected {type(exc).__name__}: {exc}", EXIT_FINDINGS)


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Usage errors as one line (``watcher audit: the following arguments are required:
    --chain``) and exit 2, instead of argparse's usage block."""
    def error(message: str) -> NoReturn:
        parser.exit(EXIT_USAGE, f"{parser.prog}: {message} (see --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def range_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand over a block range of one chain: ``-c FILE --chain C --from N --to M``."""
    p = one_line_errors(sub.add_parser(name, help=help_text))
    p.add_argument("--config", "-c", required=True)
    p.add_argument("--chain", required=True)
    p.add_argument("--from", dest="start", type=int, required=True, metavar="N")
    p.add_argument("--to", dest="end", type=int, required=True, metavar="M")
    return p


def quiet_libraries() -> None:
    """A command's outcome is its one line: Kafka clients' reconnect chatter and the
    registration follower's retries would bury it (the daemon keeps them in its log)."""
    for name in ("aiokafka", "watcher.kafka", "chains"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def fail(name: str, message: str, code: int) -> int:
    print(f"watcher {name}: {message}", file=sys.stderr)
    return code


def load(path: str) -> WatcherConfig:
    return load_config(path)


def chain_config(cfg: WatcherConfig, chain: str) -> ChainConfig:
    ccfg = cfg.chains.get(ChainId(chain))
    if ccfg is None:
        raise UsageError(f"--chain {chain}: not configured (configured: {', '.join(cfg.chains)})")
    return ccfg


def check_range(start: int, end: int) -> None:
    if start < 0:
        raise UsageError(f"--from {start}: must be >= 0")
    if end < start:
        raise UsageError(f"--to {end}: must be >= --from {start}")


# ---------------------------------------------------------------- the daemon


async def fetch_status(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The running daemon's ``/status`` document; :class:`Unavailable` when it cannot be had."""
    target = url.rstrip("/") + "/status"
    try:
        client = HttpClient(target, connections=1)
    except ValueError as exc:
        raise Unavailable(f"cannot reach the watcher at {url}: {exc}") from exc
    try:
        status, body = await client.get(timeout_s)
    except (HttpError, TimeoutError, OSError) as exc:
        raise Unavailable(f"cannot reach the watcher at {url}: {type(exc).__name__} {exc}") from exc
    finally:
        await client.close()
    if status == 404:
        raise Unavailable(f"{url} has no /status route (a watcher older than this CLI?)")
    if status != 200:
        raise Unavailable(f"{target} answered HTTP {status}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unavailable(f"{target} did not answer JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("chains"), dict):
        raise Unavailable(f"{target} answered JSON without a 'chains' object")
    return doc


def default_url(cfg: WatcherConfig | None) -> str:
    if cfg is None:
        return "http://127.0.0.1:9308"
    host = "127.0.0.1" if cfg.metrics_host in {"0.0.0.0", "::", ""} else cfg.metrics_host  # noqa: S104
    return f"http://{host}:{cfg.metrics_port}"


# ---------------------------------------------------------------- chain and addresses


@dataclass
class ChainAccess:
    cfg: ChainConfig
    source: ChainSource
    codec: AddressCodec
    index: AddressIndex

    def label_of(self, t: Transfer) -> str | None:
        try:
            _, key = self.codec.parse(t.to_address)
        except WatcherError:
            return None
        return self.index.label(AddressKey(key))

    def required_for(self, asset: str, amount: int) -> int:
        return self.cfg.rule_for(asset).required_for(amount)


class _NoDeadLetters:
    """The daemon dead-letters bad registrations; a command only reading them must not."""

    async def write(self, *, source: str, source_topic: str, partition: int, offset: int,
                    key: bytes | None, value: bytes | None, error: str) -> None:
        return None


async def _codec_of(ccfg: ChainConfig) -> AddressCodec:
    from watcher.app import build_family

    source, codec, _ = build_family(ccfg)
    await source.close()  # never started: only the family's codec is wanted
    return codec


@contextlib.asynccontextmanager
async def open_chain(cfg: WatcherConfig, chain: str, *, addresses: bool = True,
                     timeout_s: float = 60.0) -> AsyncIterator[ChainAccess]:
    """The chain's source (identity verified) and, with ``addresses``, the watched
    addresses as the daemon has them: the addresses file, then the registrations topic
    read to its end."""
    from watcher.addresses_file import read_addresses_file
    from watcher.app import build_family
    from watcher.kafka.client import ManualConsumer
    from watcher.kafka.registrations import RegistrationFollower

    ccfg = chain_config(cfg, chain)
    source, codec, width = build_family(ccfg)
    index = AddressIndex(width)
    try:
        if addresses:
            if cfg.addresses_file is not None:
                # The file lists every configured chain; each section is checked, this
                # chain's is loaded.
                codecs: dict[str, AddressCodec] = {
                    str(cid): (codec if cid == chain else await _codec_of(c))
                    for cid, c in cfg.chains.items()}
                for entry in read_addresses_file(cfg.addresses_file, codecs).get(chain, []):
                    index.add(entry.key, entry.label)
            # The registration follower retries for ever; fail at once when Kafka is not there.
            probe = ManualConsumer(cfg.kafka, cfg.kafka.topics.address_registrations, timeout_s=15)
            await probe.start()
            await probe.stop()
            follower = RegistrationFollower(cfg.kafka, {chain: codec}, {chain: index},
                                            _NoDeadLetters())
            await follower.start()
            try:
                async with asyncio.timeout(timeout_s):
                    await follower.caught_up.wait()
            except TimeoutError:
                raise SinkError(ErrorKind.RETRIABLE,
                                f"address registrations not read to the end within "
                                f"{timeout_s:.0f}s (is Kafka up?)") from None
            finally:
                await follower.stop()
        await source.verify_identity()
        yield ChainAccess(ccfg, source, codec, index)
    finally:
        with contextlib.suppress(Exception):
            await source.close()


async def canonical_headers(source: ChainSource, start: int, end: int, batch: int,
                            after: BlockRef | None = None) -> AsyncIterator[list[BlockRef]]:
    """The node's headers ``start..end`` in linked chunks of at most ``batch``.

    Raises :class:`Refused` when the node's answers do not link (it reorged during the
    scan) or stop short of ``end``.
    """
    prev = after
    n = start
    while n <= end:
        count = min(batch, end - n + 1)
        refs = await source.headers(n, count)
        if len(refs) != count:
            raise Refused(f"the node returned {len(refs)} headers from {n}, asked for {count}; "
                          "is the range above its head?")
        for ref in refs:
            if ref.number != n or (prev is not None and ref.parent_hash != prev.hash):
                raise Refused(f"block {ref.number} {ref.hash} does not follow "
                              f"{prev.hash if prev else '?'}: the chain reorganised during "
                              "the scan; run the command again")
            prev, n = ref, n + 1
        yield refs


async def scan(access: ChainAccess, start: int, end: int,
               progress: Progress | None = None) -> AsyncIterator[list[BlockContents]]:
    """The contents (transfers to watched addresses) of blocks ``start..end``, in chunks."""
    batch = max(1, access.cfg.batch_size)
    async for refs in canonical_headers(access.source, start, end, batch):
        contents = await access.source.contents(refs, access.index)
        if [c.ref for c in contents] != refs:
            raise Refused(f"the node's block contents for {refs[0].number}..{refs[-1].number} "
                          "do not match its headers; run the command again")
        if progress is not None:
            progress.advance(len(refs), sum(len(c.transfers) for c in contents))
        yield contents


class Progress:
    """``<what>: n/total blocks (p%), k deposits`` on stderr, at most once a second."""

    def __init__(self, what: str, total: int, stream: TextIO | None = None,
                 every_s: float = 1.0) -> None:
        self.what, self.total = what, total
        self.done = 0
        self.deposits = 0
        self._stream = stream if stream is not None else sys.stderr
        self._every = every_s
        self._last = time.monotonic()

    def advance(self, blocks: int, deposits: int) -> None:
        self.done += blocks
        self.deposits += deposits
        now = time.monotonic()
        if now - self._last >= self._every or self.done >= self.total:
            self._last = now
            self._print()

    def _print(self) -> None:
        pct = 100 * self.done // max(1, self.total)
        print(f"{self.what}: {self.done}/{self.total} blocks ({pct}%), {self.deposits} deposits",
              file=self._stream, flush=True)
