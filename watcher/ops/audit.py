"""``watcher audit --chain C --from N --to M``: the chain's deposits of a range against the topic's.

Recomputes the deposits of blocks ``N..M`` straight from the node (as
``watcher rescan`` does) and reads the deposits topic (or ``--topic``, e.g. a
copy) from its start to its end with ``read_committed``, keeping the events
of chain ``C`` whose ``block_number`` is in the range. Findings
(:func:`watcher.core.rederive.audit`): *missing* (the chain holds a deposit,
the topic has no live event of the type it calls for), *extra* (a live event
for a deposit the chain does not hold in that canonical block) and *different*
(a field differs). One line per finding on stdout, or one JSON document with
``--json``.

Confirmations are counted against the daemon's processed height (the tip of
its checkpoint) when it has one, since the topic can only hold what the daemon
processed; the range must end at or below it. Deposits becoming confirmed
while the audit reads (a live daemon) may show as missing their
``deposit.confirmed``: audit ranges below the processed height minus the
deepest confirmation rule for a stable answer, or run it again. Addresses are
the watched set as of now (an address registered later than its deposit
counts as watched).

Exit 0 when clean, 1 on any finding, 2 on usage or configuration errors, 3
when the node or Kafka cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Mapping
from typing import Any

import orjson

from watcher.config import KafkaConfig
from watcher.errors import ErrorKind, SinkError
from watcher.ops.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    Progress,
    UsageError,
    chain_config,
    check_range,
    load,
    open_chain,
    range_parser,
    run_command,
    scan,
)
from watcher.types import ChainId


def add_parser(sub: Any) -> None:
    p = range_parser(sub, "audit", "compare a range's deposits on the chain with the deposits topic")
    p.add_argument("--topic", help="audit this topic (e.g. a copy) instead of the deposits topic")
    p.add_argument("--json", action="store_true", help="one JSON document instead of lines")
    p.set_defaults(ops_main=main)


def main(args: argparse.Namespace) -> int:
    return run_command("audit", lambda: audit_command(args))


async def audit_command(args: argparse.Namespace) -> int:
    from watcher.core.chainstate import ChainState
    from watcher.core.rederive import audit, rederive
    from watcher.kafka.sink import read_chain_checkpoint

    cfg = load(args.config)
    ccfg = chain_config(cfg, args.chain)
    check_range(args.start, args.end)
    chain = ChainId(args.chain)
    topic = args.topic or cfg.kafka.topics.deposits
    async with open_chain(cfg, chain) as access:
        observed, skipped = await read_deposits(cfg.kafka, topic, chain, args.start, args.end)
        # After the topic: the checkpoint is at least as far as what was read.
        checkpoint = await read_chain_checkpoint(cfg.kafka, chain)
        head = await access.source.head()
        reference = head.number
        if checkpoint is not None:
            state = ChainState.restore(checkpoint, chain, ccfg.reorg_window, access.required_for)
            if state.tip is not None:
                reference = min(reference, state.tip.number)
        if args.end > reference:
            raise UsageError(f"--to {args.end}: above the processed height {reference} "
                             f"(node head {head.number}); the topic cannot hold those blocks yet")
        expected = []
        progress = Progress(f"audit {chain}", args.end - args.start + 1)
        async for contents in scan(access, args.start, args.end, progress):
            expected.extend(rederive(chain, contents, reference, access.required_for,
                                     access.label_of))
    findings = audit(expected, observed)
    if skipped:
        print(f"watcher audit: {skipped} records of {topic} are not deposit events (not JSON "
              "objects); ignored", file=sys.stderr)
    if args.json:
        print(orjson.dumps({"chain": chain, "from": args.start, "to": args.end, "topic": topic,
                            "reference_height": reference, "chain_deposits": len(expected),
                            "topic_events": len(observed), "clean": not findings,
                            "findings": [f.as_json() for f in findings]},
                           option=orjson.OPT_INDENT_2).decode())
    else:
        for f in findings:
            print(f.line())
        print(f"watcher audit: {chain} blocks {args.start}..{args.end} against {topic}: "
              f"{len(expected)} deposits on the chain, {len(observed)} events in the topic, "
              f"{len(findings)} findings" + ("" if findings else " (clean)"), file=sys.stderr)
    return EXIT_FINDINGS if findings else EXIT_OK


async def read_deposits(cfg: KafkaConfig, topic: str, chain: str, start: int, end: int,
                        timeout_s: float = 300.0) -> tuple[list[Mapping[str, Any]], int]:
    """The committed events of ``chain`` in blocks ``start..end``, and how many records were
    not JSON objects. Reads every partition from its start to its end as of now."""
    from watcher.kafka.client import ManualConsumer

    consumer = ManualConsumer(cfg, topic)
    await consumer.start()
    out: list[Mapping[str, Any]] = []
    skipped = 0
    try:
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets()
        deadline = time.monotonic() + timeout_s
        last_print = time.monotonic()
        seen = 0
        while [p for p, e in ends.items() if await consumer.position(p) < e]:
            if time.monotonic() > deadline:
                raise SinkError(ErrorKind.RETRIABLE, f"reading {topic} did not finish in {timeout_s:.0f}s")
            for rec in await consumer.fetch(timeout_ms=500):
                if rec.offset >= ends.get(rec.partition, 0):
                    continue
                seen += 1
                try:
                    doc = orjson.loads(rec.value) if rec.value is not None else None
                except orjson.JSONDecodeError:
                    doc = None
                if not isinstance(doc, dict):
                    skipped += 1
                    continue
                number = doc.get("block_number")
                if doc.get("chain") == chain and isinstance(number, int) and start <= number <= end:
                    out.append(doc)
            if time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                print(f"audit: read {seen} records of {topic}", file=sys.stderr, flush=True)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return out, skipped
