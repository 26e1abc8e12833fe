"""When to pay the UTXO withdrawals gathered for a batch: pure, no I/O.

Requests waiting to be gathered (each with the tip height at which it first waited) are
paid in groups: every full group of ``max_outputs`` at once, oldest first; what is left
as one group once its oldest has waited ``max_wait_blocks`` blocks (0: at once). Which
coins pay a group, and whether they can, is coin selection's
(:func:`watcher.core.utxo.select`); binding the group is the book's
(:meth:`watcher.core.withdrawals.WithdrawalBook.funds_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping

from watcher.core.withdrawals import RequestId


def batches_due(waiting: Mapping[RequestId, int], height: int, max_outputs: int,
                max_wait_blocks: int) -> list[tuple[RequestId, ...]]:
    """The groups to pay at tip ``height``, each in the order the requests first waited
    (then by id); a request is in at most one group. ``waiting``: id -> height first seen."""
    if max_outputs < 1 or max_wait_blocks < 0:
        raise ValueError("need max_outputs >= 1 and max_wait_blocks >= 0")
    order = [rid for rid, _ in sorted(waiting.items(), key=lambda x: (x[1], x[0]))]
    groups = [tuple(order[i:i + max_outputs]) for i in range(0, len(order), max_outputs)]
    if groups and len(groups[-1]) < max_outputs and height - waiting[groups[-1][0]] < max_wait_blocks:
        groups.pop()  # not full and not waited long enough: more may join
    return groups
