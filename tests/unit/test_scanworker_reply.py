"""A scan worker's reply crosses the pipe as plain tuples (settled blocks) and whole
ScannedBlocks (doubtful ones), and comes back as the same transfers the daemon would have
settled itself; a reply of another shape is refused, never half-believed."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from chains.evm import parse
from chains.evm.scanworker import _ok_reply, _ok_result
from watcher.types import Address, AssetSymbol, BlockContents, BlockHash, BlockRef, Transfer, TxId

H = [BlockHash("0x" + f"{i:02x}" * 32) for i in range(4)]
TX = [TxId("0x" + f"{0xa0 + i:02x}" * 32) for i in range(4)]
ALICE = Address("0x" + "11" * 20)
BOB = Address("0x" + "22" * 20)
TOKEN = Address("0x" + "33" * 20)


def native(txid: TxId, amount: int) -> Transfer:
    return Transfer(txid, "tx", AssetSymbol("ETH"), None, ALICE, BOB, amount, 18)


def token_log(txid: TxId, index: int, amount: int) -> Transfer:
    return Transfer(txid, f"log:{index}", AssetSymbol("TOK"), TOKEN, BOB, None, amount, 6)


def blocks() -> tuple[list[parse.ScannedBlock], list[parse.ScannedBlock]]:
    refs = [BlockRef(100 + i, H[i + 1], H[i], 1_700_000_000 + 12 * i) for i in range(3)]
    a = parse.ScannedBlock(refs[0], txs=[{"hash": TX[0]}], logs_bloom="0x00")
    a.candidates.append(parse.NativeCandidate(0, native(TX[0], 5)))     # succeeded
    a.candidates.append(parse.NativeCandidate(2, native(TX[1], 7)))     # reverted
    a.found.append(((1, 2, (3,)), token_log(TX[2], 3, 9)))
    b = parse.ScannedBlock(refs[1], txs=[{"hash": TX[3]}], logs_bloom="0x01")
    b.candidates.append(parse.NativeCandidate(4, native(TX[3], 11)))    # succeeded, doubtful
    c = parse.ScannedBlock(refs[2], txs=[], logs_bloom="0x02")
    return [a, b, c], [b]


def across(reply: tuple[Any, ...]) -> tuple[Any, ...]:
    back: tuple[Any, ...] = pickle.loads(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    return back


def test_settled_blocks_come_back_as_their_contents_and_doubtful_ones_whole() -> None:
    scanned, doubtful = blocks()
    reply = across(_ok_reply(7, 3, scanned, doubtful, {TX[0], TX[3]}, [("e", "m", 0.5)]))
    generation, got, succeeded, observations = _ok_result(reply)
    assert (generation, observations) == (3, [("e", "m", 0.5)])
    a, b, c = got
    # in the block's order: the token log of tx 1 after the native transfer of tx 0; the
    # reverted native candidate (TX[1]) is not there
    assert a == BlockContents(BlockRef(100, H[1], H[0], 1_700_000_000),
                              (native(TX[0], 5), token_log(TX[2], 3, 9)))
    assert c == BlockContents(BlockRef(102, H[3], H[2], 1_700_000_024), ())
    assert type(b) is parse.ScannedBlock
    assert b.ref == BlockRef(101, H[2], H[1], 1_700_000_012)
    assert b.txs == [{"hash": TX[3]}] and b.logs_bloom == "0x01"  # what the receipts check reads
    assert succeeded == {TX[3]}  # only the doubtful block's successes still travel
    assert b.transfers(succeeded) == (native(TX[3], 11),)


def test_the_reply_is_what_the_daemon_would_have_settled() -> None:
    scanned, doubtful = blocks()
    succeeded = {TX[0], TX[3]}
    want = [(s.ref, s.transfers(succeeded)) for s in scanned]
    _, got, ok, _ = _ok_result(across(_ok_reply(1, 1, scanned, doubtful, succeeded, [])))
    assert [(g.ref, g.transfers if isinstance(g, BlockContents) else g.transfers(ok))
            for g in got] == want


@pytest.mark.parametrize("reply", [
    ("ok", 1, 1, "blocks", set(), []),
    ("ok", 1, 1, [], [], []),
    ("ok", 1, 1, [("not a block",)], set(), []),
    ("ok", 1, 1, [(100, H[1], H[0], 0, [("too", "short")])], set(), []),
    ("ok", 1, 1, [{"ref": 1}], set(), []),
    ("ok", 1, 1, [], set()),
])
def test_a_reply_of_another_shape_is_refused(reply: tuple[Any, ...]) -> None:
    with pytest.raises((TypeError, ValueError)):
        _ok_result(reply)


class _Watched:
    generation = 1


async def _scan_with_reply(reply_of: Any, refs: list[BlockRef]) -> tuple[Any, Any]:
    """A ScanWorker whose 'worker' is this test at the other end of its pipe."""
    import asyncio
    import multiprocessing

    from chains.evm.scanworker import ScanWorker, WorkerGone, WorkerInit

    worker = ScanWorker(WorkerInit("w", 1, (("e", "http://127.0.0.1:1"),), 1.0, 1, 2, 1, 20))
    parent, child = multiprocessing.Pipe(duplex=True)
    worker._conn = parent
    assert worker._attach()
    loop = asyncio.get_running_loop()

    def answer() -> None:
        msg = child.recv()
        child.send(reply_of(msg[1]))

    loop.add_reader(child.fileno(), answer)
    try:
        try:
            got: Any = await asyncio.wait_for(worker.scan("e", None, refs, _Watched()), 5)
        except WorkerGone as exc:
            got = exc
        return got, worker.failed
    finally:
        loop.remove_reader(child.fileno())
        await worker.close()
        child.close()


async def test_the_daemon_takes_a_reply_of_the_blocks_it_asked() -> None:
    scanned, doubtful = blocks()
    refs = [s.ref for s in scanned]
    got, failed = await _scan_with_reply(
        lambda rid: _ok_reply(rid, 1, scanned, doubtful, {TX[0], TX[3]}, []), refs)
    assert not failed
    contents, succeeded = got
    assert [c.ref for c in contents] == refs and succeeded == {TX[3]}


@pytest.mark.parametrize("wrong", ["other blocks", "fewer blocks", "unreadable"])
async def test_a_reply_of_other_blocks_sets_the_worker_aside(wrong: str) -> None:
    from chains.evm.scanworker import WorkerGone

    scanned, doubtful = blocks()
    refs = [s.ref for s in scanned]

    def reply(rid: int) -> tuple[Any, ...]:
        if wrong == "unreadable":
            return ("ok", rid, 1, "not blocks", set(), [])
        sent = scanned[1:] if wrong == "fewer blocks" else [scanned[1], scanned[0], scanned[2]]
        return _ok_reply(rid, 1, sent, doubtful, {TX[0]}, [])

    got, failed = await _scan_with_reply(reply, refs)
    assert isinstance(got, WorkerGone) and failed
