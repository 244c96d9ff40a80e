"""Each sink as an operator sees it: its state and what waits for it (``outbox sinks list``,
the sinks of ``outbox status``, and the per-sink metrics of ``outbox relay --metrics-port``);
and the whole table's figures that ``outbox status`` shows and the metrics repeat
(:class:`EventFigures`).

A sink's figures come from its deliveries on the unfinished events: the **backlog** is the
events whose delivery to it is not finished (``waiting``: held, or behind an earlier event of
its key; or ``retrying``), the **oldest** is the age of the oldest of them, **failed** the
events whose delivery to it failed. An event never claimed has no deliveries yet: its sinks
are not known, so it counts for no sink and is reported apart (:class:`Unrouted`), as are the
events whose topic matched no subscription, settled ``done`` with nowhere to go.

The statements are in the admin section of ``outbox/sql/queries.sql`` (``event_figures``
at the end of the relay section), the same that ``outbox status`` runs: a gauge never
disagrees with the status by a definition of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

import psycopg

from outbox import _queries
from outbox.store import driver_errors

Connection = psycopg.AsyncConnection[Any]
State = Literal["active", "paused", "disabled"]


@dataclasses.dataclass(frozen=True)
class SinkStatus:
    name: str
    type: str | None
    """The sink's type in the configuration; None for a sink it does not name (only the
    switches or earlier deliveries do)."""
    state: State
    """``disabled`` (by an operator or a ``410 Gone``) wins over ``paused``: enabling it is
    what an operator must do first."""
    reason: str | None
    since: dt.datetime | None
    """When the sink was paused or disabled (the state shown); None while active."""
    paused: bool
    disabled: bool
    backlog: int
    """Unfinished events whose delivery to this sink is waiting or retrying."""
    oldest_waiting_seconds: float | None
    """Age of the oldest event of the backlog; None when the backlog is empty."""
    failed: int
    """Unfinished events whose delivery to this sink failed (the event failed, or waits for
    other sinks)."""
    last_error: str | None
    """The error of its delivery on the newest unfinished event that has one."""

    @property
    def held(self) -> bool:
        """Paused or disabled: its deliveries wait, none attempted."""
        return self.paused or self.disabled


@dataclasses.dataclass(frozen=True)
class Unrouted:
    not_routed: int
    """Pending events never claimed: which sinks they go to is not known yet."""
    no_subscription: int
    """Done events whose topic matched no subscription, among those retention keeps."""
    no_subscription_last_hour: int
    """The same, settled in the last hour."""


@dataclasses.dataclass(frozen=True)
class SinksReport:
    sinks: list[SinkStatus]
    unrouted: Unrouted


@dataclasses.dataclass(frozen=True)
class EventFigures:
    """The table's figures as ``outbox status`` reports them."""

    pending: int
    processing: int
    failed: int
    due: int
    """Pending events a relay could claim now (the status's lag line)."""
    lag_seconds: float
    """How long the longest-waiting of the ``due`` events has been due; 0 when none is."""
    parked_keys: int
    """Keys whose oldest unfinished event failed: the events behind it wait for an operator."""


@dataclasses.dataclass(frozen=True)
class _Figures:
    backlog: int = 0
    oldest_waiting_seconds: float | None = None
    failed: int = 0
    last_error: str | None = None


@dataclasses.dataclass(frozen=True)
class _Switch:
    paused_at: dt.datetime | None = None
    paused_reason: str | None = None
    disabled_at: dt.datetime | None = None
    disabled_reason: str | None = None


async def sinks(
    conn: Connection, schema: str, configured: Mapping[str, str | None] | None = None
) -> SinksReport:
    """Every sink: those ``configured`` (name to type), those the switches name, and those
    with deliveries on unfinished events; by name. Then the events no sink counts."""
    return SinksReport(await statuses(conn, schema, configured), await unrouted(conn, schema))


async def statuses(
    conn: Connection, schema: str, configured: Mapping[str, str | None] | None = None
) -> list[SinkStatus]:
    """Each sink's state and figures, as :func:`sinks` lists them (two statements)."""
    types = dict(configured or {})
    figures = {row[0]: _Figures(*row[1:]) for row in await _fetch(conn, schema, "sink_figures")}
    switches = {row[0]: _Switch(*row[1:]) for row in await _fetch(conn, schema, "sink_switches")}
    names = sorted(types.keys() | figures.keys() | switches.keys())
    return [
        _status(name, types.get(name), figures.get(name, _Figures()), switches.get(name))
        for name in names
    ]


async def event_figures(conn: Connection, schema: str) -> EventFigures:
    """The counts, lag and parked keys of ``outbox status``, without its full scan of the
    table (three statements, none of which reads the done rows)."""
    pending, processing, failed = (await _fetch(conn, schema, "event_figures"))[0]
    due, seconds = await lag(conn, schema)
    parked = await _fetch(conn, schema, "parked_keys", {"limit": 1})
    return EventFigures(
        pending=pending,
        processing=processing,
        failed=failed,
        due=due,
        lag_seconds=seconds,
        parked_keys=parked[0][-1] if parked else 0,
    )


async def lag(conn: Connection, schema: str) -> tuple[int, float]:
    """The due events a relay could claim now, and how long the longest-waiting of them has
    been due (0 when none is): the lag line of ``outbox status``."""
    found = await _fetch(conn, schema, "event_lag")
    return (int(found[0][0]), max(0.0, float(found[0][-1]))) if found else (0, 0.0)


LAG_COUNT_CAP = 10_000
"""How far a relay's lag line counts the due events (shown as ``10000+``)."""


async def relay_lag(conn: Connection, schema: str) -> tuple[int, float]:
    """:func:`lag` as a relay logs it every round: the due events counted up to
    :data:`LAG_COUNT_CAP`, so that a large backlog is not counted again and again."""
    found = await _fetch(conn, schema, "relay_lag", {"cap": LAG_COUNT_CAP})
    return int(found[0][0]), max(0.0, float(found[0][1]))


async def unrouted(conn: Connection, schema: str) -> Unrouted:
    """The events no sink counts: not routed yet, and settled with no subscribed sink."""
    found = await _fetch(conn, schema, "unrouted_events")
    return Unrouted(*found[0])


def _status(name: str, type_: str | None, figures: _Figures, switch: _Switch | None) -> SinkStatus:
    switch = switch or _Switch()
    state: State = "active"
    reason, since = None, None
    if switch.disabled_at is not None:
        state, reason, since = "disabled", switch.disabled_reason, switch.disabled_at
    elif switch.paused_at is not None:
        state, reason, since = "paused", switch.paused_reason, switch.paused_at
    oldest = figures.oldest_waiting_seconds
    return SinkStatus(
        name=name,
        type=type_,
        state=state,
        reason=reason,
        since=since,
        paused=switch.paused_at is not None,
        disabled=switch.disabled_at is not None,
        backlog=figures.backlog,
        oldest_waiting_seconds=None if oldest is None else max(0.0, oldest),
        failed=figures.failed,
        last_error=figures.last_error,
    )


async def _fetch(
    conn: Connection, schema: str, name: str, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    with driver_errors():
        cursor = await conn.execute(_queries.for_schema(schema)[name], params)
        return list(await cursor.fetchall())
