"""The EVM chain family: JSON-RPC over HTTP, blocks fetched by hash, answers checked.

Native top-level transfers (with a successful receipt), allow-listed ERC-20
``Transfer`` logs and, where the node can trace, internal native transfers.
"""

from chains.evm.adapter import EvmAddressCodec, EvmChainSource, build_source

__all__ = ["EvmAddressCodec", "EvmChainSource", "build_source"]
