"""Per-sink rate limits held across every relay: one token bucket per sink, in the database.

``rate_limit = "100/s"`` on ``[sinks.NAME]`` (also ``/m`` or ``/min``, and ``/h``) caps how
many events that sink is called with, by all the relays on the table together. The bucket
is in the sink's ``outbox_sinks`` row (migration 0007): before a batch calls the sink, the
relay asks for as many tokens as it has events for it, in one statement that refills the
bucket by the time elapsed since its last refill, at the rate, and grants
min(asked, whole tokens available). The bucket holds at most one second's worth of the
rate, and at least one event: that is the burst a sink sees after a quiet spell.

Events not granted are not called: they wait (state ``waiting``), counting no attempt, like
events waiting for a paused sink, until the bucket will have refilled enough for them (at
most half a burst's worth); then a claim takes them again.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping

from outbox import _queries
from outbox.exceptions import DatabaseError
from outbox.own_connection import OwnConnection
from outbox.store import Connector, describe, driver_errors

logger = logging.getLogger(__name__)

_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
MAX_PER_SECOND = 1_000_000.0
UNAVAILABLE_WAIT = 1.0
"""Seconds a limited sink's events wait when its bucket cannot be reached (the database is
failing): never more calls than the rate, at the price of a late delivery."""


@dataclasses.dataclass(frozen=True)
class Rate:
    """A rate limit: ``per_second`` events, as written in ``text``."""

    per_second: float
    text: str

    @property
    def burst(self) -> int:
        """The most tokens the bucket holds: one second's worth, at least one event."""
        return max(int(self.per_second), 1)


def parse_rate(text: str) -> Rate:
    """``"100/s"``, ``"6000/min"`` (or ``/m``), ``"10/h"`` as a :class:`Rate`; ValueError
    for anything else (another unit, no count, a count of zero)."""
    match = _RATE.fullmatch(text)
    if match is None or match[2] not in _UNIT_SECONDS:
        raise ValueError(
            f"invalid rate {text!r}: write COUNT/UNIT with UNIT one of s, m (or min), h, "
            'e.g. "100/s" or "6000/min"'
        )
    per_second = float(match[1]) / _UNIT_SECONDS[match[2]]
    if not 0 < per_second <= MAX_PER_SECOND:
        raise ValueError(
            f"invalid rate {text!r}: more than 0 and at most {MAX_PER_SECOND:.0f} events/s "
            "(use /s, /m or /min, /h)"
        )
    return Rate(per_second, text.strip())


@dataclasses.dataclass(frozen=True)
class Grant:
    """What a take came to: ``granted`` events may be called now; the others wait
    ``wait_seconds``."""

    granted: int
    wait_seconds: float


class RateLimiter:
    """The buckets of a relay's rate-limited sinks, taken on one connection of its own
    (autocommit: a bucket's row is locked for one statement, never for a batch)."""

    def __init__(self, schema: str, connector: Connector, rates: Mapping[str, Rate]) -> None:
        self._take = _queries.for_schema(schema)["take_sink_tokens"]
        self._own = OwnConnection(connector)
        self._rates = dict(rates)

    def limits(self, sink: str) -> bool:
        return sink in self._rates

    async def take(self, sink: str, asked: int) -> Grant:
        """Take up to ``asked`` tokens from ``sink``'s bucket. When the database cannot be
        reached, nothing is granted and the events wait a second."""
        rate = self._rates[sink]
        params = {"name": sink, "asked": asked, "burst": rate.burst, "per_second": rate.per_second}
        try:
            async with self._own.use() as conn:
                with driver_errors():
                    cursor = await conn.execute(self._take, params)
                    record = await cursor.fetchone()
        except DatabaseError as error:
            logger.warning(
                "rate limit of sink %s not reached (%s): its events wait",
                sink,
                describe(error),
                extra={"sink": sink},
            )
            return Grant(0, UNAVAILABLE_WAIT)
        assert record is not None
        granted, tokens = int(record[0]), float(record[1])
        # Look again once the bucket holds half a burst: waiting for a full one would waste
        # what refills while the claim that takes them is on its way.
        wanted = min(asked - granted, max(rate.burst // 2, 1))
        return Grant(granted, max(wanted - tokens, 0.0) / rate.per_second)

    async def aclose(self) -> None:
        await self._own.aclose()
