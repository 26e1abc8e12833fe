"""Keccak-256 and EIP-55 against published values (EIP-55's own examples)."""

from __future__ import annotations

import pytest

from chains.evm.keccak import checksum_lower, keccak256


def test_keccak256_golden() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"Transfer(address,address,uint256)").hex() == (
        "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef")


@pytest.mark.parametrize("expected", [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    "0x52908400098527886E0F7030069857D2E4169EE7",
    "0xde709f2102306220921060314715629080e2fb77",
])
def test_eip55_examples(expected: str) -> None:
    assert checksum_lower(expected.lower()) == expected


@pytest.mark.parametrize("bad", [
    "0x5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED",
    "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
    "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae",
    "0xzzaeb6053f3e94c9b9a09f33669435e7ef1beaed",
])
def test_eip55_refuses_what_is_not_a_lower_case_address(bad: str) -> None:
    with pytest.raises(ValueError, match="lower-case"):
        checksum_lower(bad)


def _reference(lower: str) -> str:
    """EIP-55 as the EIP writes it, one character at a time."""
    nibbles = keccak256(lower[2:].encode("ascii")).hex()
    return "0x" + "".join(c.upper() if int(n, 16) >= 8 else c
                          for c, n in zip(lower[2:], nibbles, strict=False))


def test_eip55_equals_the_per_character_rule() -> None:
    import random

    rng = random.Random(55)
    cases = ["0x" + "0" * 40, "0x" + "f" * 40, "0x" + "a" * 40, "0x" + "9" * 40]
    cases += ["0x" + "".join(rng.choice("0123456789abcdef") for _ in range(40))
              for _ in range(2000)]
    for lower in cases:
        assert checksum_lower(lower) == _reference(lower), lower
