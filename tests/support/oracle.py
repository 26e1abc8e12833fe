"""The crash tests' oracle: what a committed deposit stream must satisfy against the chain.

A pure function of plain values, so that it is itself tested with bad streams
(``tests/unit/test_crash_oracle.py``): an oracle that cannot fail proves nothing.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.support.solidity import Event, Sent, log_index_of

ORDER = {"deposit.pending": 0, "deposit.confirmed": 1, "deposit.reverted": 2}


def check_stream(events: Sequence[Event], canonical: Mapping[int, str | None], height: int,
                 deposits: Iterable[tuple[Sent, str, str, int]], noise: Iterable[str],
                 receipts: Mapping[str, dict[str, Any] | None],
                 required: Mapping[str, int]) -> list[str]:
    """Every problem found, each prefixed with the rule it breaks:

    (a) an event or a fact twice; (b) a fact's events out of order; (c) a deposit in a
    canonical block deep enough without exactly one confirmed, or reverted; (d) a deposit
    of an orphaned block whose last word is not reverted; (e) a deposit sent to a watched
    address, canonical and deep, without its confirmed event (or with other amounts), or a
    confirmed canonical deposit nobody sent; and noise (payments to unwatched addresses)
    published.

    ``canonical``: height -> block hash of the final chain; ``deposits``: (sent, asset,
    to, amount) of what was paid to watched addresses; ``receipts``: the final receipt
    of each sent txid (None when a reorg dropped it).
    """
    problems: list[str] = []
    ids = Counter(e["event_id"] for e in events)
    problems += [f"(a) event_id {i} appears {n} times" for i, n in ids.items() if n > 1]
    facts = Counter((e["deposit_id"], e["block_hash"], e["type"]) for e in events)
    problems += [f"(a) {f} appears {n} times" for f, n in facts.items() if n > 1]

    problems += lifecycle_problems(events, canonical, height)

    confirmed = {(e["deposit_id"], e["block_hash"]): e for e in events
                 if e["type"] == "deposit.confirmed"}
    expected_keys: set[tuple[str, str]] = set()
    for sent, asset, to, amount in deposits:
        receipt = receipts[sent.txid]
        if receipt is None:
            continue  # dropped by a reorg
        bh = str(receipt["blockHash"]).lower()
        number = int(receipt["blockNumber"], 16)
        if canonical.get(number) != bh or height - number + 1 < required[asset]:
            problems.append(f"(e) setup: receipt of {sent.txid} is not in a canonical deep block")
            continue
        if asset == "ETH":
            locator = "tx"
        else:
            final = Sent(sent.txid, number, bh, receipt)
            locator = f"log:{log_index_of(final, str(receipt['logs'][0]['address']))}"
        key = (f"eth:{sent.txid}:{locator}", bh)
        expected_keys.add(key)
        ev = confirmed.get(key)
        if ev is None:
            problems.append(f"(e) lost: {asset} {amount} to {to} in tx {sent.txid} "
                            f"(block {number} {bh}) has no deposit.confirmed")
        elif (ev["amount"], ev["address"], ev["asset"]) != (str(amount), to, asset):
            problems.append(f"(e) {key}: confirmed with {ev['amount']} {ev['asset']} to "
                            f"{ev['address']}, sent {amount} {asset} to {to}")
    for key, ev in confirmed.items():
        if canonical.get(ev["block_number"]) == key[1] and key not in expected_keys:
            problems.append(f"(e) unexpected confirmed deposit {key}: {ev}")
    unwatched = set(noise)
    problems += [f"noise published: {e}" for e in events if e["txid"] in unwatched]
    return problems


def lifecycle_problems(events: Iterable[Event], canonical: Mapping[int, str | None],
                       height: int) -> list[str]:
    """Rules (b)-(d) over every fact ``(deposit_id, block_hash)`` of block-path events, for
    any chain family: its events in lifecycle order; in a canonical block deep enough,
    exactly one confirmed and never reverted; in an orphaned block, reverted last."""
    problems: list[str] = []
    per_fact: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for e in events:
        per_fact[(e["deposit_id"], e["block_hash"])].append(e)
    for (did, bh), evs in per_fact.items():
        types = [e["type"] for e in evs]
        if types != sorted(types, key=ORDER.__getitem__):
            problems.append(f"(b) {did} in {bh}: out of order {types}")
        number = evs[0]["block_number"]
        needed = evs[0]["required_confirmations"]
        if canonical.get(number) == bh:
            if height - number + 1 >= needed and (
                    types.count("deposit.confirmed") != 1 or "deposit.reverted" in types):
                problems.append(f"(c) {did} in canonical block {number} {bh}: {types}")
        elif types[-1] != "deposit.reverted":
            problems.append(f"(d) {did} in orphaned block {number} {bh}: {types}")
    return problems
