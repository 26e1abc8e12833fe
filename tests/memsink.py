"""An in-memory ``TransactionalSink`` for component tests: atomic commits, injectable failures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from watcher.errors import ErrorKind, SinkError
from watcher.ports import OutRecord


@dataclass
class MemorySink:
    records: list[OutRecord] = field(default_factory=list)
    checkpoints: dict[str, bytes] = field(default_factory=dict)
    fail_commits: int = 0
    """The next N commits fail without any effect (as an aborted transaction)."""
    fenced: bool = False
    commits: int = 0
    fail_starts: int = 0
    """The next N starts fail as a broker not ready yet would (RETRIABLE)."""
    starts: int = 0

    async def start(self) -> None:
        self.starts += 1
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise SinkError(ErrorKind.RETRIABLE, "injected start failure: broker not ready")

    async def load_checkpoint(self, name: str) -> bytes | None:
        return self.checkpoints.get(name)

    async def commit(self, records: Sequence[OutRecord], checkpoint_name: str, checkpoint: bytes) -> None:
        if self.fenced:
            raise SinkError(ErrorKind.FENCED, "fenced")
        if self.fail_commits > 0:
            self.fail_commits -= 1
            raise SinkError(ErrorKind.RETRIABLE, "injected commit failure")
        self.records.extend(records)
        self.checkpoints[checkpoint_name] = checkpoint
        self.commits += 1

    async def stop(self) -> None:
        return None

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(r.value) for r in self.records if r.value is not None]
