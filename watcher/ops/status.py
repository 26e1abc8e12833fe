"""``watcher status``: per chain, what the running daemon's ``/status`` route reports.

A readable table by default (one line per chain, one per endpoint under it);
``--json`` prints the document as the daemon answered it. Exit 3 when the
daemon cannot be reached (see :mod:`watcher.ops.common`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import orjson

from watcher.ops.common import EXIT_OK, default_url, fetch_status, load, one_line_errors, run_command


def add_parser(sub: Any) -> None:
    p = one_line_errors(sub.add_parser(
        "status", help="per chain heads, lag and pending deposits of a running daemon"))
    p.add_argument("--url", help="the daemon's metrics/health address (default: from --config, "
                                 "else http://127.0.0.1:9308)")
    p.add_argument("--config", "-c", help="configuration whose metrics host and port to ask")
    p.add_argument("--json", action="store_true", help="print the raw /status document")
    p.set_defaults(ops_main=main)


def main(args: argparse.Namespace) -> int:
    async def body() -> int:
        url = args.url or default_url(load(args.config) if args.config else None)
        doc = await fetch_status(url)
        if args.json:
            print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        else:
            print(render(doc))
        return EXIT_OK

    return run_command("status", body)


def _n(value: object) -> str:
    return "-" if value is None else str(value)


def render(doc: Mapping[str, Any]) -> str:
    """The table of a ``/status`` document."""
    lines = [f"{'CHAIN':<10} {'STATE':<12} {'HEAD':>10} {'PROCESSED':>10} {'LAG':>6} "
             f"{'PENDING':>8} {'PAYING':>7} {'EVENTS':>8}"]
    for chain, st in sorted(doc.get("chains", {}).items()):
        lines.append(f"{chain:<10} {_n(st.get('state')):<12} {_n(st.get('head_height')):>10} "
                     f"{_n(st.get('processed_height')):>10} {_n(st.get('lag_blocks')):>6} "
                     f"{_n(st.get('pending_deposits')):>8} {_n(st.get('pending_withdrawals')):>7} "
                     f"{_n(st.get('committed_events')):>8}")
        if st.get("halted_reason"):
            lines.append(f"  halted: {st['halted_reason']}")
        if st.get("last_error"):
            lines.append(f"  last error: {st['last_error']}")
        for ep in st.get("endpoints") or ():
            lines.append(f"  endpoint {_n(ep.get('name')):<20} {_n(ep.get('state')):<10} "
                         f"head {_n(ep.get('head'))}"
                         + (f"  ({ep['problem']})" if ep.get("problem") else ""))
        if not st.get("endpoints"):
            lines.append("  endpoints: not reported by this chain's adapter")
    return "\n".join(lines)
