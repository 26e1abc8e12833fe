from __future__ import annotations

from typing import Any

from watcher.config import ChainConfig, parse


def chain_config(**overrides: Any) -> ChainConfig:
    chain: dict[str, Any] = {
        "family": "evm", "chain_id": 31337,
        "endpoints": [{"name": "sim", "url": "http://127.0.0.1:1"}],
        "start_block": 0, "reorg_window": 16, "finality": {"mode": "depth", "depth": 12},
        "poll_interval_ms": 10, "batch_size": 5,
        "native_asset": {"symbol": "ETH", "decimals": 18},
        "tokens": [{"contract": "0x" + "ab" * 20, "symbol": "USDC", "decimals": 6}],
        "confirmations": {"ETH": [{"below": 10**19, "required": 3}, {"required": 6}], "USDC": 1},
    }
    chain.update(overrides)
    cfg = parse({"kafka": {"bootstrap_servers": "127.0.0.1:1"}, "chains": {"eth": chain}})
    return cfg.chains[next(iter(cfg.chains))]
