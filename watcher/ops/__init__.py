"""Operator commands: ``status``, ``rescan``, ``audit``, ``halt inspect|resume``.

Each module adds its subcommand with ``add_parser`` and runs it through
:func:`watcher.ops.common.run_command` (documented exit codes, one-line errors).
"""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Adds the operator subcommands to ``watcher``'s argument parser."""
    from watcher.ops import audit, halt, rescan, status

    for module in (status, rescan, audit, halt):
        module.add_parser(sub)
