"""The lz4 level of the watcher's producers (aiokafka has no setting for it).

aiokafka compresses every lz4 batch at level 9 (LZ4 HC, the broker's own default for
recompression), a fixed argument of ``aiokafka.codec.lz4_encode``. Measured on a
470 kB batch of deposit events: level 9 took 64 ms of CPU and kept 47 % of the bytes,
level 1 took 8 ms and kept 53 %. In catch-up that was the daemon's largest Kafka cost.
Level 1 is the same lz4 frame format: every consumer that reads the watcher's records
today reads them unchanged (decompression does not depend on the level).

(zstd would be as fast and smaller, 30 %, but a consumer that installed only an lz4
codec, as the README tells aiokafka, kafka-python and KafkaJS users to, could no longer
read the topics: not a change to make under them.)

:func:`use_fast_lz4` points aiokafka's record batch builders (the compiled ones and the
pure-Python fallback) at level 1. It is process-wide and idempotent; it changes nothing
but the level.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)

LZ4_LEVEL = 1

_BUILDERS = (
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
)
"""The modules whose batch builders call ``lz4_encode`` by its module-level name."""


def _fast_lz4(payload: Any, level: int = LZ4_LEVEL) -> bytes:
    from aiokafka.codec import lz4_encode

    return bytes(lz4_encode(payload, level=level))


def use_fast_lz4() -> int:
    """Makes aiokafka's batch builders compress lz4 at :data:`LZ4_LEVEL`; returns how many
    builder modules now do (0: this aiokafka names it otherwise; the level stays 9)."""
    patched = 0
    for name in _BUILDERS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # no compiled extensions on this platform
            continue
        if getattr(module, "lz4_encode", None) is None:
            continue
        setattr(module, "lz4_encode", _fast_lz4)  # noqa: B010 - a module we do not own
        patched += 1
    if patched == 0:
        log.warning("aiokafka's lz4 level could not be set; batches compress at level 9")
    return patched
