"""``watcher halt inspect|resume --chain C``: why a chain is halted, and the operator's way out.

A chain halts when a reorg reaches below its window or below finality (or its
checkpoint cannot be read); the daemon then stops publishing for it and
``/readyz`` fails. The halt itself is not stored: a restarted daemon meets the
same fork and halts again, until an operator decides.

``inspect`` reads the chain's checkpoint (window, finality, tracked deposits),
compares its window with the node's canonical chain (where they part), and
shows the running daemon's halt reason when it can be reached.

``resume --from-block N --reason TEXT`` records the decision: a new checkpoint
whose window is the node's canonical headers just below ``N``, so the daemon
next processes block ``N`` (:mod:`watcher.core.resume`: deposits of blocks no
longer canonical are reverted in the same transaction; those of canonical
blocks at or above ``N`` are announced again with their same event ids). It is
written through the chain's own transactional id, which fences a running
instance: that one can never write again and must be restarted (it is halted
anyway). The daemon that loads the checkpoint logs the decision and counts
``watcher_operator_resumes_total{chain}``; this command logs it too. Refused
(exit 1) when the running daemon answers and does not report the chain halted,
unless ``--force``. Exit codes: :mod:`watcher.ops.common`.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import structlog

from watcher.config import ChainConfig
from watcher.core.resume import ResumePlan
from watcher.ops.common import (
    EXIT_OK,
    Refused,
    Unavailable,
    UsageError,
    canonical_headers,
    chain_config,
    default_url,
    fetch_status,
    load,
    one_line_errors,
    open_chain,
    run_command,
)
from watcher.ports import ChainSource, TransactionalSink
from watcher.types import BlockHash, BlockRef, ChainId

log = structlog.get_logger("watcher.ops.halt")


def add_parser(sub: Any) -> None:
    p = one_line_errors(sub.add_parser(
        "halt", help="inspect a halted chain, or resume it from a block"))
    hs = p.add_subparsers(dest="halt_command", required=True)
    i = one_line_errors(hs.add_parser(
        "inspect", help="why a chain is halted: checkpoint, node and daemon"))
    r = one_line_errors(hs.add_parser(
        "resume", help="restart a halted chain at a block (fences a running instance)"))
    for q in (i, r):
        q.add_argument("--config", "-c", required=True)
        q.add_argument("--chain", required=True)
        q.add_argument("--url", help="the running daemon (default: from the configuration)")
    r.add_argument("--from-block", type=int, required=True, metavar="N",
                   help="the first block the daemon processes after the resume")
    r.add_argument("--reason", required=True, help="the operator's decision, recorded in the log")
    r.add_argument("--force", action="store_true",
                   help="resume even though the running daemon does not report the chain halted")
    i.set_defaults(ops_main=inspect_main)
    r.set_defaults(ops_main=resume_main)


def inspect_main(args: argparse.Namespace) -> int:
    return run_command("halt inspect", lambda: inspect(args))


def resume_main(args: argparse.Namespace) -> int:
    return run_command("halt resume", lambda: resume(args))


async def _daemon_view(url: str, chain: str) -> dict[str, Any] | str:
    try:
        doc = await fetch_status(url)
    except Unavailable as exc:
        return str(exc)
    st = doc["chains"].get(chain)
    return st if isinstance(st, dict) else f"the daemon at {url} does not follow {chain}"


async def _node_hashes(source: ChainSource, batch: int, lo: int, hi: int) -> dict[int, BlockHash]:
    """The node's canonical hash per height ``lo..hi`` (capped at its head)."""
    head = await source.head()
    hi = min(hi, head.number)
    out: dict[int, BlockHash] = {}
    if lo > hi:
        return out
    async for refs in canonical_headers(source, lo, hi, max(1, batch)):
        out.update((r.number, r.hash) for r in refs)
    return out


async def resume_chain(source: ChainSource, sink: TransactionalSink, ccfg: ChainConfig,
                       from_block: int, reason: str, deposits_topic: str,
                       now: float) -> tuple[ResumePlan, dict[str, Any]]:
    """Builds the resume plan from the sink's checkpoint and the node, and commits it (the
    reverts and the new checkpoint in one transaction). ``sink`` is started by the caller."""
    from watcher.core.chainstate import ChainState
    from watcher.core.resume import plan_resume
    from watcher.events import deposit_record

    chain = ccfg.id

    def required_for(asset: str, amount: int) -> int:
        return ccfg.rule_for(asset).required_for(amount)

    name = f"chain:{chain}"
    data = await sink.load_checkpoint(name)
    old = ChainState.restore(data, chain, ccfg.reorg_window, required_for) if data is not None else None
    seed: list[BlockRef] = []
    async for refs in canonical_headers(source, max(0, from_block - ccfg.reorg_window),
                                        from_block - 1, max(1, ccfg.batch_size)):
        seed.extend(refs)
    heights = {d.block.number for d in old.tracker.deposits()} if old is not None else set()
    canonical = (await _node_hashes(source, ccfg.batch_size, min(heights), max(heights))
                 if heights else {})
    previous = old.tip if old is not None else None  # before the plan takes `old` over
    plan = plan_resume(chain, old, seed, canonical, from_block, ccfg.reorg_window, required_for)
    record: dict[str, Any] = {"from_block": from_block, "reason": reason, "at": now,
                              "previous_tip": previous.number if previous else None,
                              "previous_tip_hash": previous.hash if previous else None,
                              "reverted": len(plan.reverted)}
    await sink.commit([deposit_record(deposits_topic, chain, ev, now) for ev in plan.reverted],
                      name, plan.state.snapshot(resume=record))
    return plan, record


async def inspect(args: argparse.Namespace) -> int:
    from watcher.core.chainstate import ChainState
    from watcher.kafka.sink import read_chain_checkpoint

    cfg = load(args.config)
    ccfg = chain_config(cfg, args.chain)
    chain = ChainId(args.chain)
    url = args.url or default_url(cfg)
    daemon = await _daemon_view(url, chain)
    if isinstance(daemon, dict):
        print(f"daemon: {daemon.get('state')}" + (f": {daemon['halted_reason']}"
                                                 if daemon.get("halted_reason") else ""))
    else:
        print(f"daemon: not consulted ({daemon})")
    checkpoint = await read_chain_checkpoint(cfg.kafka, chain)
    if checkpoint is None:
        print(f"checkpoint: none for {chain} (the daemon starts at start_block {ccfg.start_block})")
        return EXIT_OK
    async with open_chain(cfg, chain, addresses=False) as access:
        state = ChainState.restore(checkpoint, chain, ccfg.reorg_window, access.required_for)
        blocks = state.window.blocks()
        if not blocks:
            print("checkpoint: empty window")
            return EXIT_OK
        bottom, tip = blocks[0], blocks[-1]
        pending = state.tracker.unconfirmed()
        print(f"checkpoint: window {bottom.number}..{tip.number} (tip {tip.hash}), finalized "
              f"{state.window.finalized_number}, {len(state.tracker)} tracked deposits "
              f"({pending} unconfirmed)")
        hashes = await _node_hashes(access.source, ccfg.batch_size, bottom.number, tip.number)
        canonical = [b for b in blocks if hashes.get(b.number) == b.hash]
        head = await access.source.head()
        print(f"node: head {head.number} {head.hash}")
        if len(canonical) == len(blocks):
            print(f"verdict: the window is on the node's canonical chain up to its tip {tip.number}; "
                  "nothing to resume from the node's side")
            return EXIT_OK
        if canonical:
            fork = canonical[-1]
            print(f"verdict: the node's chain leaves the window after block {fork.number}: a reorg "
                  f"of depth {tip.number - fork.number}")
            suggestion = fork.number + 1
        else:
            print(f"verdict: no block of the window {bottom.number}..{tip.number} is on the node's "
                  "canonical chain: the fork lies below the window bottom")
            suggestion = bottom.number
        fin = state.window.finalized_number
        if fin is not None and suggestion - 1 <= fin:
            print(f"verdict: the fork is at or below the finalized height {fin}: a finality "
                  "violation; check the node before trusting it")
        print(f"to resume: watcher halt resume -c {args.config} --chain {chain} "
              f"--from-block <N, e.g. {suggestion} or lower> --reason \"...\"")
    return EXIT_OK


async def resume(args: argparse.Namespace) -> int:
    from watcher.kafka.client import ensure_topics
    from watcher.kafka.sink import KafkaTransactionalSink

    cfg = load(args.config)
    ccfg = chain_config(cfg, args.chain)
    chain = ChainId(args.chain)
    if args.from_block < 1:
        raise UsageError(f"--from-block {args.from_block}: must be >= 1")
    if not args.reason.strip():
        raise UsageError("--reason: say why (it is recorded)")
    url = args.url or default_url(cfg)
    daemon = await _daemon_view(url, chain)
    if isinstance(daemon, dict) and daemon.get("state") != "halted" and not args.force:
        raise Refused(f"the daemon at {url} reports {chain} {daemon.get('state')}, not halted; "
                      "--force to resume anyway")
    await ensure_topics(cfg.kafka)
    async with open_chain(cfg, chain, addresses=False) as access:
        head = await access.source.head()
        if args.from_block > head.number + 1:
            raise UsageError(f"--from-block {args.from_block}: above the node's head {head.number} + 1")
        sink = KafkaTransactionalSink(cfg.kafka, f"{cfg.kafka.transactional_id_prefix}-{chain}", chain)
        await sink.start()  # fences a running instance of this chain
        try:
            plan, record = await resume_chain(access.source, sink, ccfg, args.from_block,
                                              args.reason, cfg.kafka.topics.deposits, time.time())
        finally:
            await sink.stop()
    log.warning("operator resumed the chain", chain=chain, from_block=args.from_block,
                reason=args.reason, previous_tip=record["previous_tip"],
                reverted=len(plan.reverted), kept=len(plan.kept), rederived=len(plan.rederived))
    print(f"resumed {chain} at block {args.from_block}: {len(plan.reverted)} deposits reverted, "
          f"{len(plan.kept)} kept, {len(plan.rederived)} to be announced again; a running "
          "instance is fenced: restart it", file=sys.stderr)
    previous_tip = record["previous_tip"]
    if isinstance(previous_tip, int) and args.from_block > previous_tip + 1:
        print(f"warning: blocks {previous_tip + 1}..{args.from_block - 1} were never processed; "
              f"`watcher rescan --from {previous_tip + 1} --to {args.from_block - 1}` publishes "
              "their deposits", file=sys.stderr)
    return EXIT_OK
