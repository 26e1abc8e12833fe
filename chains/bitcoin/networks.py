"""Per-network parameters of the UTXO chains the watcher follows.

Every value was checked against the chain's own ``chainparams.cpp`` (Bitcoin Core,
Litecoin Core, Dogecoin Core 1.14) and BIP173/BIP350, and written here by hand; no
library is trusted for them (bitcoinlib's ``regtest`` uses mainnet's base58 prefixes).

Base58 version bytes and HRPs decide which address texts a network accepts; the genesis
hash is what the RPC client compares with ``getblockhash 0`` to check that a node serves
the configured chain. testnet3, testnet4 and signet share every address parameter, so an
address of one parses on the others: only the genesis hash tells those chains apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from watcher.types import BlockHash


@dataclass(frozen=True, slots=True)
class Network:
    """What the codec and the identity check need to know of one network."""

    name: str
    p2pkh_version: int
    """Base58Check version byte of pay-to-pubkey-hash addresses."""
    p2sh_versions: tuple[int, ...]
    """Base58Check version bytes of pay-to-script-hash addresses; the first is the one this
    watcher writes. Litecoin accepts its old ``3...`` prefix (5) beside ``M...`` (50)."""
    bech32_hrp: str | None
    """Human-readable part of segwit addresses; None where segwit is not active."""
    genesis_hash: BlockHash
    """Display (reversed) hex of block 0."""
    segwit: bool
    taproot: bool
    symbol: str
    """The native asset's usual ticker (events carry the configured symbol)."""
    max_money: int
    """Consensus MAX_MONEY in base units: no output can be worth more."""
    coinbase_maturity: int = 100
    """Consensus coinbase maturity: the confirmations a coinbase output needs before a spend
    of it is valid (Bitcoin's and Litecoin's ``COINBASE_MATURITY`` 100; Dogecoin's 240 since
    its digishield fork at block 145,000, 30 before: 240 is the rule of every block today)."""

    @property
    def p2sh_version(self) -> int:
        return self.p2sh_versions[0]


def _net(name: str, p2pkh: int, p2sh: tuple[int, ...], hrp: str | None, genesis: str,
         *, taproot: bool, symbol: str) -> Network:
    return Network(name=name, p2pkh_version=p2pkh, p2sh_versions=p2sh, bech32_hrp=hrp,
                   genesis_hash=BlockHash(genesis), segwit=hrp is not None, taproot=taproot,
                   symbol=symbol, max_money=_MAX_MONEY[symbol],
                   coinbase_maturity=_COINBASE_MATURITY.get(symbol, 100))


_COIN = 100_000_000
_MAX_MONEY = {"BTC": 21_000_000 * _COIN, "LTC": 84_000_000 * _COIN,
              "DOGE": 10_000_000_000 * _COIN}  # each chain's amount.h
_COINBASE_MATURITY = {"DOGE": 240}  # Dogecoin's chainparams (digishieldConsensus); else 100


NETWORKS: dict[str, Network] = {n.name: n for n in (
    _net("bitcoin", 0x00, (0x05,), "bc",
         "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
         taproot=True, symbol="BTC"),
    _net("testnet", 0x6F, (0xC4,), "tb",
         "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
         taproot=True, symbol="BTC"),
    _net("testnet4", 0x6F, (0xC4,), "tb",
         "00000000da84f2bafbbc53dee25a72ae507ff4914b867c565be350b0da8bf043",
         taproot=True, symbol="BTC"),
    _net("signet", 0x6F, (0xC4,), "tb",
         "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
         taproot=True, symbol="BTC"),
    # btcd's regtest uses the same prefixes, HRP and genesis block as Bitcoin Core's.
    _net("regtest", 0x6F, (0xC4,), "bcrt",
         "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
         taproot=True, symbol="BTC"),
    # Litecoin Core writes P2SH as SCRIPT_ADDRESS2 (50 / 58) and still reads SCRIPT_ADDRESS.
    # Taproot and MWEB activated on mainnet in 2022; MWEB outputs are not in scriptPubKeys.
    _net("litecoin", 0x30, (0x32, 0x05), "ltc",
         "12a765e31ffd4059bada1e25190f6e98c99d9714d334efa41a195a7e7e04bfe2",
         taproot=True, symbol="LTC"),
    _net("litecoin_testnet", 0x6F, (0x3A, 0xC4), "tltc",
         "4966625a4b2851d9fdee139e56211a0d88575f59ed816ff5e6a63deb4e3e29a0",
         taproot=True, symbol="LTC"),
    _net("litecoin_regtest", 0x6F, (0x3A, 0xC4), "rltc",
         "530827f38f93b43ed12af0b3ad25a288dc02ed74d6d7857862df51fc56c416f9",
         taproot=True, symbol="LTC"),
    # Dogecoin 1.14 (the deployed chain) has no segwit; its 1.21 branch's "doge" HRP is
    # not active on any network, so bech32 text is rejected.
    _net("dogecoin", 0x1E, (0x16,), None,
         "1a91e3dace36e2be3bf030a65679fe821aa1d6ef92e7c9902eb318182c355691",
         taproot=False, symbol="DOGE"),
    _net("dogecoin_testnet", 0x71, (0xC4,), None,
         "bb0a78264637406b6360aad926284d544d7049f45189db5664f3c4d07350559e",
         taproot=False, symbol="DOGE"),
)}


def network(name: str) -> Network:
    """The named network; ValueError listing the known names otherwise."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(
            f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}") from None
