"""CPU seconds of a process from Linux ``/proc``: the benchmarks' one reader of it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of ``pid`` (all its threads) so far, and with ``children``
    those of its live children too; a process that is gone counts 0."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    if children:
        with contextlib.suppress(OSError):
            pids.extend(int(c) for c in
                        Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            # Fields after the command name (which may hold spaces, in parentheses): utime
            # and stime are the 14th and 15th of the line.
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
