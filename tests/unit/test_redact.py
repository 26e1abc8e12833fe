"""Secrets are masked in anything shown to people: golden cases for URLs, patterns and known values."""

from __future__ import annotations

import pytest

from watcher.redact import Redactor, mask_url, url_secrets

KEY64 = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
BLOCK = "0x" + "ab" * 32


@pytest.mark.parametrize(("url", "masked"), [
    ("http://geth-0.geth:8545", "http://geth-0.geth:8545"),
    ("https://mainnet.infura.io/v3/0123456789abcdef0123456789abcdef",
     "https://mainnet.infura.io/v3/***"),
    ("https://eth-mainnet.g.alchemy.com/v2/AbCdEfGhIjKlMnOpQrStUv", "https://eth-mainnet.g.alchemy.com/v2/***"),
    ("http://user:pass@10.0.0.1:8332/wallet/hot", "http://***@10.0.0.1:8332/wallet/hot"),
    ("https://token@host/rpc?key=abc&x=1", "https://***@host/rpc?key=***&x=***"),
    ("http://[::1]:8545/", "http://[::1]:8545/"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_url_secrets_lists_every_secret_part() -> None:
    url = "https://u:p4ss@host/v3/0123456789abcdef0123456789abcdef?apikey=k1"
    assert url_secrets(url) == {"u", "p4ss", "0123456789abcdef0123456789abcdef", "k1", url}
    assert url_secrets("http://geth-0.geth:8545") == set()


def test_known_values_are_masked_anywhere_short_ones_are_not() -> None:
    r = Redactor.of(["Sasl-Secret-From-Env", "watcher"])
    assert r.known == ("Sasl-Secret-From-Env",)
    assert r.scrub("auth failed for pw Sasl-Secret-From-Env!") == "auth failed for pw ***!"
    assert r.scrub("watcher.app started") == "watcher.app started"


@pytest.mark.parametrize(("text", "scrubbed"), [
    ("GET https://u:pw@node/x?apikey=zz failed", "GET https://***@node/x?apikey=*** failed"),
    ("dsn password=hunter22 host=db", "dsn password=*** host=db"),
    ("sasl_plain_password: 'p@ss'", "sasl_plain_password: '***'"),
    (f"key 0x{KEY64} loaded", "key *** loaded"),
    (f"raw {KEY64}", "raw ***"),
    ("short 0xdeadbeef stays", "short 0xdeadbeef stays"),
])
def test_patterns(text: str, scrubbed: str) -> None:
    assert Redactor().scrub(text) == scrubbed


@pytest.mark.parametrize("field", ["block_hash", "txid", "parent_hash", "event_id"])
def test_hash_fields_keep_their_hashes(field: str) -> None:
    assert Redactor().scrub(BLOCK, field) == BLOCK
    assert Redactor().scrub(BLOCK, "error") == "***"
