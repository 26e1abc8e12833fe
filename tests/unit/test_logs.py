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


def test_known_secrets_and_patterns_are_redacted_in_messages_and_tracebacks(
        capsys: pytest.CaptureFixture[str]) -> None:
    key = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
    block_hash = "0x" + "cd" * 32
    configure("info", json=True, secrets=["Sasl-Secret-From-Env"])
    try:
        log = structlog.get_logger("watcher.test")
        log.warning("node error", chain="eth", block_hash=block_hash,
                    error="POST https://u:p@rpc.example/v3/0123456789abcdef0123456789abcdef failed")
        try:
            raise RuntimeError(f"login with Sasl-Secret-From-Env and key {key}")
        except RuntimeError:
            log.exception("commit failed", nested={"attempts": [f"password={key[:12]}"]})
        logging.getLogger("aiokafka.conn").error("auth %s", "Sasl-Secret-From-Env")
        out = capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = [orjson.loads(x) for x in out.splitlines() if x.startswith("{")]
    for secret in ("Sasl-Secret-From-Env", key, key[:12], "u:p@", "0123456789abcdef0123456789abcdef"):
        assert secret not in out
    node = next(x for x in lines if x["event"] == "node error")
    assert node["error"] == "POST https://***@rpc.example/v3/*** failed"
    assert node["block_hash"] == block_hash  # hashes stay readable
    failed = next(x for x in lines if x["event"] == "commit failed")
    assert "RuntimeError: login with *** and key ***" in failed["exception"]
    assert failed["nested"] == {"attempts": ["password=***"]}
    assert any(x["event"] == "auth ***" for x in lines)
