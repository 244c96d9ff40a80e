"""Per-sink settings as the configuration reads them: the rate limit's syntax, the defaults
taken from ``[relay]``, and the settle that uses each sink's own retry policy."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from outbox.exceptions import ConfigError
from outbox.rate_limit import Rate, parse_rate
from outbox.retry import FAILED, RETRYING, Outcome, RetryPolicy, settle_event
from outbox.runtime import relay_options
from outbox.settings import Settings

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/s", 100.0),
        ("6000/min", 100.0),
        ("120/m", 2.0),
        ("7200/h", 2.0),
        (" 2.5 / s ", 2.5),
    ],
)
def test_rates_read_per_second(text: str, per_second: float) -> None:
    assert parse_rate(text).per_second == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["10/ms", "100", "/s", "0/s", "-5/s", "fast", "1e3/s", "10/d"])
def test_other_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="/s"):
        parse_rate(text)


def test_the_burst_is_one_seconds_worth_and_at_least_one_event() -> None:
    assert parse_rate("100/s").burst == 100
    assert parse_rate("6000/min").burst == 100
    assert parse_rate("10/min").burst == 1
    assert Rate(0.5, "30/min").burst == 1


def _sinks(**sinks: dict[str, object]) -> Settings:
    return Settings.from_values(
        relay={"max_attempts": 7, "backoff_base": 2.0, "backoff_cap": 60.0, "batch_size": 50},
        sinks={
            name: {"type": "callable", "target": "os:getcwd", **values}
            for name, values in sinks.items()
        },
    )


def test_sink_settings_default_to_the_relays() -> None:
    settings = _sinks(plain={}, strict={"max_attempts": 2, "batch_size": 5, "rate_limit": "3/s"})
    options = relay_options(settings)
    assert "plain" not in options.sinks  # nothing of its own: the relay's settings
    strict = options.sinks["strict"]
    assert strict.batch_size == 5
    assert strict.rate is not None
    assert strict.rate.per_second == 3
    assert strict.retry is not None
    assert (strict.retry.max_attempts, strict.retry.base_seconds) == (2, 2.0)
    assert strict.retry.cap_seconds == 60.0
    # The relay-side keys are not the sink type's options: its plugin never sees them.
    assert settings.sinks["strict"].options() == {"target": "os:getcwd"}


def test_a_sinks_backoff_must_fit_with_the_relays() -> None:
    with pytest.raises(ConfigError) as raised:
        _sinks(hasty={"backoff_cap": 1.0})  # below the relay's backoff_base of 2
    [(where, message)] = raised.value.errors
    assert where == "sinks"
    assert "sink 'hasty'" in message
    assert "backoff_cap" in message


def test_a_bad_rate_is_located_at_its_sink_and_key() -> None:
    with pytest.raises(ConfigError) as raised:
        _sinks(billing={"rate_limit": "10/ms"})
    [(where, message)] = raised.value.errors
    assert where == "sinks.billing.rate_limit"
    assert "'10/ms'" in message


def _policy(max_attempts: int) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts, base_seconds=1.0, cap_seconds=10.0, jitter=0.0, errors_kept=10
    )


def test_settle_uses_each_sinks_own_policy() -> None:
    failure = Outcome(ok=False, error="RetryableError: down")
    settlement = settle_event(
        subscribed=("strict", "lenient"),
        deliveries={
            "strict": {"status": RETRYING, "attempts": 1},
            "lenient": {"status": RETRYING, "attempts": 1},
        },
        errors=[],
        outcomes={"strict": failure, "lenient": failure},
        now=NOW,
        policy=_policy(5),
        policies={"strict": _policy(2)},
        rng=random.Random(1),
    )
    assert settlement.deliveries["strict"]["status"] == FAILED
    assert settlement.deliveries["lenient"]["status"] == RETRYING
