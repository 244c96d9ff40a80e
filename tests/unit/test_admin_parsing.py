"""The pure parts of the operator commands: durations, times, topic patterns as regexes."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from outbox._event_filter import EventFilter, parse_duration, parse_time, resolve_time, topic_regex
from outbox.routing import topic_matches

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "7", "d", "7x", "-1d", "1d 2h", "7 days", "1h30"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_times() -> None:
    assert resolve_time(parse_time("10m"), NOW) == NOW - dt.timedelta(minutes=10)
    assert resolve_time(parse_time("now"), NOW) == NOW
    assert parse_time("2024-04-30T10:00:00+02:00") == dt.datetime(2024, 4, 30, 8, 0, tzinfo=dt.UTC)
    assert parse_time("2024-04-30 10:00") == dt.datetime(2024, 4, 30, 10, 0, tzinfo=dt.UTC)
    assert parse_time("2024-04-30") == dt.datetime(2024, 4, 30, tzinfo=dt.UTC)
    assert resolve_time(None, NOW) is None


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01", "10 minutes"])
def test_bad_times(text: str) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        parse_time(text)


PATTERNS = [
    "#",
    "order",
    "order.#",
    "order.*",
    "*.paid",
    "#.paid",
    "a.#.b",
    "*.*",
    "#.*.#",
    "a-b_c.*",
]
TOPICS = [
    "order",
    "order.paid",
    "order.paid.late",
    "a.b",
    "a.x.b",
    "a.x.y.b",
    "user.paid",
    "a-b_c.d",
]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_topic_regex_agrees_with_the_router(pattern: str) -> None:
    regex = topic_regex(pattern)
    for topic in TOPICS:
        assert bool(re.fullmatch(regex, "." + topic)) == topic_matches(pattern, topic), topic


def test_filters_are_validated() -> None:
    with pytest.raises(ValueError, match="invalid topic pattern"):
        EventFilter(topic="order..paid")
    with pytest.raises(ValueError, match="unknown status"):
        EventFilter(statuses=("lost",))
    with pytest.raises(ValueError, match="needs a sink"):
        EventFilter(sink_status="failed")


@pytest.mark.parametrize("text", ["99999999999d", "1000000d", "36526d", "9" * 400 + "s", "5300w"])
def test_durations_too_large_for_a_clock_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="too large: at most 36525d"):
        parse_duration(text)


def test_the_longest_duration_still_resolves() -> None:
    longest = parse_duration("36525d")
    assert resolve_time(longest, NOW) == NOW - dt.timedelta(days=36525)


@pytest.mark.parametrize("text", ["1000000d", "99999999999w"])
def test_times_too_long_ago_are_refused_as_such(text: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        parse_time(text)
