"""``watcher rescan --chain C --from N --to M``: re-derive a range's deposit events and publish them.

The blocks ``N..M`` are read from the node's canonical chain (linked by
parent hash, ``M`` at most the node's head) and run through the follower's
own deposit tracker with the addresses the daemon watches (the addresses file
and the registrations topic read to its end). Confirmations are counted
against the node's head *now*, so what consumers receive is, per deposit in
those blocks, one event of the type it has now:

* ``deposit.confirmed`` when it has its required confirmations, else
  ``deposit.pending``; never ``deposit.reverted`` (blocks that left the chain
  are not in the range any more: ``watcher audit`` reports events of them as
  extra);
* with the ``event_id`` the follower gives the same fact (type, deposit id,
  block hash), so a consumer deduplicating on ``event_id`` sees nothing new
  for what it already has, and gets what it missed; ``emitted_at`` is the
  time of the rescan, ``confirmations`` the count as of now;
* keyed by ``deposit_id`` like the follower's, hence on the same partition.

Each chunk of ``batch_size`` blocks is one Kafka transaction of the
transactional id ``<prefix>-rescan-<chain>`` (never the daemon's: a rescan
does not fence the running daemon, and two rescans of one chain fence each
other), with a progress record ``rescan:<chain>`` in the checkpoints topic.
A range inside the reorg window is allowed but warned about: a reorg may still
revert those deposits, and the daemon announces them itself.

``--dry-run`` prints the events as JSON lines instead and writes nothing.
Progress goes to stderr. Exit codes: :mod:`watcher.ops.common`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson

from watcher.events import deposit_event_body, deposit_record
from watcher.ops.common import (
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
    p = range_parser(sub, "rescan", "re-derive the deposit events of a block range and publish them")
    p.add_argument("--topic", help="publish to this topic instead of the configured deposits topic")
    p.add_argument("--dry-run", action="store_true", help="print the events (JSON lines), publish nothing")
    p.set_defaults(ops_main=main)


def main(args: argparse.Namespace) -> int:
    return run_command("rescan", lambda: rescan(args))


async def rescan(args: argparse.Namespace) -> int:
    from watcher.core.rederive import rederive
    from watcher.kafka.sink import KafkaTransactionalSink

    cfg = load(args.config)
    ccfg = chain_config(cfg, args.chain)
    check_range(args.start, args.end)
    chain = ChainId(args.chain)
    topic = args.topic or cfg.kafka.topics.deposits
    async with open_chain(cfg, chain) as access:
        head = await access.source.head()
        if args.end > head.number:
            raise UsageError(f"--to {args.end}: above the node's head {head.number}")
        if args.end > head.number - ccfg.reorg_window:
            print(f"watcher rescan: warning: blocks above {head.number - ccfg.reorg_window} are "
                  "inside the reorg window; a reorg may still revert them", file=sys.stderr)
        sink = None
        if not args.dry_run:
            sink = KafkaTransactionalSink(cfg.kafka, f"{cfg.kafka.transactional_id_prefix}-rescan-{chain}",
                                          chain)
            await sink.start()
        progress = Progress(f"rescan {chain}", args.end - args.start + 1)
        published = 0
        try:
            async for contents in scan(access, args.start, args.end, progress):
                events = rederive(chain, contents, head.number, access.required_for, access.label_of)
                now = time.time()
                if sink is None:
                    for ev in events:
                        sys.stdout.write(orjson.dumps(deposit_event_body(chain, ev, now)).decode() + "\n")
                    sys.stdout.flush()
                    published += len(events)
                    continue
                marker = orjson.dumps({"from": args.start, "to": args.end, "head": head.number,
                                       "done_through": contents[-1].ref.number, "topic": topic,
                                       "at": now})
                await sink.commit([deposit_record(topic, chain, ev, now) for ev in events],
                                  f"rescan:{chain}", marker)
                published += len(events)
        finally:
            if sink is not None:
                await sink.stop()
    verb = "printed" if args.dry_run else f"published to {topic}"
    print(f"watcher rescan: {chain} blocks {args.start}..{args.end} (head {head.number}): "
          f"{published} events {verb}", file=sys.stderr)
    return EXIT_OK
