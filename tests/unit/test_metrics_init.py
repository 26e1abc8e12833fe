"""metrics.init_series exports, from the start, every labelled child panels and alerts read."""

from __future__ import annotations

from prometheus_client import generate_latest

from watcher import metrics
from watcher.metrics import ChainSeries, init_series


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_counters_exist_at_zero_per_chain_endpoint_and_kind() -> None:
    init_series([ChainSeries("zz-evm", ("a", "b"), mempool=False, leadership=False),
                 ChainSeries("zz-btc", ("n",), mempool=True, leadership=True)])
    assert sample("watcher_reorgs_total", chain="zz-evm") == 0
    assert sample("watcher_deposits_reverted_after_confirmation_total", chain="zz-btc") == 0
    assert sample("watcher_reorg_depth_blocks_bucket", chain="zz-evm", le="5.0") == 0
    assert sample("watcher_reorg_depth_blocks_count", chain="zz-evm") == 0
    assert sample("watcher_kafka_commits_total", chain="zz-evm", outcome="committed") == 0
    assert sample("watcher_kafka_commits_total", chain="zz-evm", outcome="fenced") == 0
    assert sample("watcher_rpc_errors_total", chain="zz-evm", endpoint="b", kind="retriable") == 0
    assert sample("watcher_node_answers_rejected_total", chain="zz-btc", endpoint="n",
                  check="block_hash") == 0
    # Not per chain: tests run earlier in this process may have dead-lettered already.
    assert sample("watcher_dead_letters_total", source="address-registrations") is not None
    assert sample("watcher_deposit_events_total", chain="zz-evm", type="deposit.confirmed") == 0
    assert sample("watcher_confirm_quorum_held_deposits", chain="zz-evm") == 0
    assert sample("watcher_chain_halted", chain="zz-btc") == 0


def test_features_decide_which_children_exist() -> None:
    init_series([ChainSeries("zz-evm2", ("a",), mempool=False, leadership=False),
                 ChainSeries("zz-btc2", ("n",), mempool=True, leadership=True)])
    # deposit.seen and mempool transitions only where a mempool is watched.
    assert sample("watcher_deposit_events_total", chain="zz-evm2", type="deposit.seen") is None
    assert sample("watcher_deposit_events_total", chain="zz-btc2", type="deposit.seen") == 0
    assert sample("watcher_mempool_deposits_total", chain="zz-evm2", outcome="seen") is None
    assert sample("watcher_mempool_deposits_total", chain="zz-btc2", outcome="double_spent") == 0
    # Without leadership the replica follows alone: it leads. With it, election decides.
    assert sample("watcher_leader", chain="zz-evm2") == 1
    assert sample("watcher_leader", chain="zz-btc2") is None


def test_existing_values_survive_a_second_call() -> None:
    series = [ChainSeries("zz-again", ("a",), mempool=False, leadership=False)]
    init_series(series)
    metrics.REORGS.labels("zz-again").inc(3)
    metrics.RPC_ERRORS.labels("zz-again", "a", "final").inc()
    init_series(series)
    assert sample("watcher_reorgs_total", chain="zz-again") == 3
    assert sample("watcher_rpc_errors_total", chain="zz-again", endpoint="a", kind="final") == 1


def test_no_label_value_outside_config_and_enums() -> None:
    init_series([ChainSeries("zz-bound", ("ep",), mempool=True, leadership=False)])
    text = generate_latest(metrics.REGISTRY).decode()
    lines = [line for line in text.splitlines() if 'chain="zz-bound"' in line]
    assert lines
    allowed = {"chain", "endpoint", "kind", "outcome", "type", "check", "le"}
    for line in lines:
        labels = line[line.index("{") + 1:line.index("}")]
        assert {kv.split("=", 1)[0] for kv in labels.split(",")} <= allowed, line
