"""Retry decisions as pure functions: backoff, classification, and what a claim settles to.

No database and no sleeping: times are datetimes handed in, randomness is a seeded Random.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random
from collections.abc import Mapping
from typing import Any

import pytest

from outbox.exceptions import PermanentError, RetryableError, SinkGone
from outbox.records import Settlement
from outbox.retry import (
    DELIVERED,
    FAILED,
    MAX_ERROR_LENGTH,
    MAX_RETRY_AFTER,
    NO_SINK_KEY,
    RETRYING,
    SUCCESS,
    UNROUTED,
    Outcome,
    RetryPolicy,
    backoff_seconds,
    classify,
    settle_event,
    sinks_due,
)
from outbox.settings import RelaySettings

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def retry_policy(**overrides: Any) -> RetryPolicy:
    """The default policy (the settings'), with ``overrides``."""
    return dataclasses.replace(RelaySettings().retry_policy(), **overrides)


NO_JITTER = retry_policy(base_seconds=1.0, cap_seconds=60.0, jitter=0.0, max_attempts=5)


def at(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def retry(error: str = "boom", retry_after: float | None = None) -> Outcome:
    return Outcome(ok=False, error=error, retry_after=retry_after)


def settle(
    outcomes: Mapping[str, Outcome],
    *,
    subscribed: tuple[str, ...] = ("a", "b"),
    deliveries: Mapping[str, Mapping[str, Any]] | None = None,
    errors: list[dict[str, Any]] | None = None,
    now: dt.datetime = NOW,
    policy: RetryPolicy = NO_JITTER,
) -> Settlement:
    return settle_event(
        subscribed=subscribed,
        deliveries=deliveries or {},
        errors=errors or [],
        outcomes=outcomes,
        now=now,
        policy=policy,
        rng=random.Random(7),
    )


# -- backoff -------------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_without_jitter() -> None:
    policy = retry_policy(base_seconds=0.5, cap_seconds=1000.0, jitter=0.0)
    assert [backoff_seconds(n, policy) for n in range(1, 7)] == [0.5, 1, 2, 4, 8, 16]


def test_backoff_is_capped() -> None:
    policy = retry_policy(base_seconds=1.0, cap_seconds=10.0, jitter=0.0)
    assert [backoff_seconds(n, policy) for n in (4, 5, 6, 60)] == [8, 10, 10, 10]
    assert backoff_seconds(10**9, policy) == 10  # no overflow for absurd attempt numbers


def test_backoff_stays_within_the_jitter_bounds() -> None:
    policy = retry_policy(base_seconds=1.0, cap_seconds=1000.0, jitter=0.25)
    rng = random.Random(1234)
    for attempt in range(1, 9):
        nominal = 2.0 ** (attempt - 1)
        delays = [backoff_seconds(attempt, policy, rng) for _ in range(200)]
        assert all(nominal * 0.75 <= d <= nominal * 1.25 for d in delays), attempt
        assert len(set(delays)) > 100, "jitter should spread the delays"


def test_backoff_with_jitter_never_exceeds_the_cap() -> None:
    policy = retry_policy(base_seconds=1.0, cap_seconds=5.0, jitter=0.5)
    rng = random.Random(99)
    delays = [backoff_seconds(attempt, policy, rng) for attempt in range(4, 30) for _ in range(50)]
    assert max(delays) <= 5.0
    assert min(delays) >= 2.5


def test_backoff_grows_exponentially_despite_jitter() -> None:
    policy = retry_policy(base_seconds=1.0, cap_seconds=10_000.0, jitter=0.25)
    rng = random.Random(5)
    delays = [backoff_seconds(attempt, policy, rng) for attempt in range(1, 12)]
    # With +/-25% jitter each step is at least 2 * 0.75 / 1.25 = 1.2 times the previous one.
    assert all(later > earlier * 1.19 for earlier, later in itertools.pairwise(delays))


def test_backoff_is_reproducible_with_a_seed() -> None:
    policy = retry_policy()
    first = [backoff_seconds(n, policy, random.Random(42)) for n in range(1, 6)]
    again = [backoff_seconds(n, policy, random.Random(42)) for n in range(1, 6)]
    assert first == again


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"backoff_base": 0},
        {"backoff_base": 10, "backoff_cap": 5},
        {"backoff_jitter": 1.0},
        {"backoff_jitter": -0.1},
        {"errors_kept": 0},
    ],
)
def test_nonsense_policies_are_refused(kwargs: dict[str, Any]) -> None:
    # The settings check the policy's values; RetryPolicy itself holds them as given.
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        RelaySettings(**kwargs)


# -- classify ------------------------------------------------------------------------------


def test_no_error_is_success() -> None:
    assert classify(None) == SUCCESS
    assert classify(None).ok


def test_a_retryable_error_keeps_its_retry_after() -> None:
    outcome = classify(RetryableError("busy", retry_after=2.5))
    assert outcome == Outcome(
        ok=False, permanent=False, error="RetryableError: busy", retry_after=2.5
    )


def test_a_permanent_error_is_permanent() -> None:
    outcome = classify(PermanentError("bad request"))
    assert not outcome.ok
    assert outcome.permanent
    assert outcome.error == "PermanentError: bad request"
    # Gone is not a failure of the event: it waits for the sink to be enabled (decision 11).
    gone = classify(SinkGone("410"))
    assert (gone.ok, gone.permanent, gone.gone) == (False, False, True)


def test_any_other_exception_is_retryable() -> None:
    outcome = classify(ConnectionResetError("peer went away"))
    assert outcome == Outcome(ok=False, error="ConnectionResetError: peer went away")
    assert classify(KeyError()).error == "KeyError"


def test_error_text_is_capped() -> None:
    error = classify(ValueError("x" * 10_000)).error
    assert error is not None
    assert len(error) == MAX_ERROR_LENGTH


def test_error_text_is_storable_in_jsonb_and_text() -> None:
    # jsonb refuses \u0000 and lone surrogates; an error message must never make a settle fail.
    error = classify(ValueError("before\x00after \udce9")).error
    assert error is not None
    assert "\x00" not in error
    assert error.encode("utf-8")
    assert "before" in error
    assert "after" in error


# -- which sinks a claim goes to -----------------------------------------------------------


def test_sinks_due_skips_acknowledged_failed_and_waiting_sinks() -> None:
    deliveries = {
        "done": {"status": DELIVERED, "attempts": 1},
        "dead": {"status": FAILED, "attempts": 3},
        "later": {"status": RETRYING, "attempts": 1, "not_before": at(5).isoformat()},
        "now": {"status": RETRYING, "attempts": 1, "not_before": at(0).isoformat()},
    }
    subscribed = ["new", "done", "dead", "later", "now"]
    assert sinks_due(subscribed, deliveries, NOW) == ["new", "now"]
    assert sinks_due(subscribed, deliveries, at(5)) == ["new", "later", "now"]


# -- settle_event --------------------------------------------------------------------------


def test_all_delivered_is_done() -> None:
    settlement = settle({"a": SUCCESS, "b": SUCCESS})
    assert settlement.status == "done"
    assert settlement.process_at is None
    assert settlement.last_error is None
    assert settlement.errors == []
    for name in ("a", "b"):
        state = settlement.deliveries[name]
        assert state["status"] == DELIVERED
        assert state["attempts"] == 1
        assert state["delivered_at"] == NOW.isoformat()


def test_a_retryable_failure_schedules_that_sink_alone() -> None:
    settlement = settle({"a": SUCCESS, "b": retry("timeout")})
    assert settlement.status == "pending"
    assert settlement.deliveries["a"]["status"] == DELIVERED
    b = settlement.deliveries["b"]
    assert b["status"] == RETRYING
    assert b["attempts"] == 1
    assert b["last_error"] == "timeout"
    assert b["not_before"] == at(1.0).isoformat()  # base * 2^0, no jitter
    assert settlement.process_at == at(1.0)
    assert settlement.last_error == "timeout"


def test_process_at_is_the_earliest_not_before_of_the_waiting_sinks() -> None:
    deliveries = {"b": {"status": RETRYING, "attempts": 3, "not_before": at(0).isoformat()}}
    # a fails for the first time (1 s), b for the fourth (8 s), c asks for 30 s.
    settlement = settle(
        {"a": retry(), "b": retry(), "c": retry(retry_after=30)},
        subscribed=("a", "b", "c"),
        deliveries=deliveries,
    )
    assert settlement.status == "pending"
    assert settlement.deliveries["a"]["not_before"] == at(1).isoformat()
    assert settlement.deliveries["b"]["not_before"] == at(8).isoformat()
    assert settlement.deliveries["c"]["not_before"] == at(30).isoformat()
    assert settlement.process_at == at(1)


def test_process_at_counts_sinks_not_attempted_in_this_claim() -> None:
    deliveries = {"b": {"status": RETRYING, "attempts": 1, "not_before": at(3).isoformat()}}
    settlement = settle({"a": retry(retry_after=10)}, deliveries=deliveries)
    assert settlement.status == "pending"
    assert settlement.process_at == at(3)
    assert settlement.deliveries["b"] == deliveries["b"]


def test_retry_after_wins_over_the_backoff() -> None:
    policy = retry_policy(base_seconds=100.0, cap_seconds=1000.0, jitter=0.0)
    settlement = settle({"a": SUCCESS, "b": retry(retry_after=0.5)}, policy=policy)
    assert settlement.deliveries["b"]["not_before"] == at(0.5).isoformat()
    assert settlement.process_at == at(0.5)
    shorter = settle({"a": SUCCESS, "b": retry(retry_after=0.0)}, policy=policy)
    assert shorter.process_at == NOW


def test_retry_after_may_exceed_the_cap() -> None:
    settlement = settle({"a": SUCCESS, "b": retry(retry_after=120)})  # cap is 60
    assert settlement.process_at == at(120)


@pytest.mark.parametrize("retry_after", [float("inf"), 1e300, 10 * MAX_RETRY_AFTER])
def test_an_absurd_retry_after_is_cut_to_the_maximum(retry_after: float) -> None:
    settlement = settle({"a": retry(retry_after=retry_after)}, subscribed=("a",))
    assert settlement.process_at == at(MAX_RETRY_AFTER)


def test_a_retry_after_that_is_not_a_number_falls_back_to_the_backoff() -> None:
    settlement = settle({"a": retry(retry_after=float("nan"))}, subscribed=("a",))
    assert settlement.process_at == at(1)


def test_a_permanent_error_fails_the_sink_at_once() -> None:
    permanent = Outcome(ok=False, permanent=True, error="PermanentError: 400")
    settlement = settle({"a": SUCCESS, "b": permanent})
    assert settlement.status == "failed"
    assert settlement.deliveries["b"]["status"] == FAILED
    assert settlement.deliveries["b"]["attempts"] == 1
    assert settlement.deliveries["a"]["status"] == DELIVERED
    assert settlement.last_error == "PermanentError: 400"
    assert settlement.process_at is None


def test_a_permanently_failed_sink_waits_for_the_others() -> None:
    permanent = Outcome(ok=False, permanent=True, error="gone")
    settlement = settle({"a": retry(), "b": permanent})
    assert settlement.status == "pending"
    assert settlement.deliveries["b"]["status"] == FAILED
    assert settlement.process_at == at(1)
    finished = settle({"a": SUCCESS}, deliveries=settlement.deliveries, now=at(1))
    assert finished.status == "failed"
    assert finished.deliveries["a"]["status"] == DELIVERED


def test_max_attempts_fails_the_sink() -> None:
    policy = retry_policy(max_attempts=3, base_seconds=1.0, cap_seconds=10.0, jitter=0.0)
    deliveries: Mapping[str, Mapping[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    statuses = []
    for attempt in range(1, 4):
        result = settle(
            {"a": retry(f"try {attempt}")},
            subscribed=("a",),
            deliveries=deliveries,
            errors=errors,
            now=at(attempt * 100),
            policy=policy,
        )
        deliveries, errors = result.deliveries, result.errors
        statuses.append(result.status)
    assert statuses == ["pending", "pending", "failed"]
    assert deliveries["a"]["status"] == FAILED
    assert deliveries["a"]["attempts"] == 3
    assert "not_before" not in deliveries["a"]
    assert result.last_error == "try 3"
    assert [e["attempt"] for e in errors] == [1, 2, 3]


def test_max_attempts_counts_per_sink() -> None:
    policy = retry_policy(max_attempts=2, jitter=0.0)
    deliveries = {
        "a": {"status": RETRYING, "attempts": 1, "not_before": NOW.isoformat()},
        "b": {"status": DELIVERED, "attempts": 5},
    }
    settlement = settle({"a": retry()}, deliveries=deliveries, policy=policy)
    assert settlement.deliveries["a"]["status"] == FAILED
    assert settlement.deliveries["b"] == {"status": DELIVERED, "attempts": 5}


def test_a_retry_goes_only_to_sinks_that_have_not_acknowledged() -> None:
    first = settle({"a": SUCCESS, "b": retry()})
    assert first.status == "pending"
    # The next claim happens once b is due: a is not asked again.
    due = sinks_due(("a", "b"), first.deliveries, first.process_at or NOW)
    assert due == ["b"]
    second = settle({"b": SUCCESS}, deliveries=first.deliveries, now=at(2))
    assert second.status == "done"
    assert second.deliveries["a"]["attempts"] == 1
    assert second.deliveries["a"]["delivered_at"] == NOW.isoformat()
    assert second.deliveries["b"]["attempts"] == 2
    assert second.deliveries["b"]["last_error"] is None
    assert "not_before" not in second.deliveries["b"]
    assert sinks_due(("a", "b"), second.deliveries, at(100)) == []


def test_settle_does_not_modify_its_inputs() -> None:
    deliveries = {"b": {"status": RETRYING, "attempts": 1, "not_before": NOW.isoformat()}}
    errors = [{"at": NOW.isoformat(), "sink": "b", "attempt": 1, "error": "x"}]
    settle({"a": SUCCESS, "b": retry()}, deliveries=deliveries, errors=errors)
    assert deliveries == {"b": {"status": RETRYING, "attempts": 1, "not_before": NOW.isoformat()}}
    assert len(errors) == 1


def test_no_subscription_is_done_and_says_so() -> None:
    settlement = settle({}, subscribed=())
    assert settlement == Settlement("done", None, {NO_SINK_KEY: {"status": UNROUTED}}, [], None)


def test_errors_record_time_sink_and_attempt() -> None:
    settlement = settle({"a": retry("a broke"), "b": SUCCESS})
    assert settlement.errors == [
        {"at": NOW.isoformat(), "sink": "a", "attempt": 1, "error": "a broke"}
    ]


def test_the_error_history_is_trimmed_to_the_newest() -> None:
    policy = retry_policy(max_attempts=100, jitter=0.0, errors_kept=3)
    deliveries: Mapping[str, Mapping[str, Any]] = {}
    errors: list[dict[str, Any]] = []
    for attempt in range(1, 7):
        result = settle(
            {"a": retry(f"e{attempt}")},
            subscribed=("a",),
            deliveries=deliveries,
            errors=errors,
            now=at(attempt),
            policy=policy,
        )
        deliveries, errors = result.deliveries, result.errors
    assert [e["error"] for e in errors] == ["e4", "e5", "e6"]
    assert [e["attempt"] for e in errors] == [4, 5, 6]
    assert [e["at"] for e in errors] == [at(n).isoformat() for n in (4, 5, 6)]
    assert all(e["sink"] == "a" for e in errors)
    assert result.last_error == "e6"


def test_a_wait_behind_an_earlier_event_looks_again_less_often_the_longer_it_lasts() -> None:
    def behind(deliveries: Mapping[str, Mapping[str, Any]], now: dt.datetime) -> Settlement:
        bound = now + dt.timedelta(minutes=1)  # what the claim says: a minute at least
        return settle_event(
            subscribed=("a",), deliveries=deliveries, errors=[], outcomes={}, now=now,
            policy=NO_JITTER, waits={"a": bound}, blocked=("a",),
        )  # fmt: skip

    first = behind({}, NOW)
    assert first.deliveries["a"]["until"] == at(60).isoformat()
    assert first.deliveries["a"]["since"] == NOW.isoformat()
    # Ten minutes on, still behind: the next look is ten minutes away, not one.
    later = behind(first.deliveries, at(600))
    assert later.deliveries["a"]["until"] == at(1200).isoformat()
    assert later.deliveries["a"]["since"] == NOW.isoformat()
    # A day on: at most an hour.
    much_later = behind(later.deliveries, at(86400))
    assert much_later.deliveries["a"]["until"] == at(86400 + 3600).isoformat()
    # Delivered at last: the wait is over and forgotten.
    done = settle({"a": SUCCESS}, subscribed=("a",), deliveries=much_later.deliveries)
    assert done.status == "done"
    assert "since" not in done.deliveries["a"]
