"""Every Prometheus metric of the watcher, declared once.

Labels are bounded: chain id, endpoint name (from config), event type, error
kind, outcome. Never an address, a txid, a URL or a request id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DEPTH_BUCKETS = (1, 2, 3, 5, 8, 13, 21, 34, 64, 128, 256)

PROCESSED_HEIGHT = Gauge("watcher_processed_height", "Height of the last block committed with its events",
                         ["chain"], registry=REGISTRY)
NODE_HEAD = Gauge("watcher_node_head_height", "Head height reported by the followed node",
                  ["chain"], registry=REGISTRY)
ENDPOINT_HEAD = Gauge("watcher_endpoint_head_height", "Head height last reported by each endpoint",
                      ["chain", "endpoint"], registry=REGISTRY)
LAG_BLOCKS = Gauge("watcher_lag_blocks", "Node head minus processed height", ["chain"], registry=REGISTRY)
LAG_SECONDS = Gauge("watcher_lag_seconds", "Now minus the timestamp of the last processed block",
                    ["chain"], registry=REGISTRY)
FINALIZED_HEIGHT = Gauge("watcher_finalized_height", "Height below which no reorg is accepted",
                         ["chain"], registry=REGISTRY)

RPC_LATENCY = Histogram("watcher_rpc_latency_seconds", "Node RPC round trip (a batch counts once)",
                        ["chain", "endpoint", "method"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
RPC_ERRORS = Counter("watcher_rpc_errors_total", "Node RPC failures by classified kind",
                     ["chain", "endpoint", "kind"], registry=REGISTRY)
RPC_RETRIES = Counter("watcher_rpc_retries_total", "Node RPC calls retried (on any endpoint)",
                      ["chain"], registry=REGISTRY)
ENDPOINT_IN_SYNC = Gauge("watcher_endpoint_in_sync", "1 when the endpoint is healthy and not lagging",
                         ["chain", "endpoint"], registry=REGISTRY)

REORGS = Counter("watcher_reorgs_total", "Reorgs handled", ["chain"], registry=REGISTRY)
REORG_DEPTH = Histogram("watcher_reorg_depth_blocks", "Blocks rewound per reorg", ["chain"],
                        buckets=_DEPTH_BUCKETS, registry=REGISTRY)
REORG_BEYOND_WINDOW = Counter("watcher_reorg_beyond_window_total",
                              "Reorgs deeper than the window or below finality: the chain is halted",
                              ["chain"], registry=REGISTRY)
CHAIN_HALTED = Gauge("watcher_chain_halted", "1 while a chain is halted for an operator",
                     ["chain"], registry=REGISTRY)

DEPOSIT_EVENTS = Counter("watcher_deposit_events_total", "Deposit events committed",
                         ["chain", "type"], registry=REGISTRY)
REVERTED_AFTER_CONFIRMATION = Counter(
    "watcher_deposits_reverted_after_confirmation_total",
    "Deposits reverted after deposit.confirmed was published: credit may need reversal",
    ["chain"], registry=REGISTRY)
TRACKED_DEPOSITS = Gauge("watcher_tracked_deposits", "Deposits inside the reorg window",
                         ["chain"], registry=REGISTRY)
DETECTION_LATENCY = Histogram("watcher_detection_latency_seconds",
                              "Block timestamp to committed deposit event", ["chain"],
                              buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600),
                              registry=REGISTRY)

BLOCKS_PROCESSED = Counter("watcher_blocks_processed_total", "Blocks applied to the window",
                           ["chain"], registry=REGISTRY)
CYCLE_ERRORS = Counter("watcher_cycle_errors_total", "Follower cycles that failed, by error kind",
                       ["chain", "kind"], registry=REGISTRY)

KAFKA_COMMIT_LATENCY = Histogram("watcher_kafka_commit_seconds",
                                 "One Kafka transaction: begin, send, checkpoint, commit",
                                 ["chain"], buckets=_LATENCY_BUCKETS, registry=REGISTRY)
KAFKA_COMMITS = Counter("watcher_kafka_commits_total", "Kafka transactions by outcome",
                        ["chain", "outcome"], registry=REGISTRY)

WATCHED_ADDRESSES = Gauge("watcher_watched_addresses", "Addresses in the in-memory index",
                          ["chain"], registry=REGISTRY)
REGISTRATIONS = Counter("watcher_address_registrations_total",
                        "Registration records applied, by outcome", ["outcome"], registry=REGISTRY)
DEAD_LETTERS = Counter("watcher_dead_letters_total", "Inputs sent to the dead-letter topic",
                       ["source"], registry=REGISTRY)

# -- address-index snapshots and checkpoint topics (snapshots) ------------------------------
ADDRESS_SNAPSHOT_RESTORES = Counter(
    "watcher_address_snapshot_restores_total",
    "Starts by how the address index was loaded: restored from a snapshot, or read in full "
    "because the snapshot was missing, corrupt, stale, mismatched or unavailable",
    ["chain", "outcome"], registry=REGISTRY)
ADDRESS_SNAPSHOT_RESTORE_SECONDS = Gauge(
    "watcher_address_snapshot_restore_seconds",
    "Time the last start spent loading the chain's address snapshot (or finding it unusable)",
    ["chain"], registry=REGISTRY)
ADDRESS_SNAPSHOT_WRITES = Counter("watcher_address_snapshot_writes_total",
                                  "Address-index snapshots written, by outcome",
                                  ["chain", "outcome"], registry=REGISTRY)
