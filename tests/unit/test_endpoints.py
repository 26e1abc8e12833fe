"""Choice of the endpoint to follow from one round of reported heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.core import endpoints as fsm
from watcher.core.endpoints import EndpointPolicy, EndpointState, EndpointView, choose_endpoint
from watcher.errors import AnswerCheck, ErrorKind

ORDER = ("a", "b", "c")


@pytest.mark.parametrize(("heads", "previous", "tolerance", "followed", "in_sync"), [
    # nobody answered
    ({}, None, 0, None, ""),
    ({"a": None, "b": None, "c": None}, "a", 0, None, ""),
    # first in order among the in-sync ones when there is no previous choice
    ({"a": 10, "b": 10, "c": 10}, None, 0, "a", "abc"),
    ({"a": None, "b": 10, "c": 10}, None, 0, "b", "bc"),
    # a lagging node is not followed, even if it is first in order
    ({"a": 9, "b": 10, "c": 10}, None, 0, "b", "bc"),
    ({"a": 9, "b": 10, "c": 10}, "a", 0, "b", "bc"),
    # ... nor a previously followed one: its older head must not look like a reorg
    ({"a": 100, "b": 120, "c": None}, "a", 5, "b", "b"),
    # within tolerance it is in sync
    ({"a": 9, "b": 10, "c": 10}, None, 1, "a", "abc"),
    ({"a": 5, "b": 10, "c": 8}, None, 2, "b", "bc"),
    ({"a": 5, "b": 10, "c": 8}, None, 5, "a", "abc"),
    # no flapping: the previous stays while in sync, even when another is ahead
    ({"a": 10, "b": 11, "c": 11}, "c", 1, "c", "abc"),
    ({"a": 11, "b": 10, "c": 11}, "b", 1, "b", "abc"),
    ({"a": 10, "b": 10, "c": 10}, "c", 0, "c", "abc"),
    # the previous failed: the first in-sync one in order
    ({"a": None, "b": 10, "c": 10}, "a", 0, "b", "bc"),
    ({"a": 10, "b": 10, "c": None}, "c", 0, "a", "ab"),
    # a single answering node is followed whatever its height
    ({"a": None, "b": None, "c": 3}, "a", 0, "c", "c"),
    # missing names count as failed; unknown names are ignored
    ({"b": 7}, "a", 0, "b", "b"),
    ({"x": 99, "b": 7}, None, 0, "b", "b"),
    # previous unknown to the configured order
    ({"a": 7, "b": 7}, "gone", 0, "a", "ab"),
    # genesis heads
    ({"a": 0, "b": 0}, None, 0, "a", "ab"),
])
def test_choose_endpoint(heads: dict[str, int | None], previous: str | None, tolerance: int,
                         followed: str | None, in_sync: str) -> None:
    choice = choose_endpoint(heads, previous, ORDER, tolerance)
    assert choice.followed == followed
    assert choice.in_sync == frozenset(in_sync)
    answered = [h for h in heads.values() if h is not None]
    if followed is not None:
        assert choice.best_head == max(h for n, h in heads.items() if n in ORDER and h is not None)
    else:
        assert choice.best_head is None or not answered


def test_negative_tolerance_is_refused() -> None:
    with pytest.raises(ValueError, match="lag_tolerance"):
        choose_endpoint({"a": 1}, None, ORDER, -1)


@given(
    heads=st.dictionaries(st.sampled_from(ORDER), st.none() | st.integers(0, 1000)),
    previous=st.none() | st.sampled_from(ORDER),
    tolerance=st.integers(0, 20),
)
def test_followed_is_never_lagging(heads: dict[str, int | None], previous: str | None,
                                   tolerance: int) -> None:
    choice = choose_endpoint(heads, previous, ORDER, tolerance)
    answered = {n: h for n, h in heads.items() if h is not None}
    if not answered:
        assert choice.followed is None and not choice.in_sync
        return
    assert choice.followed in choice.in_sync
    best = max(answered.values())
    followed_head = answered[choice.followed]
    assert followed_head >= best - tolerance
    if previous in choice.in_sync:
        assert choice.followed == previous


# ------------------------------------------------------------------ the state machine


S = EndpointState
OK = fsm.IdentityOk()
MISMATCH = fsm.IdentityMismatch("chain id 1")
UNREACH = fsm.Unreachable("timeout")
HEAD = fsm.HeadSeen(7)
FAIL_R = fsm.CallFailed(ErrorKind.RETRIABLE, "502")
FAIL_F = fsm.CallFailed(ErrorKind.FINAL, "bad params")
REJECT = fsm.AnswerRejected(AnswerCheck.LOGS, "empty logs")
BEHIND = fsm.BehindBest(20)
INSYNC = fsm.InSync()


def view(state: EndpointState, head: int | None = None) -> EndpointView:
    return EndpointView(state, since=0.0, checked_at=0.0, head=head)


@pytest.mark.parametrize(("state", "obs", "after"), [
    # unverified: only identity moves it (or a rejected answer while being identified)
    (S.UNVERIFIED, OK, S.ALIVE),
    (S.UNVERIFIED, MISMATCH, S.WRONG_CHAIN),
    (S.UNVERIFIED, UNREACH, S.UNREACHABLE),
    (S.UNVERIFIED, HEAD, S.UNVERIFIED),
    (S.UNVERIFIED, FAIL_R, S.UNVERIFIED),
    (S.UNVERIFIED, REJECT, S.MISBEHAVING),
    (S.UNVERIFIED, BEHIND, S.UNVERIFIED),
    (S.UNVERIFIED, INSYNC, S.UNVERIFIED),
    # alive
    (S.ALIVE, OK, S.ALIVE),
    (S.ALIVE, MISMATCH, S.WRONG_CHAIN),
    (S.ALIVE, UNREACH, S.UNREACHABLE),
    (S.ALIVE, HEAD, S.ALIVE),
    (S.ALIVE, FAIL_R, S.UNREACHABLE),
    (S.ALIVE, FAIL_F, S.ALIVE),
    (S.ALIVE, REJECT, S.MISBEHAVING),
    (S.ALIVE, BEHIND, S.LAGGING),
    (S.ALIVE, INSYNC, S.ALIVE),
    # lagging
    (S.LAGGING, OK, S.ALIVE),
    (S.LAGGING, MISMATCH, S.WRONG_CHAIN),
    (S.LAGGING, UNREACH, S.UNREACHABLE),
    (S.LAGGING, HEAD, S.LAGGING),
    (S.LAGGING, FAIL_R, S.UNREACHABLE),
    (S.LAGGING, FAIL_F, S.LAGGING),
    (S.LAGGING, REJECT, S.MISBEHAVING),
    (S.LAGGING, BEHIND, S.LAGGING),
    (S.LAGGING, INSYNC, S.ALIVE),
    # unreachable: answers are not believed until it is identified again (the crash of #6)
    (S.UNREACHABLE, OK, S.ALIVE),
    (S.UNREACHABLE, MISMATCH, S.WRONG_CHAIN),
    (S.UNREACHABLE, UNREACH, S.UNREACHABLE),
    (S.UNREACHABLE, HEAD, S.UNREACHABLE),
    (S.UNREACHABLE, FAIL_R, S.UNREACHABLE),
    (S.UNREACHABLE, REJECT, S.UNREACHABLE),
    (S.UNREACHABLE, INSYNC, S.UNREACHABLE),
    # wrong chain: set aside until an identity check passes
    (S.WRONG_CHAIN, OK, S.ALIVE),
    (S.WRONG_CHAIN, MISMATCH, S.WRONG_CHAIN),
    (S.WRONG_CHAIN, UNREACH, S.WRONG_CHAIN),
    (S.WRONG_CHAIN, HEAD, S.WRONG_CHAIN),
    (S.WRONG_CHAIN, FAIL_R, S.WRONG_CHAIN),
    (S.WRONG_CHAIN, REJECT, S.WRONG_CHAIN),
    (S.WRONG_CHAIN, INSYNC, S.WRONG_CHAIN),
    # misbehaving: likewise
    (S.MISBEHAVING, OK, S.ALIVE),
    (S.MISBEHAVING, MISMATCH, S.WRONG_CHAIN),
    (S.MISBEHAVING, UNREACH, S.UNREACHABLE),
    (S.MISBEHAVING, HEAD, S.MISBEHAVING),
    (S.MISBEHAVING, FAIL_R, S.MISBEHAVING),
    (S.MISBEHAVING, REJECT, S.MISBEHAVING),
    (S.MISBEHAVING, INSYNC, S.MISBEHAVING),
])
def test_transition(state: EndpointState, obs: fsm.Observation, after: EndpointState) -> None:
    got = fsm.transition(view(state, head=5), obs, now=10.0)
    assert got.state is after
    assert got.since == (0.0 if after is state else 10.0)


def test_transition_keeps_head_only_while_polled_and_records_problem() -> None:
    alive = fsm.transition(view(S.ALIVE, head=5), fsm.HeadSeen(9), 1.0)
    assert alive.head == 9 and alive.problem is None
    bad = fsm.transition(alive, REJECT, 2.0)
    assert bad.head is None and bad.problem == "logs: empty logs" and bad.checked_at == 2.0
    back = fsm.transition(bad, OK, 3.0)
    assert back.state is S.ALIVE and back.problem is None and back.checked_at == 3.0
    lag = fsm.transition(fsm.transition(back, fsm.HeadSeen(4), 4.0), BEHIND, 4.0)
    assert lag.problem == "head 4 behind best 20" and lag.checked_at == 3.0


POLICY = EndpointPolicy(lag_tolerance_blocks=1, cooldown_s=60.0, unreachable_retry_s=5.0)


def viewed(state: EndpointState, checked_at: float) -> EndpointView:
    return EndpointView(state, since=checked_at, checked_at=checked_at)


@pytest.mark.parametrize(("views", "now", "due"), [
    ({"a": fsm.initial(0.0), "b": fsm.initial(0.0)}, 0.0, "ab"),
    # a serving endpoint: the set-aside ones wait for their cool-down
    ({"a": viewed(S.ALIVE, 0), "b": viewed(S.UNREACHABLE, 100)}, 104.0, ""),
    ({"a": viewed(S.ALIVE, 0), "b": viewed(S.UNREACHABLE, 100)}, 105.0, "b"),
    ({"a": viewed(S.ALIVE, 0), "b": viewed(S.MISBEHAVING, 100)}, 159.0, ""),
    ({"a": viewed(S.ALIVE, 0), "b": viewed(S.MISBEHAVING, 100)}, 160.0, "b"),
    ({"a": viewed(S.ALIVE, 0), "b": viewed(S.WRONG_CHAIN, 100)}, 160.0, "b"),
    ({"a": viewed(S.LAGGING, 0), "b": viewed(S.ALIVE, 0)}, 1000.0, ""),
    # nothing serves: everything but a wrong chain is due at once
    ({"a": viewed(S.UNREACHABLE, 100), "b": viewed(S.MISBEHAVING, 100),
      "c": viewed(S.WRONG_CHAIN, 100)}, 101.0, "ab"),
    ({"a": viewed(S.WRONG_CHAIN, 100)}, 159.0, ""),
])
def test_due_for_identity(views: dict[str, EndpointView], now: float, due: str) -> None:
    assert fsm.due_for_identity(views, now, POLICY) == frozenset(due)


def test_lag_observations_and_choice() -> None:
    views = {"a": view(S.ALIVE, 8), "b": view(S.ALIVE, 10), "c": view(S.LAGGING, 9),
             "d": view(S.UNREACHABLE)}
    obs = fsm.lag_observations(views, tolerance=1)
    assert obs == {"a": fsm.BehindBest(10), "b": fsm.InSync(), "c": fsm.InSync()}
    after = {n: fsm.transition(v, obs[n], 1.0) if n in obs else v for n, v in views.items()}
    assert [after[n].state for n in "abcd"] == [S.LAGGING, S.ALIVE, S.ALIVE, S.UNREACHABLE]
    assert fsm.choose_followed(after, "a", "abcd") == "b"      # a lags: never followed
    assert fsm.choose_followed(after, "c", "abcd") == "c"      # kept while alive
    assert fsm.choose_followed(after, None, "dcba") == "c"     # configured order
    assert fsm.serving_order(after, "c", "abcd") == ["c", "b"]
    assert fsm.choose_followed({"a": view(S.LAGGING, 1)}, None, "a") is None
    assert fsm.lag_observations({"a": view(S.UNREACHABLE)}, 0) == {}


def test_policy_rejects_negative_values() -> None:
    with pytest.raises(ValueError, match="lag_tolerance"):
        EndpointPolicy(lag_tolerance_blocks=-1)
    with pytest.raises(ValueError, match="cool-downs"):
        EndpointPolicy(cooldown_s=-1)


OBSERVATIONS = st.sampled_from([OK, MISMATCH, UNREACH, HEAD, fsm.HeadSeen(3), FAIL_R, FAIL_F,
                                REJECT, BEHIND, INSYNC])


@given(st.lists(OBSERVATIONS, max_size=40))
def test_only_an_identity_check_brings_a_set_aside_endpoint_back(
        observations: list[fsm.Observation]) -> None:
    v = fsm.initial(0.0)
    for t, obs in enumerate(observations, start=1):
        before = v
        v = fsm.transition(v, obs, float(t))
        if before.state in (S.UNVERIFIED, S.UNREACHABLE, S.WRONG_CHAIN, S.MISBEHAVING) \
                and v.state in (S.ALIVE, S.LAGGING):
            assert obs == OK
        if v.state is not before.state:
            assert v.since == float(t)
        assert v.head is None or v.state in (S.ALIVE, S.LAGGING)
