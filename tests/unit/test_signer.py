"""The local hot-key signer: where the key comes from, and that it never shows."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from chains.evm.tx import sender_of
from watcher.errors import SignerError
from watcher.withdrawals.signer import HotKeySigner

KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
HOT = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"  # eth-account's address of KEY_HEX


def test_key_from_a_mounted_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "hot-key"
    f.write_text(f"0x{KEY_HEX}\n")
    s = HotKeySigner.from_file("eth-hot", f)
    assert sender_of(s.public_key) == HOT
    assert s.name == "eth-hot"


def test_key_from_an_environment_variable() -> None:
    s = HotKeySigner.from_env("eth-hot", "HOT_KEY", {"HOT_KEY": KEY_HEX})
    assert sender_of(s.public_key) == HOT


@pytest.mark.parametrize(("text", "match"), [
    ("0x1234", "not 32 bytes of hex"),
    ("zz" * 32, "not 32 bytes of hex"),
    ("00" * 32, "not a valid secp256k1 key"),
    ("ff" * 32, "not a valid secp256k1 key"),
])
def test_bad_key_text_is_refused_without_echoing_it(text: str, match: str) -> None:
    with pytest.raises(SignerError, match=match) as exc:
        HotKeySigner.from_env("eth-hot", "HOT_KEY", {"HOT_KEY": text})
    assert text not in str(exc.value)
    assert "HOT_KEY" in str(exc.value)


def test_missing_sources_name_the_place() -> None:
    with pytest.raises(SignerError, match="HOT_KEY is not set"):
        HotKeySigner.from_env("eth-hot", "HOT_KEY", {})
    with pytest.raises(SignerError, match="cannot read the secret file /nonexistent/key"):
        HotKeySigner.from_file("eth-hot", Path("/nonexistent/key"))


async def test_the_key_never_shows() -> None:
    s = HotKeySigner.from_env("eth-hot", "HOT_KEY", {"HOT_KEY": KEY_HEX})
    assert repr(s) == "HotKeySigner(name='eth-hot')"
    assert KEY_HEX not in repr(s._secret) and KEY_HEX not in str(s._secret)
    with pytest.raises(TypeError):
        pickle.dumps(s._secret)
    with pytest.raises(SignerError, match="32 bytes, got 31"):
        await s.sign_digest(bytes(31))
    assert not hasattr(s, "__dict__")  # slots only: no vars() dump of a key attribute
