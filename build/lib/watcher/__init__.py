"""Blockchain deposit watcher: normalized, exactly-once deposit events in Kafka.

Guarantees, for each configured chain (see ``shared/CONTRACT.md`` and the README):

* Blocks are identified by hash and parent links; a block's contents are fetched
  by hash, and node answers are checked before use.
* Events and the chain's checkpoint are committed in one Kafka transaction; the
  checkpoint never runs ahead of durably published events, and a restart
  resumes from the last committed checkpoint. ``read_committed`` consumers see
  each fact exactly once, under a deterministic ``event_id``.
* Each ``(deposit_id, block_hash)`` gets at most one ``deposit.pending``, one
  ``deposit.confirmed`` and one ``deposit.reverted``, in that order, all keyed
  by ``deposit_id`` so they share one partition.
* A reorg inside the window reverts every deposit announced above the fork;
  a reorg deeper than the window or below finality halts the chain with a
  critical alert and failing readiness; it is never absorbed silently.
* A second instance of the same chain fences the first through the Kafka
  transactional id; the fenced one stops writing.
"""
