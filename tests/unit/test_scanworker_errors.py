"""Errors cross the worker's pipe as plain tuples and come back as the same classified errors,
named after the endpoint the pool asked (never a URL)."""

from __future__ import annotations

import pickle

import pytest

from chains.evm.errors import RpcError
from chains.evm.scanworker import _decode_error, _encode_error
from watcher.errors import AnswerCheck, ChainError, ErrorKind, NodeAnswerInvalid


@pytest.mark.parametrize("exc", [
    NodeAnswerInvalid("block 0xab: a transaction names another block", "e1", AnswerCheck.BLOCK_HASH),
    NodeAnswerInvalid("malformed answer", "", AnswerCheck.SHAPE),
    RpcError(ErrorKind.FINAL, -32600, "batch too large", "e1", too_large=True),
    RpcError(ErrorKind.RETRIABLE, None, "header not found"),
    ChainError(ErrorKind.RETRIABLE, "timeout after 60.0 s", "e1"),
])
def test_round_trip(exc: ChainError) -> None:
    data = pickle.loads(pickle.dumps(_encode_error(exc)))
    back = _decode_error(data, "primary")
    assert type(back) is type(exc) and back.kind is exc.kind and back.endpoint == "primary"
    core = str(exc).removeprefix(f"[{exc.kind.value}] e1: ")
    assert str(back) == f"[{exc.kind.value}] primary: {core}"
    if isinstance(exc, NodeAnswerInvalid):
        assert isinstance(back, NodeAnswerInvalid) and back.check is exc.check
    if isinstance(exc, RpcError):
        assert isinstance(back, RpcError)
        assert (back.code, back.rpc_message, back.too_large) == (exc.code, exc.rpc_message,
                                                                 exc.too_large)


def test_unreadable_error_is_retriable() -> None:
    back = _decode_error(("something", 1), "primary")
    assert back.kind is ErrorKind.RETRIABLE and back.endpoint == "primary"
