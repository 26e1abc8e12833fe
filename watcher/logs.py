"""structlog setup: JSON lines for machines, console for people; secrets never logged.

Loggers bind ``chain``, ``height`` and ``block_hash`` per cycle (see the runtime).
The last processor before rendering redacts, so neither a careless
``log.info(..., password=...)`` nor a library's error text can leak a secret:

* a key that names a credential (``password``, ``secret``, ``url``, ...) is replaced whole;
* every string value (exception tracebacks included) goes through
  :class:`watcher.redact.Redactor`: the configuration's known secret values, URLs with
  credentials, query strings or key-like path segments, ``password=...`` assignments and
  64-digit hex strings (private keys) outside hash fields (``block_hash``, ``txid``).

Hashes therefore belong in ``*_hash``/``txid`` fields, never inside the message text.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

from watcher.redact import Redactor

_SECRET_MARKERS = ("password", "secret", "private_key", "api_key", "token_secret", "signature", "url")
REDACTED = "[redacted]"


class RedactSecrets:
    """structlog processor: see the module docstring."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            if any(m in key.lower() for m in _SECRET_MARKERS):
                event[key] = REDACTED
            else:
                event[key] = self._clean(event[key], key)
        return event

    def _clean(self, value: Any, field: str) -> Any:
        if isinstance(value, str):
            return self._redactor.scrub(value, field)
        if isinstance(value, dict):
            return {k: REDACTED if any(m in str(k).lower() for m in _SECRET_MARKERS)
                    else self._clean(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v, field) for v in value]
        if isinstance(value, int | float | bool) or value is None:
            return value
        # Anything else is rendered by repr/str later: scrub that text now.
        return self._redactor.scrub(str(value), field)


def configure(level: str = "info", json: bool = True, secrets: Iterable[str] = ()) -> None:
    """One format for our loggers and for libraries that use stdlib logging (aiokafka, aiohttp).

    ``secrets``: values to mask wherever they appear (see :func:`watcher.redact.secret_values`).
    """
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks become text first, so the redaction below sees them too.
        structlog.processors.format_exc_info,
        RedactSecrets(Redactor.of(secrets)),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiokafka logs every reconnect at INFO/WARNING; our own messages say what matters.
    logging.getLogger("aiokafka").setLevel(max(numeric, logging.WARNING))
