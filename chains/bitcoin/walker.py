"""Which block walk runs: the C extension or the pure-Python reference.

:mod:`chains.bitcoin.blockwalk` is the definition (and the fallback);
``chains/bitcoin/_blockwalk.c`` is the same walk in C, built by the project's build
(``[tool.setuptools] ext-modules`` in ``pyproject.toml``: ``pip install``, ``pip wheel``,
the Dockerfile) when a C compiler is there, and skipped (the build still succeeds) when
not. The two give the same results and errors (``tests/unit/test_btc_walk.py`` runs them
side by side); the C one is ~10x faster on a mainnet block, most of it in SHA-256 (the
reference's ~14,000 hashlib calls cost ~1 us each on OpenSSL 3).

Chosen once, at import: ``WATCHER_BTC_WALK=interpreted`` forces the reference (to compare
or to rule the extension out), ``=compiled`` makes a missing extension an ImportError
(images and CI that must not silently run slow), unset or ``auto`` takes the extension when
it imports. :func:`announce` logs the choice once and sets the metric.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import cache
from typing import Final, Literal

from chains.bitcoin import blockwalk as _reference
from chains.bitcoin.blockwalk import Walked

Implementation = Literal["compiled", "interpreted"]
ENV: Final = "WATCHER_BTC_WALK"

log = logging.getLogger(__name__)


def _select() -> tuple[Implementation, str]:
    wanted = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if wanted not in ("auto", "compiled", "interpreted"):
        raise ImportError(f"{ENV}={wanted!r}: expected auto, compiled or interpreted")
    if wanted == "interpreted":
        return "interpreted", f"{ENV}=interpreted"
    try:
        from chains.bitcoin import _blockwalk  # noqa: F401
    except ImportError as exc:
        if wanted == "compiled":
            raise ImportError(f"{ENV}=compiled but chains.bitcoin._blockwalk does not import: "
                              f"{exc}") from exc
        return "interpreted", f"the C extension chains.bitcoin._blockwalk is not built ({exc})"
    return "compiled", "C extension chains.bitcoin._blockwalk"


_CHOICE = _select()
IMPLEMENTATION: Final[Implementation] = _CHOICE[0]
REASON: Final[str] = _CHOICE[1]

walk: Callable[[bytes, int, int, str], Walked]
"""``walk(buf, off, count, what)``: :func:`chains.bitcoin.blockwalk.walk`, of the chosen kind."""
merkle_root: Callable[[list[bytes]], bytes]
""":func:`chains.bitcoin.blockwalk.merkle_root`, of the chosen kind."""
if IMPLEMENTATION == "compiled":
    from chains.bitcoin import _blockwalk

    walk = _blockwalk.walk
    merkle_root = _blockwalk.merkle_root
else:
    walk = _reference.walk
    merkle_root = _reference.merkle_root

@cache
def _log_choice() -> None:
    from watcher.core import addresses

    probe = "compiled" if addresses._c_matches is not None else "interpreted (~3x slower)"
    if IMPLEMENTATION == "compiled" and addresses._c_matches is not None:
        log.info("bitcoin block walk: compiled (%s); address probe: %s", REASON, probe)
    else:
        log.warning("bitcoin block walk: %s (%s); address probe: %s", IMPLEMENTATION
                    if IMPLEMENTATION == "compiled" else "interpreted, ~5x slower per block",
                    REASON, probe)


def announce() -> Implementation:
    """Logs which walk runs (once per process: a warning when it is the slow one) and sets
    ``watcher_btc_block_walk``; returns the implementation."""
    from watcher.metrics import BTC_BLOCK_WALK

    for kind in ("compiled", "interpreted"):
        BTC_BLOCK_WALK.labels(kind).set(1 if kind == IMPLEMENTATION else 0)
    _log_choice()
    return IMPLEMENTATION
