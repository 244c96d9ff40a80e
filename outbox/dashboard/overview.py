"""What the overview page shows, read in one go: the admin functions the CLI's ``outbox status``
uses, minus its full count of the table, plus the figures only a page can show (the last hour
minute by minute, the table's health).

Every statement here reads the unfinished rows by their partial indexes, or the last hour of
done rows by ``outbox_events_done_idx``: the page costs as much with a million done rows kept
as with none (``bench/dashboard.py``). The statements are the dashboard section of
``outbox/sql/queries.sql``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import psycopg

from outbox import _queries, admin
from outbox.sink_status import SinkStatus, lag, statuses

Connection = psycopg.AsyncConnection[Any]

WINDOW_MINUTES = 60
PARKED_SHOWN = 20


@dataclasses.dataclass(frozen=True)
class TopicFigures:
    topic: str
    pending: int
    processing: int
    failed: int
    oldest_waiting_seconds: float | None
    """Age of the oldest pending or processing event; None when none is."""
    done_last_hour: int

    @property
    def backlog(self) -> int:
        return self.pending + self.processing


@dataclasses.dataclass(frozen=True)
class Minute:
    start: dt.datetime
    settled: int
    mean_lag: float
    max_lag: float


@dataclasses.dataclass(frozen=True)
class TableHealth:
    live_rows: int
    dead_rows: int
    last_autovacuum: dt.datetime | None
    last_vacuum: dt.datetime | None
    last_autoanalyze: dt.datetime | None
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class Overview:
    now: dt.datetime
    topics: list[TopicFigures]
    sinks: list[SinkStatus]
    lag: tuple[int, float]
    """Due events a relay could claim now, and how long the longest-waiting has been due."""
    minutes: list[Minute]
    """The last ``WINDOW_MINUTES`` minutes that settled anything, oldest first."""
    window_start: dt.datetime
    parked_keys: int
    parked: list[admin.ParkedKey]
    relays: list[admin.ConnectedRelay]
    leases: list[admin.RelayLeases]
    fence_holder: admin.FenceHolder | None
    health: TableHealth | None
    """None when the server keeps no statistics for the table (a role that cannot see them)."""

    @property
    def backlog(self) -> int:
        """Pending and processing events, every topic: what ``outbox status`` counts too."""
        return sum(topic.backlog for topic in self.topics)

    @property
    def failed(self) -> int:
        return sum(topic.failed for topic in self.topics)

    @property
    def held_sinks(self) -> list[SinkStatus]:
        return [sink for sink in self.sinks if sink.held]

    @property
    def settled_last_hour(self) -> int:
        return sum(minute.settled for minute in self.minutes)


async def overview(
    conn: Connection, schema: str, configured: Mapping[str, str | None] | None = None
) -> Overview:
    """Everything the overview page shows (about ten statements, none over the done rows)."""
    now = await admin.database_now(conn)
    parked_total, parked = await admin.parked_keys(conn, schema, PARKED_SHOWN)
    window_start = now.replace(second=0, microsecond=0) - dt.timedelta(minutes=WINDOW_MINUTES - 1)
    return Overview(
        now=now,
        topics=[TopicFigures(*r) for r in await _fetch(conn, schema, "dashboard_topics")],
        sinks=await statuses(conn, schema, configured),
        lag=await lag(conn, schema),
        minutes=await _minutes(conn, schema),
        window_start=window_start,
        parked_keys=parked_total,
        parked=parked,
        relays=await admin.connected_relays(conn, schema),
        leases=await admin.relay_leases(conn, schema),
        fence_holder=await admin.fence_holder(conn, schema),
        health=await _health(conn, schema),
    )


async def _minutes(conn: Connection, schema: str) -> list[Minute]:
    found = await _fetch(conn, schema, "dashboard_minutes", {"minutes": WINDOW_MINUTES})
    return [Minute(start, settled, mean, longest) for start, settled, mean, longest in found]


async def _health(conn: Connection, schema: str) -> TableHealth | None:
    found = await _fetch(conn, schema, "dashboard_table_health", {"schema": schema})
    return TableHealth(*found[0]) if found else None


async def _fetch(
    conn: Connection, schema: str, name: str, params: Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(_queries.for_schema(schema)[name], params)
    return list(await cursor.fetchall())
