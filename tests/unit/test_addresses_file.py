"""The static watched-address file: loading, and errors that name the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chainsim import HexCodec
from watcher.addresses_file import load_addresses_file, parse_addresses
from watcher.core.addresses import AddressIndex
from watcher.errors import ConfigError
from watcher.ports import AddressCodec

CODECS: dict[str, AddressCodec] = {"eth": HexCodec(), "arb": HexCodec()}
A1 = "0x" + "11" * 20
A2 = "0x" + "22" * 20
A3 = "0x" + "Ab" * 20


def indexes() -> dict[str, AddressIndex]:
    return {"eth": AddressIndex(20), "arb": AddressIndex(20)}


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "addresses.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_loads_strings_and_mappings(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
eth:
  - "{A1}"
  - {{address: "{A2}", label: "customer 42"}}
  - {{address: "{A3}"}}
arb: []
""")
    idx = indexes()
    counts = load_addresses_file(path, CODECS, idx)
    assert counts == {"eth": 3, "arb": 0}
    assert len(idx["eth"]) == 3 and len(idx["arb"]) == 0
    assert bytes.fromhex(A1[2:]) in idx["eth"]
    assert idx["eth"].label(bytes.fromhex(A2[2:])) == "customer 42"
    assert idx["eth"].label(bytes.fromhex(A1[2:])) is None
    assert bytes.fromhex(A3[2:].lower()) in idx["eth"]


def test_empty_file_and_empty_section(tmp_path: Path) -> None:
    assert load_addresses_file(write(tmp_path, ""), CODECS, indexes()) == {}
    assert load_addresses_file(write(tmp_path, "eth:\n"), CODECS, indexes()) == {"eth": 0}


@pytest.mark.parametrize(("text", "key", "reason"), [
    (f'eth: ["{A1}", "{A2}", "{A1[:-1]}"]', "addresses_file.eth[2]", "invalid address"),
    (f'eth: ["{A1}", "{A2}", "{A3}", "0xzz"]', "addresses_file.eth[3]", "40 hex"),
    (f'doge: ["{A1}"]', "addresses_file.doge", "unknown chain"),
    (f'eth: "{A1}"', "addresses_file.eth", "must be a list"),
    (f'- "{A1}"', "addresses_file", "mapping"),
    ('eth: [{address: "' + A1 + '", label: ' + '"' + "x" * 257 + '"}]',
     "addresses_file.eth[0]", "longer than 256"),
    (f'eth: [{{address: "{A1}", label: 7}}]', "addresses_file.eth[0]", "label must be a string"),
    (f'eth: [{{address: "{A1}", lable: "x"}}]', "addresses_file.eth[0]", "unknown key 'lable'"),
    ('eth: [{label: "x"}]', "addresses_file.eth[0]", "address is required"),
    ("eth: [42]", "addresses_file.eth[0]", "address string"),
    (f'eth: ["{A1}", "{A1.upper().replace("0X", "0x")}"]', "addresses_file.eth[1]",
     "already listed at addresses_file.eth[0]"),
    ("eth: [unclosed", "addresses_file", "not valid YAML"),
])
def test_errors_name_the_entry(tmp_path: Path, text: str, key: str, reason: str) -> None:
    idx = indexes()
    with pytest.raises(ConfigError) as err:
        load_addresses_file(write(tmp_path, text), CODECS, idx)
    assert err.value.key == key
    assert reason in err.value.reason
    assert len(idx["eth"]) == 0, "nothing is loaded from an invalid file"


def test_nothing_loaded_when_a_later_chain_is_wrong(tmp_path: Path) -> None:
    idx = indexes()
    path = write(tmp_path, f'eth: ["{A1}"]\narb: ["nope"]\n')
    with pytest.raises(ConfigError, match=r"addresses_file\.arb\[0\]"):
        load_addresses_file(path, CODECS, idx)
    assert len(idx["eth"]) == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_addresses_file(tmp_path / "nope.yaml", CODECS, indexes())
    assert err.value.key == "addresses_file" and "cannot read" in err.value.reason


def test_chain_without_index_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"addresses_file\.arb"):
        load_addresses_file(write(tmp_path, f'arb: ["{A1}"]'), CODECS,
                            {"eth": AddressIndex(20)})


def test_parse_returns_canonical_entries() -> None:
    parsed = parse_addresses({"eth": [A3, {"address": A1, "label": "x"}]}, CODECS)
    assert [(e.address, e.label) for e in parsed["eth"]] == [(A3.lower(), None), (A1, "x")]
