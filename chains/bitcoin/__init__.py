"""The UTXO chain family (Bitcoin, its test networks, Litecoin, Dogecoin).

Pure parts: :mod:`~chains.bitcoin.networks` (per-network parameters),
:mod:`~chains.bitcoin.encoding` (Base58Check, bech32/bech32m),
:mod:`~chains.bitcoin.address` (the address codec), :mod:`~chains.bitcoin.script`
(scriptPubKey <-> index key <-> text) and :mod:`~chains.bitcoin.block` (raw blocks and
transactions, the deposit scan).
"""
