"""Which events an operator means: the filter of the admin commands and the text it is
parsed from (durations, times, topic patterns). Pure: nothing here touches the database.

:mod:`outbox.admin` re-exports every name here; the filter's parameters feed the
``event_filters`` fragment of ``outbox/sql/queries.sql``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from typing import Any

from outbox.routing import validate_pattern

STATUSES = ("pending", "processing", "done", "failed")
CANCELLED = "cancelled"
"""Not a status of its own: a cancelled event is ``done`` with a ``*cancelled`` deliveries
entry (outbox/cancel.py). ``events list --status cancelled`` selects those."""
CANCELLED_KEY = "*cancelled"
LISTED_STATUSES = (*STATUSES, CANCELLED)
SINK_STATUSES = ("delivered", "retrying", "failed")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = dt.timedelta(days=36525)
"""The longest duration accepted (100 years): longer ones do not fit a clock's range."""

TimeBound = dt.datetime | dt.timedelta
"""An absolute time, or how long before the database's ``now()``."""


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``10m``, ``2h``, ``7d``, ``1w`` or a sum like ``1h30m``; ``ValueError`` if not."""
    parts = _duration_parts(text)
    if parts is None:
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w (10m, 2h, 7d)"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    if not seconds <= MAX_DURATION.total_seconds():  # inf and nan too
        shown = text.strip() if len(text.strip()) <= 20 else text.strip()[:20] + "…"
        raise ValueError(f"duration {shown!r} too large: at most {MAX_DURATION.days}d (100 years)")
    return dt.timedelta(seconds=seconds)


def _duration_parts(text: str) -> list[tuple[str, str]] | None:
    compact = text.strip().lower()
    parts: list[tuple[str, str]] = _DURATION_PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        return None
    return parts


def parse_time(text: str) -> TimeBound:
    """An ISO 8601 date or datetime (UTC when no offset is given), ``now``, or a duration
    meaning that long ago (``10m``, ``7d``)."""
    stripped = text.strip()
    if stripped.lower() == "now":
        return dt.timedelta(0)
    if _duration_parts(stripped) is not None:
        return parse_duration(stripped)
    try:
        moment = dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use an ISO 8601 datetime (2024-05-01T10:00:00Z) "
            "or a duration ago (10m, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def resolve_time(bound: TimeBound | None, now: dt.datetime) -> dt.datetime | None:
    if bound is None or isinstance(bound, dt.datetime):
        return bound
    return now - bound


def topic_regex(pattern: str) -> str:
    """A POSIX regular expression that ``'.' || topic`` matches exactly when
    :func:`outbox.routing.topic_matches` says ``topic`` matches ``pattern``."""
    validate_pattern(pattern)
    pieces = []
    for segment in pattern.split("."):
        if segment == "#":
            pieces.append(r"(\.[^.]+)*")
        elif segment == "*":
            pieces.append(r"\.[^.]+")
        else:  # letters, digits, '_' and '-': nothing to escape
            pieces.append(r"\." + segment)
    return "^" + "".join(pieces) + "$"


@dataclasses.dataclass(frozen=True)
class EventFilter:
    """Which events: every field that is not ``None`` narrows the selection."""

    ids: tuple[int, ...] | None = None
    statuses: tuple[str, ...] | None = None
    topic: str | None = None
    key: str | None = None
    sink: str | None = None
    sink_status: str | None = None
    since: TimeBound | None = None
    until: TimeBound | None = None
    done_before: TimeBound | None = None
    live: bool = False
    """Leave cancelled events out (a replay must never send one)."""

    def __post_init__(self) -> None:
        if self.topic is not None:
            validate_pattern(self.topic)
        for status in self.statuses or ():
            if status not in LISTED_STATUSES:
                raise ValueError(f"unknown status {status!r}: one of {', '.join(LISTED_STATUSES)}")
        if CANCELLED in (self.statuses or ()) and (len(self.statuses or ()) > 1 or self.sink):
            raise ValueError("status cancelled goes alone: with no other status and no sink")
        if self.sink_status is not None:
            if self.sink is None:
                raise ValueError("a sink status needs a sink")
            if self.sink_status not in SINK_STATUSES:
                raise ValueError(
                    f"unknown sink status {self.sink_status!r}: one of {', '.join(SINK_STATUSES)}"
                )

    def resolved(self, now: dt.datetime) -> EventFilter:
        """The same filter with relative times turned into database times."""
        return dataclasses.replace(
            self,
            since=resolve_time(self.since, now),
            until=resolve_time(self.until, now),
            done_before=resolve_time(self.done_before, now),
        )

    def params(self) -> dict[str, Any]:
        """Parameters for the ``event_filters`` fragment of ``outbox/sql/queries.sql``; call on a
        :meth:`resolved` filter."""
        cancelled = self.statuses == (CANCELLED,)  # done, with the *cancelled entry
        return {
            "ids": list(self.ids) if self.ids else None,
            "statuses": ["done"] if cancelled else list(self.statuses or ()) or None,
            "topic_re": topic_regex(self.topic) if self.topic else None,
            "key": self.key,
            "sink": CANCELLED_KEY if cancelled else self.sink,
            "sink_status": CANCELLED if cancelled else self.sink_status,
            "since": self.since,
            "until": self.until,
            "done_before": self.done_before,
            "live": self.live,
        }
