"""Logs are JSON lines, library logs included, and credentials never reach them."""

from __future__ import annotations

import logging

import orjson
import pytest
import structlog

from watcher.logs import configure


def test_json_lines_with_bound_context_and_redaction(capsys: pytest.CaptureFixture[str]) -> None:
    configure("info", json=True)
    try:
        structlog.get_logger("watcher.test").info("cycle", chain="eth", height=7, sasl_password="hunter2",
                                                  endpoint_url="http://key@node")
        logging.getLogger("watcher.kafka.test").warning("lag %s", 3)
        lines = [orjson.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    ours = next(x for x in lines if x["event"] == "cycle")
    assert ours["chain"] == "eth" and ours["height"] == 7
    assert ours["sasl_password"] == "[redacted]" and ours["endpoint_url"] == "[redacted]"
    assert "hunter2" not in str(lines)
    theirs = next(x for x in lines if x["event"] == "lag 3")
    assert theirs["level"] == "warning" and theirs["logger"] == "watcher.kafka.test"
