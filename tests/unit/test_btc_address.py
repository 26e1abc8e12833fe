"""Address text of every UTXO network: BIP173/BIP350 official vectors, known addresses of
each network with their scriptPubKeys (golden values), and the wrong-network rejections."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chains.bitcoin import script
from chains.bitcoin.address import UtxoAddressCodec
from chains.bitcoin.encoding import (
    Bech32Variant,
    base58check_decode,
    base58check_encode,
    bech32_decode,
)
from chains.bitcoin.networks import NETWORKS, network
from watcher.errors import InvalidAddress

# ------------------------------------------------------------------ BIP173 / BIP350 strings

BECH32_VALID = [
    "A12UEL5L",
    "a12uel5l",
    "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
    "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    "?1ezyfcl",
]
BECH32M_VALID = [
    "A1LQFN3A",
    "a1lqfn3a",
    "an83characterlonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11sg7hg6",
    "abcdef1l7aum6echk45nj3s0wdvt2fg8x9yrzpqzd3ryx",
    "11llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllludsr8",
    "split1checkupstagehandshakeupstreamerranterredcaperredlc445v",
    "?1v759aa",
]
BECH32_INVALID = [
    "\x201nwldj5", "\x7f1axkwrx", "\x801eym55h",
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk", "1pzry9x0s0muk", "x1b4n0q5v", "li1dgmt3", "de1lg7wt\xff", "A1G7SGD8",
    "10a06t8", "1qzzfhee",
]
BECH32M_INVALID = [
    "\x201xj0phk", "\x7f1g6xzxy", "\x801vctc34",
    "an84characterslonghumanreadablepartthatcontainsthetheexcludedcharactersbioandnumber11d6pts4",
    "qyrz8wqd2c9m", "1qyrz8wqd2c9m", "y1b0jsk6g", "lt1igcx5c0", "in1muywd", "mm1crxm3i",
    "au1s5cgom", "M1VUXWEZ", "16plkw9", "1p2gdwpf",
]


@pytest.mark.parametrize("text", BECH32_VALID)
def test_bip173_valid_strings_are_bech32(text: str) -> None:
    assert bech32_decode(text)[2] is Bech32Variant.BECH32


@pytest.mark.parametrize("text", BECH32M_VALID)
def test_bip350_valid_strings_are_bech32m(text: str) -> None:
    assert bech32_decode(text)[2] is Bech32Variant.BECH32M


@pytest.mark.parametrize("text", BECH32_INVALID + BECH32M_INVALID)
def test_invalid_bech32_strings_are_rejected(text: str) -> None:
    with pytest.raises(InvalidAddress):
        bech32_decode(text)


# BIP350's valid segwit addresses with their scriptPubKeys (v0 to v16).
SEGWIT_VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
     "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
     "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6"),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    ("tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
     "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
     "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
     "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"),
]

SEGWIT_INVALID = [
    # BIP350
    ("tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut", "hrp"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", "bech32m checksum"),
    ("tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf", "bech32m checksum"),
    ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", "bech32m checksum"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "bech32 checksum"),
    ("tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47", "bech32 checksum"),
    ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", "character"),
    ("BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R", "witness version"),
    ("bc1pw5dgrnzv", "program length 1"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
     "program length 41"),
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "v0 program length 16"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq", "mixed-case"),
    ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf", "more than 4 bits"),
    ("tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j", "non-zero bech32 padding"),
    ("bc1gmk9yu", "empty bech32 data"),
    # BIP173 (v1+ vectors there are bech32, which BIP350 made invalid)
    ("tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty", "hrp"),
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "bad bech32 checksum"),
    ("BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2", "witness version"),
    ("bc1rw5uspcuh", "program length"),
    ("bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",
     "program length"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7", "mixed-case"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du", "more than 4 bits"),
    ("tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv", "non-zero bech32 padding"),
    ("bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx",
     "bech32m checksum"),
    ("BC1SW50QA3JX3S", "bech32m checksum"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj", "bech32m checksum"),
]

BY_HRP = {"bc": "bitcoin", "tb": "testnet"}


@pytest.mark.parametrize(("text", "spk"), SEGWIT_VALID)
def test_bip350_valid_addresses_give_their_script_key(text: str, spk: str) -> None:
    net = network(BY_HRP[text[:2].lower()])
    address, key = UtxoAddressCodec(net).parse(text)
    spk_bytes = bytes.fromhex(spk)
    assert address == text.lower()
    assert len(key) == script.KEY_SIZE
    assert key == script.script_key(spk_bytes)
    assert script.script_address(spk_bytes, net) == text.lower()


@pytest.mark.parametrize(("text", "reason"), SEGWIT_INVALID)
def test_invalid_segwit_addresses_are_rejected_with_the_reason(text: str, reason: str) -> None:
    for name in ("bitcoin", "testnet"):
        with pytest.raises(InvalidAddress) as err:
            UtxoAddressCodec(name).parse(text)
        if name == BY_HRP.get(text[:2].lower(), "bitcoin"):
            assert reason in str(err.value), str(err.value)


# ------------------------------------------------------------------ known addresses per network

H160 = "89abcdefabbaabbaabbaabbaabbaabbaabbaabba"
P32 = "751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45"
# (network, address, scriptPubKey hex). Base58 and v0 texts from bitcoinlib 0.7.10 (an
# independent implementation), the genesis and P2SH ones are well-known mainnet addresses.
KNOWN = [
    ("bitcoin", "1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa",
     "76a91462e907b15cbf27d5425399ebf6f0fb50ebb88f1888ac"),
    ("bitcoin", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "a914b472a266d0bd89c13706a4132ccfb16f7c3b9fcb87"),
    ("bitcoin", "1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skCN", f"76a914{H160}88ac"),
    ("bitcoin", "3EExK1K1TF3v7zsFtQHt14XqexCwgmXM1y", f"a914{H160}87"),
    ("bitcoin", "bc1q3x4ummath24m42a64wa2hw4th24m42a6rul9r7", f"0014{H160}"),
    ("bitcoin", "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zs4kh870", f"0020{P32}"),
    ("testnet", "mt4tgWuYiNAnoweSUsbfQMPENRWw72ccPh", f"76a914{H160}88ac"),
    ("testnet", "2N5oANkF34hZGKnVoZXukd1X6sJR7ayZPad", f"a914{H160}87"),
    ("testnet", "tb1q3x4ummath24m42a64wa2hw4th24m42a6f6ykcd", f"0014{H160}"),
    ("signet", "tb1q3x4ummath24m42a64wa2hw4th24m42a6f6ykcd", f"0014{H160}"),
    ("testnet4", "mt4tgWuYiNAnoweSUsbfQMPENRWw72ccPh", f"76a914{H160}88ac"),
    ("regtest", "mt4tgWuYiNAnoweSUsbfQMPENRWw72ccPh", f"76a914{H160}88ac"),
    ("regtest", "2N5oANkF34hZGKnVoZXukd1X6sJR7ayZPad", f"a914{H160}87"),
    ("litecoin", "LXmteg8PyzybHdrywScarTEfieHWJbpAHy", f"76a914{H160}88ac"),
    ("litecoin", "MLT6ctiyQMuLvW99zHHDphnEyeoPivQPBX", f"a914{H160}87"),
    ("litecoin", "ltc1q3x4ummath24m42a64wa2hw4th24m42a68q9pmw", f"0014{H160}"),
    ("litecoin", "ltc1qw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zskjehy2", f"0020{P32}"),
    ("litecoin_testnet", "mt4tgWuYiNAnoweSUsbfQMPENRWw72ccPh", f"76a914{H160}88ac"),
    ("litecoin_testnet", "QZ9vVm7H5ocMTyFrBdwmhhxY1grwU3khe1", f"a914{H160}87"),
    ("litecoin_testnet", "tltc1q3x4ummath24m42a64wa2hw4th24m42a6sjxggy", f"0014{H160}"),
    ("dogecoin", "DHh2vimDCkdpZqMRVtcr8CLWPZeXYBVYcL", f"76a914{H160}88ac"),
    ("dogecoin", "A4zD3rNuXJvp2NEjJXxJFCADMXayoGQfvQ", f"a914{H160}87"),
    ("dogecoin_testnet", "ngk6ejW88j6YSovcXiGJNbvodS2pYznQmb", f"76a914{H160}88ac"),
    ("dogecoin_testnet", "2N5oANkF34hZGKnVoZXukd1X6sJR7ayZPad", f"a914{H160}87"),
]


@pytest.mark.parametrize(("name", "text", "spk"), KNOWN)
def test_known_addresses_map_to_their_script(name: str, text: str, spk: str) -> None:
    net = network(name)
    address, key = UtxoAddressCodec(net).parse(text)
    spk_bytes = bytes.fromhex(spk)
    assert address == text
    assert key == script.script_key(spk_bytes)
    assert script.key_script(key) == spk_bytes
    assert script.key_address(key, net) == text
    assert script.script_address(spk_bytes, net) == text


def test_keys_are_the_script_zero_padded_to_34_bytes() -> None:
    codec = UtxoAddressCodec("bitcoin")
    h160 = bytes.fromhex(H160)
    assert codec.parse("1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skCN")[1] == \
        b"\x76\xa9\x14" + h160 + b"\x88\xac" + bytes(9)
    assert codec.parse("3EExK1K1TF3v7zsFtQHt14XqexCwgmXM1y")[1] == b"\xa9\x14" + h160 + b"\x87" + bytes(11)
    assert codec.parse("bc1q3x4ummath24m42a64wa2hw4th24m42a6rul9r7")[1] == b"\x00\x14" + h160 + bytes(12)
    assert codec.parse("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zs4kh870")[1] == \
        b"\x00\x20" + bytes.fromhex(P32)
    assert codec.parse("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0")[1] == \
        b"\x51\x20" + bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    # A v16 two-byte program: its script padded.
    assert codec.parse("BC1SW50QGDZ25J")[1] == bytes.fromhex("6002751e") + bytes(30)
    # A v1 40-byte program is longer than a key: hashed, still 34 bytes.
    long_key = codec.parse(
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y")[1]
    assert long_key[0] == script.HASHED and len(long_key) == 34 and long_key[-1] == 0


def test_key_script_refuses_what_is_not_a_key() -> None:
    good = script.script_key(bytes.fromhex("0014" + H160))
    assert good is not None and script.key_script(good) == bytes.fromhex("0014" + H160)
    with pytest.raises(ValueError, match="not a key"):
        script.key_script(good[:-1] + b"\x01")
    with pytest.raises(ValueError, match="34 bytes"):
        script.key_script(good[:-1])
    with pytest.raises(ValueError, match="not a key"):
        script.key_script(bytes.fromhex("0015") + bytes(32))


def test_regtest_segwit_uses_bcrt_and_rejects_mainnet_hrp() -> None:
    h160 = bytes.fromhex(H160)
    spk = b"\x00\x14" + h160
    reg = network("regtest")
    text = script.script_address(spk, reg)
    assert text is not None and text.startswith("bcrt1q")
    assert UtxoAddressCodec(reg).parse(text)[1] == spk + bytes(12)
    with pytest.raises(InvalidAddress, match="hrp 'bc' is not regtest's 'bcrt'"):
        UtxoAddressCodec(reg).parse("bc1q3x4ummath24m42a64wa2hw4th24m42a6rul9r7")
    with pytest.raises(InvalidAddress, match="hrp 'bcrt' is not bitcoin's"):
        UtxoAddressCodec("bitcoin").parse(text)


@pytest.mark.parametrize(("name", "text", "reason"), [
    ("bitcoin", "mt4tgWuYiNAnoweSUsbfQMPENRWw72ccPh", "version byte 0x6f is not bitcoin's"),
    ("testnet", "1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skCN", "version byte 0x00 is not testnet's"),
    ("bitcoin", "LXmteg8PyzybHdrywScarTEfieHWJbpAHy", "used by litecoin"),
    ("bitcoin", "MLT6ctiyQMuLvW99zHHDphnEyeoPivQPBX", "0x32"),
    ("litecoin", "1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skCN", "is not litecoin's"),
    ("dogecoin", "1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skCN", "is not dogecoin's"),
    ("bitcoin", "DHh2vimDCkdpZqMRVtcr8CLWPZeXYBVYcL", "used by dogecoin"),
    ("bitcoin", "tb1q3x4ummath24m42a64wa2hw4th24m42a6f6ykcd", "hrp 'tb' is not bitcoin's"),
    ("litecoin", "bc1q3x4ummath24m42a64wa2hw4th24m42a6rul9r7", "hrp 'bc' is not litecoin's"),
    ("dogecoin", "bc1q3x4ummath24m42a64wa2hw4th24m42a6rul9r7", "dogecoin has no segwit"),
    ("dogecoin_testnet", "tb1q3x4ummath24m42a64wa2hw4th24m42a6f6ykcd", "has no segwit"),
    ("bitcoin", "1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skCM", "checksum"),
    ("bitcoin", "1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skC0", "invalid base58 character '0'"),
    ("bitcoin", "", "empty"),
    ("bitcoin", " 1DYwPTpZuLjY2qApmJdHaSAuWRvEF5skCN", "base58 character ' '"),
    ("bitcoin", "bc1q3x4ummath24m42a64wa2hw4th24m42a6rul9R7", "mixed-case"),
    ("bitcoin", "1" * 200, "too long"),
])
def test_wrong_network_and_malformed_text_are_rejected(name: str, text: str, reason: str) -> None:
    with pytest.raises(InvalidAddress, match=reason):
        UtxoAddressCodec(name).parse(text)


def test_base58_payload_of_another_length_is_rejected() -> None:
    text = base58check_encode(b"\x00" + bytes(19))
    with pytest.raises(InvalidAddress, match="payload of 20 bytes, expected 21"):
        UtxoAddressCodec("bitcoin").parse(text)


def test_litecoin_old_p2sh_form_becomes_the_m_form_of_the_same_script() -> None:
    codec = UtxoAddressCodec("litecoin")
    old = codec.parse("3EExK1K1TF3v7zsFtQHt14XqexCwgmXM1y")
    new = codec.parse("MLT6ctiyQMuLvW99zHHDphnEyeoPivQPBX")
    assert old == new == ("MLT6ctiyQMuLvW99zHHDphnEyeoPivQPBX",
                          bytes.fromhex(f"a914{H160}87") + bytes(11))


def test_upper_case_bech32_is_accepted_and_lower_cased() -> None:
    address, _ = UtxoAddressCodec("bitcoin").parse("BC1Q3X4UMMATH24M42A64WA2HW4TH24M42A6RUL9R7")
    assert address == "bc1q3x4ummath24m42a64wa2hw4th24m42a6rul9r7"


def test_non_text_is_rejected() -> None:
    with pytest.raises(InvalidAddress, match="must be text"):
        UtxoAddressCodec("bitcoin").parse(b"1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa")  # type: ignore[arg-type]


def test_base58_round_trip_keeps_leading_zero_bytes() -> None:
    payload = b"\x00\x00" + bytes(range(19))
    assert base58check_decode(base58check_encode(payload)) == payload
    assert base58check_encode(payload).startswith("11")


# ------------------------------------------------------------------ networks


def test_genesis_hashes_and_prefixes_are_the_chains_own() -> None:
    assert NETWORKS["bitcoin"].genesis_hash == \
        "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    assert NETWORKS["testnet"].genesis_hash == \
        "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943"
    assert NETWORKS["regtest"].genesis_hash == \
        "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
    assert NETWORKS["litecoin"].genesis_hash == \
        "12a765e31ffd4059bada1e25190f6e98c99d9714d334efa41a195a7e7e04bfe2"
    assert NETWORKS["dogecoin"].genesis_hash == \
        "1a91e3dace36e2be3bf030a65679fe821aa1d6ef92e7c9902eb318182c355691"
    assert NETWORKS["dogecoin"].bech32_hrp is None and not NETWORKS["dogecoin"].segwit
    assert [NETWORKS[n].bech32_hrp for n in ("bitcoin", "testnet", "signet", "regtest",
                                             "litecoin", "litecoin_testnet")] == \
        ["bc", "tb", "tb", "bcrt", "ltc", "tltc"]
    assert len({n.genesis_hash for n in NETWORKS.values()}) == len(NETWORKS)


def test_unknown_network_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown network 'mainnet'; known: bitcoin, dogecoin"):
        network("mainnet")


# ------------------------------------------------------------------ scripts without an address


@pytest.mark.parametrize("spk", [
    "6a0b68656c6c6f20776f726c64",  # OP_RETURN
    "5121" + "02" + "11" * 32 + "21" + "03" + "22" * 32 + "52ae",  # bare 1-of-2 multisig
    "21" + "02" + "33" * 32 + "ac",  # P2PK
    "0015" + "44" * 21,  # witness v0 of 21 bytes: no address
    "76a914" + "55" * 20 + "88ad",  # P2PKH-like with OP_CHECKSIGVERIFY
    "",
    "00",
    "5101" + "00",  # witness v1 program of 1 byte
])
def test_scripts_that_are_no_address_have_no_key(spk: str) -> None:
    raw = bytes.fromhex(spk)
    assert script.script_key(raw) is None
    assert script.script_address(raw, network("bitcoin")) is None


def test_key_address_of_short_and_hashed_witness_keys_and_dogecoin() -> None:
    key = script.script_key(bytes.fromhex("5128" + "75" * 40))
    assert key is not None
    with pytest.raises(ValueError, match="cannot be turned back"):
        script.key_address(key, network("bitcoin"))
    short = script.script_key(bytes.fromhex("6002751e"))
    assert short is not None and script.key_address(short, network("bitcoin")) == "bc1sw50qgdz25j"
    wpkh = bytes.fromhex("0014" + H160) + bytes(12)
    with pytest.raises(ValueError, match="dogecoin has no address"):
        script.key_address(wpkh, network("dogecoin"))


@given(st.text(max_size=100) | st.text(alphabet="qpzry9x8gf2tvdw0s3jn54khce6mua7l1bcrtBC",
                                       max_size=70))
@settings(max_examples=500, deadline=None)
def test_any_text_parses_or_raises_invalid_address(text: str) -> None:
    for name in ("bitcoin", "regtest", "litecoin", "dogecoin"):
        try:
            address, key = UtxoAddressCodec(name).parse(text)
        except InvalidAddress:
            continue
        assert len(key) == script.KEY_SIZE
        assert UtxoAddressCodec(name).parse(address) == (address, key)
