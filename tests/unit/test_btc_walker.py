"""chains.bitcoin.walker: which block walk runs, and how it is told (WATCHER_BTC_WALK, the
log line, the metric)."""

from __future__ import annotations

import logging
import sys

import pytest

import chains.bitcoin
from chains.bitcoin import walker
from watcher import metrics
from watcher.core import addresses


def _blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if the extension were not built: importing it raises ImportError."""
    monkeypatch.setitem(sys.modules, "chains.bitcoin._blockwalk", None)
    monkeypatch.delattr(chains.bitcoin, "_blockwalk", raising=False)


def test_interpreted_is_forced_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(walker.ENV, "interpreted")
    assert walker._select() == ("interpreted", "WATCHER_BTC_WALK=interpreted")


def test_a_missing_extension_falls_back_unless_compiled_is_required(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _blocked(monkeypatch)
    monkeypatch.delenv(walker.ENV, raising=False)
    kind, reason = walker._select()
    assert kind == "interpreted" and "not built" in reason
    monkeypatch.setenv(walker.ENV, "compiled")
    with pytest.raises(ImportError, match="WATCHER_BTC_WALK=compiled"):
        walker._select()


def test_an_unknown_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(walker.ENV, "fast")
    with pytest.raises(ImportError, match=r"WATCHER_BTC_WALK='fast': expected auto, compiled or "
                                          "interpreted"):
        walker._select()


def test_the_choice_is_logged_once_and_exported(caplog: pytest.LogCaptureFixture) -> None:
    walker._log_choice.cache_clear()
    with caplog.at_level(logging.INFO, logger="chains.bitcoin.walker"):
        assert walker.announce() == walker.IMPLEMENTATION
        assert walker.announce() == walker.IMPLEMENTATION
    lines = [r for r in caplog.records if r.name == "chains.bitcoin.walker"]
    assert len(lines) == 1
    assert lines[0].getMessage().startswith(f"bitcoin block walk: {walker.IMPLEMENTATION}")
    fast = walker.IMPLEMENTATION == "compiled" and addresses._c_matches is not None
    assert lines[0].levelno == (logging.INFO if fast else logging.WARNING)
    assert "address probe: " + ("compiled" if addresses._c_matches is not None else "interpreted") \
        in lines[0].getMessage()
    other = "interpreted" if walker.IMPLEMENTATION == "compiled" else "compiled"
    assert metrics.BTC_BLOCK_WALK.labels(walker.IMPLEMENTATION)._value.get() == 1
    assert metrics.BTC_BLOCK_WALK.labels(other)._value.get() == 0
