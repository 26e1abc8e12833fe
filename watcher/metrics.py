"""Every Prometheus metric of the watcher, declared once.

Labels are bounded: chain id, endpoint name (from config), event type, error
kind, outcome. Never an address, a txid, a URL or a request id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from watcher.errors import AnswerCheck
from watcher.types import DepositEventType

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
RPC_RETRIES = Counter("watcher_rpc_retries_total",
                      "Node calls retried, by the endpoint that failed and the error kind",
                      ["chain", "endpoint", "kind"], registry=REGISTRY)
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
CONFIRMATION_LATENCY = Histogram(
    "watcher_deposit_confirmation_seconds",
    "Timestamp of the block that first held a deposit to its committed deposit.confirmed: the "
    "customer's wait for credit (the payments SLO beside detection latency)", ["chain"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600),
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

# ---------------------------------------------------------------- mempool (UTXO unconfirmed deposits)
MEMPOOL_TRANSITIONS = Counter(
    "watcher_mempool_deposits_total",
    "Unconfirmed deposits by transition: seen, replaced, double_spent, dropped, mined",
    ["chain", "outcome"], registry=REGISTRY)
MEMPOOL_TRACKED = Gauge("watcher_mempool_tracked_transactions",
                        "Unconfirmed transactions paying watched addresses held in the state",
                        ["chain"], registry=REGISTRY)

# ---------------------------------------------------------------- leadership (#8)
LEADER = Gauge("watcher_leader", "1 while this replica leads its chain (signs, broadcasts, follows)",
               ["chain"], registry=REGISTRY)
LEADERSHIP_CHANGES = Counter("watcher_leadership_changes_total",
                             "Leadership acquired or lost by this replica", ["chain", "change"],
                             registry=REGISTRY)


# ---- endpoint pool, verified answers, cross-checked confirmations (issue #6, pool)

ENDPOINT_STATE = Gauge("watcher_endpoint_state",
                       "1 for the state each endpoint is in (unverified, alive, unreachable, "
                       "lagging, wrong_chain, misbehaving), 0 for the others",
                       ["chain", "endpoint", "state"], registry=REGISTRY)
ANSWERS_REJECTED = Counter("watcher_node_answers_rejected_total",
                           "Node answers that failed a check, by the check they failed",
                           ["chain", "endpoint", "check"], registry=REGISTRY)
QUORUM_DISAGREEMENTS = Counter("watcher_confirm_quorum_disagreements_total",
                               "Deposit heights where fewer than confirm_quorum endpoints reported "
                               "the followed block hash", ["chain"], registry=REGISTRY)
QUORUM_HELD = Gauge("watcher_confirm_quorum_held_deposits",
                    "Deposits deep enough to confirm but held back for lack of quorum",
                    ["chain"], registry=REGISTRY)

# ---------------------------------------------------------------- operator commands (cli)

OPERATOR_RESUMES = Counter("watcher_operator_resumes_total",
                           "Halted chains resumed by an operator (`watcher halt resume`), counted "
                           "by the instance that loads the resumed checkpoint",
                           ["chain"], registry=REGISTRY)

# ---- Bitcoin family: RPC client and UTXO chain source (issue #7, btcrpc)

DUST_OUTPUTS_IGNORED = Counter("watcher_dust_outputs_ignored_total",
                               "Outputs paying watched addresses below the chain's dust_threshold: "
                               "no deposit event", ["chain"], registry=REGISTRY)
BLOCK_BYTES_FETCHED = Counter("watcher_block_bytes_fetched_total",
                              "Bytes of raw blocks fetched from nodes (verbosity 0)",
                              ["chain"], registry=REGISTRY)
MEMPOOL_TXS_FETCHED = Counter("watcher_mempool_transactions_fetched_total",
                              "Mempool transactions fetched and parsed (only new ones per poll)",
                              ["chain"], registry=REGISTRY)
MEMPOOL_TXS_UNREADABLE = Counter("watcher_mempool_transactions_unreadable_total",
                                 "Mempool transactions left out because they could not be parsed "
                                 "or were not the transaction asked for", ["chain"],
                                 registry=REGISTRY)

# ---------------------------------------------------------------- withdrawals
# Set by the withdrawal runtime; gauges from WithdrawalBook.summary() after each commit.

WITHDRAWAL_REQUESTS = Counter(
    "watcher_withdrawal_requests_total",
    "Withdrawal requests by intake outcome: accepted, repeat, dead_letter or the rejection reason. "
    "chain is a configured chain id or 'unknown', never the text of a request",
    ["chain", "outcome"], registry=REGISTRY)
WITHDRAWALS_BY_STATE = Gauge("watcher_withdrawals", "Withdrawals in the state, by state",
                             ["chain", "state"], registry=REGISTRY)
WITHDRAWALS_STUCK = Gauge("watcher_withdrawals_stuck",
                          "Payments handed to the network and not mined within stuck_blocks, or "
                          "refused for good by every node",
                          ["chain"], registry=REGISTRY)
WITHDRAWAL_REPLACEMENTS = Counter("watcher_withdrawal_replacements_total",
                                  "Fee-bumped replacements broadcast", ["chain"], registry=REGISTRY)
WITHDRAWAL_NONCE_GAP = Gauge("watcher_withdrawal_nonce_gap",
                             "Next nonce minus the reconciled one at the last reconciliation "
                             "(positive: the counter had drifted above the chain)",
                             ["chain"], registry=REGISTRY)
HOT_WALLET_BALANCE = Gauge("watcher_hot_wallet_balance",
                           "Hot wallet balance in base units (for dashboards only, never for payment "
                           "decisions)", ["chain", "asset"], registry=REGISTRY)
_WITHDRAWAL_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
WITHDRAWAL_TO_BROADCAST = Histogram("watcher_withdrawal_request_to_broadcast_seconds",
                                    "From the request record's timestamp to the first broadcast",
                                    ["chain"], buckets=_WITHDRAWAL_BUCKETS, registry=REGISTRY)
WITHDRAWAL_TO_CONFIRMED = Histogram("watcher_withdrawal_request_to_confirmed_seconds",
                                    "From the request record's timestamp to withdrawal.confirmed",
                                    ["chain"], buckets=_WITHDRAWAL_BUCKETS, registry=REGISTRY)

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

# ---------------------------------------------------------------- series from the start (#9, prom)
# A labelled child exists only once touched: a counter never incremented is absent, so
# rate()/increase() over it and the alerts on it have nothing to evaluate, and a dashboard
# panel shows "No data" instead of 0. The composition root calls init_series() once at
# startup, before any loop runs, so every series a panel or a rule names is exported with
# its zero. Label values come from the configuration and closed enums only (bounded).

CYCLE_ERROR_KINDS = ("retriable", "final", "broken_branch")
"""Kinds a follower cycle fails with (watcher.runtime.follower)."""
RPC_ERROR_KINDS = ("retriable", "final")
"""Kinds node calls fail with; the payment kinds (nonce_too_low, ...) come with sends."""
KAFKA_OUTCOMES = ("committed", "retriable", "final", "fenced", "cancelled")
"""Outcomes of one Kafka transaction (watcher.kafka.sink)."""
MEMPOOL_OUTCOMES = ("seen", "replaced", "double_spent", "dropped", "mined")
DEAD_LETTER_SOURCES = ("address-registrations",)
"""Inputs that can be dead-lettered today (watcher.kafka.registrations)."""


@dataclass(frozen=True, slots=True)
class ChainSeries:
    """What decides a chain's label children: its id, endpoint names and features."""

    chain: str
    endpoints: tuple[str, ...]
    mempool: bool
    leadership: bool
    """True when leadership decides who follows; False: this replica follows (leads) alone."""


def init_series(chains: Sequence[ChainSeries]) -> None:
    """Creates every labelled child dashboards and alerts read, at zero. Idempotent: a child
    that exists already keeps its value (``labels()`` returns it), except the two gauges
    whose zero is the start state (halted: the follower sets 1 when it halts; leader)."""
    for source in DEAD_LETTER_SOURCES:
        DEAD_LETTERS.labels(source)
    for c in chains:
        ch = c.chain
        for metric in (REORGS, REORG_BEYOND_WINDOW, REVERTED_AFTER_CONFIRMATION, BLOCKS_PROCESSED,
                       QUORUM_DISAGREEMENTS, OPERATOR_RESUMES, REORG_DEPTH, DETECTION_LATENCY,
                       CONFIRMATION_LATENCY,
                       KAFKA_COMMIT_LATENCY, TRACKED_DEPOSITS, QUORUM_HELD):
            metric.labels(ch)
        CHAIN_HALTED.labels(ch).set(0)
        if not c.leadership:
            LEADER.labels(ch).set(1)
        for ev in DepositEventType:
            if ev is not DepositEventType.SEEN or c.mempool:
                DEPOSIT_EVENTS.labels(ch, ev.value)
        for kind in CYCLE_ERROR_KINDS:
            CYCLE_ERRORS.labels(ch, kind)
        for outcome in KAFKA_OUTCOMES:
            KAFKA_COMMITS.labels(ch, outcome)
        for endpoint in c.endpoints:
            for kind in RPC_ERROR_KINDS:
                RPC_ERRORS.labels(ch, endpoint, kind)
                RPC_RETRIES.labels(ch, endpoint, kind)
            for check in AnswerCheck:
                ANSWERS_REJECTED.labels(ch, endpoint, check.value)
        if c.mempool:
            MEMPOOL_TRACKED.labels(ch)
            for outcome in MEMPOOL_OUTCOMES:
                MEMPOOL_TRANSITIONS.labels(ch, outcome)

# -- withdrawal runtime (issue #8, wdrt) ---------------------------------------------------
WITHDRAWAL_EVENTS = Counter("watcher_withdrawal_events", "Withdrawal events committed, by type",
                            ["chain", "type"], registry=REGISTRY)
WITHDRAWALS_WAITING_FUNDS = Gauge("watcher_withdrawals_waiting_funds",
                                  "Accepted withdrawals the hot wallet cannot fund yet",
                                  ["chain", "asset"], registry=REGISTRY)
HOT_WALLET_LOW_THRESHOLD = Gauge("watcher_hot_wallet_low_threshold",
                                 "Configured low-balance threshold of the hot wallet, base units",
                                 ["chain", "asset"], registry=REGISTRY)
WITHDRAWAL_CONFIRMATION_SECONDS = Histogram(
    "watcher_withdrawal_confirmation_seconds",
    "From the request record's timestamp to withdrawal.confirmed (or .failed)",
    ["chain"], buckets=_WITHDRAWAL_BUCKETS, registry=REGISTRY)

WITHDRAWAL_BATCHES = Counter(
    "watcher_withdrawal_batches_total",
    "Payments the batcher bound to their inputs, one on-chain transaction each (of one or "
    "more requests; chains with batch configured)", ["chain"], registry=REGISTRY)
WITHDRAWAL_BATCHED_REQUESTS = Counter(
    "watcher_withdrawal_batched_requests_total",
    "Requests bound into those payments: divided by watcher_withdrawal_batches_total, the "
    "mean batch size", ["chain"], registry=REGISTRY)
WITHDRAWALS_GATHERING = Gauge(
    "watcher_withdrawals_gathering",
    "Requests gathered for the next batched payment, not yet bound to inputs (held in memory; "
    "after a restart they are gathered again from the committed state)", ["chain"],
    registry=REGISTRY)

# -- Bitcoin block walk (issue #7 speed, btcspeed) --------------------------------------------
BTC_BLOCK_WALK = Gauge("watcher_btc_block_walk",
                       "1 for the Bitcoin block walk this process runs (kind: compiled C extension, "
                       "or the interpreted reference, ~5x slower per block), 0 for the other",
                       ["kind"], registry=REGISTRY)
# -- withdrawal state and refused sends (issue #8, wdstate) ---------------------------------
WITHDRAWAL_SENDS_REFUSED = Counter(
    "watcher_withdrawal_sends_refused_total",
    "Payments every node refused for good (FINAL, e.g. insufficient funds for gas); the same "
    "bytes are sent again with a growing delay and the withdrawal counts as stuck meanwhile",
    ["chain"], registry=REGISTRY)
WITHDRAWAL_STATE_BYTES = Histogram(
    "watcher_withdrawal_state_bytes",
    "Bytes of withdrawal state committed per transaction (live snapshot plus settled records)",
    ["chain"], buckets=(1_000, 10_000, 100_000, 1_000_000, 4_000_000, 16_000_000),
    registry=REGISTRY)
