"""What an operator asks of the outbox table, and the repairs an operator makes.

``status`` summarises the table; ``list_events`` and ``get_event`` look at rows; ``plan_retry``,
``plan_replay`` and ``plan_purge`` count what a repair would touch, and :func:`apply` carries
it out in bounded batches, each its own statement (run it on an autocommit connection and
each batch is its own transaction). The CLI in :mod:`outbox.cli` prints what these return.

A plan fixes its selection when it is made: times are resolved against the database clock
then, and rows with a higher id than the highest matched (published later) are never touched.
Batches walk the primary key upwards, so a row is touched at most once even if a relay makes
it match again meanwhile (a replayed event that is delivered while the replay runs).

Repairs reset what they hand back to the relay: the event's claim counter (``attempts``),
and for retry the sinks that had not acknowledged (``failed``, ``retrying``) become
``retrying`` with no wait and zero attempts, keeping their last error; delivered sinks stay
delivered. Replay removes the chosen sink's delivery entry, or every entry.

The statements are the admin section of ``outbox/sql/queries.sql``. Which events a command
means (:class:`EventFilter`, and the durations and times it is parsed from) lives in
:mod:`outbox._event_filter`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import psycopg

from outbox import _queries
from outbox._event_filter import SINK_STATUSES as SINK_STATUSES
from outbox._event_filter import STATUSES as STATUSES
from outbox._event_filter import EventFilter as EventFilter
from outbox._event_filter import TimeBound as TimeBound
from outbox._event_filter import parse_duration as parse_duration
from outbox._event_filter import parse_time as parse_time
from outbox._event_filter import resolve_time as resolve_time
from outbox._event_filter import topic_regex as topic_regex
from outbox.sink_status import SinkStatus, Unrouted, statuses, unrouted
from outbox.store import RELAY_APPLICATION_PREFIX

Connection = psycopg.AsyncConnection[Any]
Action = Literal["retry", "replay", "purge"]

DEFAULT_BATCH = 1000
LIST_LIMIT = 50
PARKED_SHOWN = 50

# Each repair's statement in outbox/sql/queries.sql (admin section).
_REPAIRS: dict[Action, str] = {
    "retry": "retry_batch",
    "replay": "replay_batch",
    "purge": "purge_batch",
}


# -- records ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lag:
    due: int
    """Due pending events that a relay could claim now."""
    seconds: float
    """How long the longest-waiting of them has been due."""
    event_id: int
    topic: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ParkedKey:
    key: str
    failed_id: int
    topic: str
    error: str | None
    failed_at: dt.datetime | None
    waiting: int
    """Unfinished events of the key behind the failed one."""


@dataclasses.dataclass(frozen=True)
class FailingSink:
    sink: str
    retrying: int
    failed: int
    last_error: str | None
    last_event_id: int
    """The newest event with a retrying or failed delivery to this sink."""


@dataclasses.dataclass(frozen=True)
class DisabledSink:
    sink: str
    disabled_at: dt.datetime
    reason: str | None


@dataclasses.dataclass(frozen=True)
class RelayLeases:
    relay: str | None
    events: int
    lease_until: dt.datetime
    """When the last of its leases ends."""
    expired: int
    """Leases already past their end: the relay died or stalls; recovery will reclaim them."""


@dataclasses.dataclass(frozen=True)
class ConnectedRelay:
    relay: str
    connections: int
    """Its workers', listener's and upkeep's connections."""
    oldest_transaction: float | None
    """Seconds its oldest open transaction has run; None when none is open."""


@dataclasses.dataclass(frozen=True)
class FenceHolder:
    """The oldest transaction in the outbox's database: keyed events inserted after it
    began wait for it to end (decisions 2 and 9)."""

    pid: int | None
    """None for a prepared transaction (``COMMIT PREPARED`` or ``ROLLBACK PREPARED`` it)."""
    database: str | None
    user: str | None
    state: str | None
    """``active``, ``idle in transaction``, ... or ``prepared``; None if not visible to
    this role (pg_read_all_stats shows it)."""
    prepared: bool
    since: dt.datetime | None
    """When it began (prepared: when it was prepared)."""
    query_start: dt.datetime | None
    query: str | None
    """The start of its last query (prepared: its global id)."""
    age: float
    """Seconds since it began."""
    held_back: int
    """Due keyed events of this outbox waiting for it."""


@dataclasses.dataclass(frozen=True)
class Status:
    now: dt.datetime
    topics: dict[str, dict[str, int]]
    """Per topic, per status, how many events."""
    totals: dict[str, int]
    lag: Lag | None
    parked_keys: int
    parked: list[ParkedKey]
    """The first ``PARKED_SHOWN`` parked keys, oldest failure first."""
    failing_sinks: list[FailingSink]
    disabled_sinks: list[DisabledSink]
    relays: list[RelayLeases]
    connected: list[ConnectedRelay]
    fence_holder: FenceHolder | None
    """None when no transaction of this database holds a transaction id."""
    sinks: list[SinkStatus]
    """Every sink: its state, backlog, oldest waiting delivery, failures (outbox.sink_status)."""
    unrouted: Unrouted
    """Events no sink counts: not routed yet, or no subscription matched their topic."""


@dataclasses.dataclass(frozen=True)
class EventSummary:
    id: int
    topic: str
    key: str | None
    status: str
    attempts: int
    created_at: dt.datetime
    process_at: dt.datetime
    done_at: dt.datetime | None
    last_error: str | None
    sinks: dict[str, str]
    """Each sink's delivery status."""


@dataclasses.dataclass(frozen=True)
class EventDetail:
    id: int
    topic: str
    key: str | None
    status: str
    attempts: int
    process_at: dt.datetime
    locked_by: str | None
    locked_until: dt.datetime | None
    lease_token: str | None
    payload: Any
    headers: dict[str, Any]
    deliveries: dict[str, dict[str, Any]]
    errors: list[dict[str, Any]]
    last_error: str | None
    dedup_key: str | None
    txid: str
    created_at: dt.datetime
    done_at: dt.datetime | None
    crashes: int
    """Relays that died while delivering it alone (docs/decisions/0010-poison-events.md)."""
    suspect: bool
    """In flight when a relay died: retried alone."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """A repair, counted: ``matched`` rows, none with an id above ``upto``."""

    action: Action
    selection: EventFilter
    """Resolved: every time in it is absolute."""
    matched: int
    upto: int


# -- reading ---------------------------------------------------------------------------------


@functools.cache
def _now_statement() -> bytes:
    # The one statement over no table, so it needs no schema: rendered once, on first use.
    return _queries.render("database_now")


async def database_now(conn: Connection) -> dt.datetime:
    cursor = await conn.execute(_now_statement())
    record = await cursor.fetchone()
    assert record is not None
    moment: dt.datetime = record[0]
    return moment


async def status(
    conn: Connection, schema: str, configured: Mapping[str, str] | None = None
) -> Status:
    """The whole picture: counts, lag, parked keys, failing and disabled sinks, relays
    holding leases and relays connected, the transaction keyed events wait for, and each
    sink (those ``configured``, name to type, and any other the table names)."""
    now = await database_now(conn)
    topics, totals = await _counts(conn, schema)
    parked_total, parked = await parked_keys(conn, schema)
    return Status(
        now=now,
        topics=topics,
        totals=totals,
        lag=await _lag(conn, schema),
        parked_keys=parked_total,
        parked=parked,
        failing_sinks=[FailingSink(*r) for r in await _fetch(conn, schema, "failing_sinks")],
        disabled_sinks=await disabled_sinks(conn, schema),
        relays=await relay_leases(conn, schema),
        connected=await connected_relays(conn, schema),
        fence_holder=await fence_holder(conn, schema),
        sinks=await statuses(conn, schema, configured),
        unrouted=await unrouted(conn, schema),
    )


async def fence_holder(conn: Connection, schema: str) -> FenceHolder | None:
    """The oldest transaction of this database, which keyed events wait for (decision 9)."""
    found = await _fetch(conn, schema, "fence_holder")
    return FenceHolder(*found[0]) if found else None


async def connected_relays(conn: Connection, schema: str) -> list[ConnectedRelay]:
    """Relays connected to this database now, by name."""
    prefix = RELAY_APPLICATION_PREFIX
    found = await _fetch(
        conn, schema, "connected_relays", {"prefix": prefix, "prefix_length": len(prefix)}
    )
    return [ConnectedRelay(*record) for record in found]


async def _fetch(
    conn: Connection, schema: str, name: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(_queries.for_schema(schema)[name], params)
    return list(await cursor.fetchall())


async def _counts(
    conn: Connection, schema: str
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    topics: dict[str, dict[str, int]] = {}
    totals = dict.fromkeys(STATUSES, 0)
    for topic, event_status, count in await _fetch(conn, schema, "event_counts"):
        topics.setdefault(topic, dict.fromkeys(STATUSES, 0))[event_status] = count
        totals[event_status] += count
    return topics, totals


async def _lag(conn: Connection, schema: str) -> Lag | None:
    found = await _fetch(conn, schema, "event_lag")
    if not found:
        return None
    due, event_id, topic, _process_at, created_at, seconds = found[0]
    return Lag(due, max(0.0, seconds), event_id, topic, created_at)


async def relay_leases(conn: Connection, schema: str) -> list[RelayLeases]:
    """Relays holding leases now, with when their leases end."""
    return [RelayLeases(*record) for record in await _fetch(conn, schema, "relay_leases")]


async def parked_keys(
    conn: Connection, schema: str, limit: int = PARKED_SHOWN
) -> tuple[int, list[ParkedKey]]:
    """How many keys are parked, and the first ``limit`` of them, oldest failure first."""
    found = await _fetch(conn, schema, "parked_keys", {"limit": limit})
    total = found[0][-1] if found else 0
    return total, [ParkedKey(key, i, t, e, at, w) for key, i, t, e, at, w, _ in found]


async def list_events(
    conn: Connection,
    schema: str,
    selection: EventFilter,
    *,
    limit: int = LIST_LIMIT,
    before: int | None = None,
) -> list[EventSummary]:
    """Events matching ``selection``, newest first, at most ``limit``; with ``before``, only
    those with a lower id (the next page of a keyset pagination)."""
    resolved = selection.resolved(await database_now(conn))
    params = {**resolved.params(), "limit": limit, "before": before}
    found = await _fetch(conn, schema, "list_events", params)
    return [_summary(record) for record in found]


def _summary(record: tuple[Any, ...]) -> EventSummary:
    event_id, topic, key, state, attempts, created, process_at, done_at, error, sinks = record
    sink_states = {name: str(entry.get("status", "?")) for name, entry in sinks.items()}
    return EventSummary(
        event_id, topic, key, state, attempts, created, process_at, done_at, error, sink_states
    )


async def get_event(conn: Connection, schema: str, event_id: int) -> EventDetail | None:
    found = await _fetch(conn, schema, "show_event", {"id": event_id})
    return EventDetail(*found[0]) if found else None


async def disabled_sinks(conn: Connection, schema: str) -> list[DisabledSink]:
    """Sinks switched off by an operator or a 410 Gone."""
    return [DisabledSink(*record) for record in await _fetch(conn, schema, "disabled_sinks")]


# -- repairing -------------------------------------------------------------------------------


async def plan_retry(
    conn: Connection,
    schema: str,
    *,
    ids: Sequence[int] = (),
    topic: str | None = None,
    sink: str | None = None,
) -> Plan:
    """Failed events to hand back to the relay; with ``sink``, only those failed for it."""
    selection = EventFilter(
        ids=tuple(ids) or None,
        statuses=("failed",),
        topic=topic,
        sink=sink,
        sink_status="failed" if sink else None,
    )
    return await _plan(conn, schema, "retry", selection)


async def plan_replay(
    conn: Connection,
    schema: str,
    *,
    since: TimeBound,
    until: TimeBound | None = None,
    topic: str | None = None,
    sink: str | None = None,
) -> Plan:
    """Done events created in [since, until) to deliver again: to every subscribed sink, or
    with ``sink`` only to that one (and only events it had been delivered). Cancelled
    events never go out again."""
    selection = EventFilter(
        statuses=("done",),
        topic=topic,
        sink=sink,
        sink_status="delivered" if sink else None,
        since=since,
        until=until,
        live=True,
    )
    return await _plan(conn, schema, "replay", selection)


async def plan_purge(
    conn: Connection,
    schema: str,
    *,
    older_than: dt.timedelta,
    statuses: Sequence[str] = ("done",),
) -> Plan:
    """Finished events (``done``, ``failed`` or both) that finished more than ``older_than``
    ago. Deleting a failed event with a key unparks that key."""
    if not statuses or set(statuses) - {"done", "failed"}:
        raise ValueError("purge deletes done or failed events only")
    selection = EventFilter(statuses=tuple(statuses), done_before=older_than)
    return await _plan(conn, schema, "purge", selection)


async def _plan(conn: Connection, schema: str, action: Action, selection: EventFilter) -> Plan:
    resolved = selection.resolved(await database_now(conn))
    found = await _fetch(conn, schema, "match_repair", resolved.params())
    matched, upto = found[0]
    return Plan(action, resolved, matched, upto)


async def apply(
    conn: Connection,
    schema: str,
    plan: Plan,
    *,
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Carry out ``plan`` in batches of ``batch_size`` rows, one statement each; return how
    many rows were touched. ``on_batch`` gets the running total after every batch.

    On an autocommit connection each batch commits by itself: an interrupted repair keeps the
    batches already done, and running the same plan again continues where it stopped.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    statement = _queries.for_schema(schema)[_REPAIRS[plan.action]]
    params = {**plan.selection.params(), "upto": plan.upto, "limit": batch_size}
    touched, after = 0, 0
    while True:
        cursor = await conn.execute(statement, {**params, "after": after})
        ids = [record[0] for record in await cursor.fetchall()]
        if not ids:
            return touched
        touched += len(ids)
        after = max(ids)
        if on_batch is not None:
            on_batch(touched)
