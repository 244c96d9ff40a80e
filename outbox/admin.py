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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql

from outbox.routing import validate_pattern
from outbox.store import RELAY_APPLICATION_PREFIX

Connection = psycopg.AsyncConnection[Any]
Action = Literal["retry", "replay", "purge"]

DEFAULT_BATCH = 1000
LIST_LIMIT = 50
PARKED_SHOWN = 50
STATUSES = ("pending", "processing", "done", "failed")
SINK_STATUSES = ("delivered", "retrying", "failed")

# -- SQL -------------------------------------------------------------------------------------
#
# {table} and {sinks} are the schema's outbox_events and outbox_sinks, quoted by psycopg.sql.
# {filters} is _FILTERS: every condition is optional (a NULL parameter switches it off), so
# each statement stays one fixed text. Postgres plans the first executions with the actual
# values, where a switched-off condition folds away.

# The selection shared by listing and repairs. A topic pattern arrives as a regular
# expression matched against '.' || topic (see topic_regex).
_FILTERS = """
    (%(ids)s::bigint[] IS NULL OR e.id = ANY(%(ids)s::bigint[]))
    AND (%(statuses)s::text[] IS NULL OR e.status = ANY(%(statuses)s::text[]))
    AND (%(topic_re)s::text IS NULL OR '.' || e.topic ~ %(topic_re)s::text)
    AND (%(key)s::text IS NULL OR e.key = %(key)s::text)
    AND (%(sink)s::text IS NULL OR e.deliveries ? %(sink)s::text)
    AND (%(sink_status)s::text IS NULL
         OR e.deliveries -> %(sink)s::text ->> 'status' = %(sink_status)s::text)
    AND (%(since)s::timestamptz IS NULL OR e.created_at >= %(since)s::timestamptz)
    AND (%(until)s::timestamptz IS NULL OR e.created_at < %(until)s::timestamptz)
    AND (%(done_before)s::timestamptz IS NULL OR e.done_at < %(done_before)s::timestamptz)
"""

# The database clock: relative times (10m, 7d) are measured on it, never on this machine's.
_NOW = "SELECT now()"

# Events per topic and status. A full scan: the one statement here whose cost grows with the
# number of done rows.
_COUNTS = """
SELECT topic, status, count(*) FROM {table} GROUP BY topic, status ORDER BY topic, status
"""

# The lag: the due pending event that has waited longest, leaving out rows parked behind a
# failed event of their key, which wait for an operator and not for a relay
# (outbox_events_pending_idx; outbox_events_key_idx for the parked check).
_LAG = """
SELECT count(*) OVER (), e.id, e.topic, e.process_at, e.created_at,
       EXTRACT(EPOCH FROM now() - e.process_at)::float8
FROM {table} AS e
WHERE e.status = 'pending' AND e.process_at <= now()
  AND (e.key IS NULL OR NOT EXISTS (
        SELECT 1 FROM {table} AS f
        WHERE f.key = e.key AND f.id < e.id AND f.status = 'failed'))
ORDER BY e.process_at, e.id
LIMIT 1
"""

# Parked keys: keys whose oldest unfinished event failed, with how many events wait behind it
# and how many keys are parked in all (outbox_events_key_idx).
_PARKED = """
WITH heads AS (
    SELECT DISTINCT ON (e.key) e.key, e.id, e.topic, e.status, e.last_error, e.done_at
    FROM {table} AS e
    WHERE e.key IS NOT NULL AND e.status <> 'done'
    ORDER BY e.key, e.id
)
SELECT h.key, h.id, h.topic, h.last_error, h.done_at,
       (SELECT count(*) FROM {table} AS w
        WHERE w.key = h.key AND w.id > h.id AND w.status <> 'done'),
       count(*) OVER ()
FROM heads AS h
WHERE h.status = 'failed'
ORDER BY h.id
LIMIT %(limit)s
"""

# Sinks with deliveries that have not succeeded, on unfinished events: how many events each
# waits to retry or has given up on, and the error on the newest such event. Scans the
# unfinished rows (pending and processing by their partial indexes, failed by the table).
_FAILING_SINKS = """
SELECT d.key,
       count(*) FILTER (WHERE d.value ->> 'status' = 'retrying'),
       count(*) FILTER (WHERE d.value ->> 'status' = 'failed'),
       (array_agg(d.value ->> 'last_error' ORDER BY e.id DESC))[1],
       max(e.id)
FROM {table} AS e, jsonb_each(e.deliveries) AS d
WHERE e.status IN ('pending', 'processing', 'failed')
  AND d.value ->> 'status' IN ('retrying', 'failed')
GROUP BY d.key
ORDER BY d.key
"""

# Sinks switched off by an operator or a 410 Gone (outbox_sinks, a handful of rows).
_DISABLED = """
SELECT name, disabled_at, disabled_reason FROM {sinks}
WHERE disabled_at IS NOT NULL ORDER BY name
"""

# Relays holding leases now: rows in flight per relay, when their leases end, how many have
# already expired (outbox_events_processing_idx).
_RELAYS = """
SELECT locked_by, count(*), max(locked_until), count(*) FILTER (WHERE locked_until < now())
FROM {table}
WHERE status = 'processing'
GROUP BY locked_by
ORDER BY locked_by
"""

# Relays connected to this database now, by name (pg_stat_activity: a role sees the state
# of its own sessions, and of others' with pg_read_all_stats): their connections, and the
# age of the oldest transaction among them (in claim mode "lock", a batch in flight).
_CONNECTED = """
SELECT substr(application_name, %(prefix_length)s + 1), count(*),
       EXTRACT(EPOCH FROM now() - min(xact_start))::float8
FROM pg_stat_activity
WHERE datname = current_database() AND starts_with(application_name, %(prefix)s)
  AND pid <> pg_backend_pid()
GROUP BY 1
ORDER BY 1
"""

# Events matching the filters, newest first (primary key, scanned backwards).
_LIST = """
SELECT e.id, e.topic, e.key, e.status, e.attempts, e.created_at, e.process_at, e.done_at,
       e.last_error, e.deliveries
FROM {table} AS e
WHERE {filters}
ORDER BY e.id DESC
LIMIT %(limit)s
"""

# One event, every column (primary key).
_SHOW = """
SELECT id, topic, key, status, attempts, process_at, locked_by, locked_until,
       lease_token::text, payload, headers, deliveries, errors, last_error, dedup_key,
       txid::text, created_at, done_at
FROM {table}
WHERE id = %(id)s
"""

# How many rows a repair would touch, and the highest id among them: the plan's upper bound.
_MATCH = """
SELECT count(*), COALESCE(max(e.id), 0) FROM {table} AS e WHERE {filters}
"""

# The next batch of a plan: matching rows above the last batch, up to the plan's bound, in
# id order (primary key), locked so that a relay settling one of them meanwhile is waited for
# and the row re-checked.
_BATCH = """
SELECT e.id FROM {table} AS e
WHERE e.id > %(after)s AND e.id <= %(upto)s AND {filters}
ORDER BY e.id
LIMIT %(limit)s
FOR UPDATE
"""

# Retry failed events: pending again, due now, claim counter reset. Without a sink every sink
# that had not acknowledged starts over; with one, only that sink. Delivered sinks stay
# delivered, so they never see the event twice (primary key, via the batch).
_RETRY = (
    """
WITH batch AS ("""
    + _BATCH
    + """)
UPDATE {table} AS e
SET status = 'pending', process_at = now(), done_at = NULL, attempts = 0,
    deliveries = CASE
        WHEN %(sink)s::text IS NULL THEN COALESCE((
            SELECT jsonb_object_agg(d.key, CASE
                WHEN d.value ->> 'status' IN ('failed', 'retrying') THEN jsonb_build_object(
                    'status', 'retrying', 'attempts', 0, 'last_error', d.value -> 'last_error')
                ELSE d.value END)
            FROM jsonb_each(e.deliveries) AS d), jsonb_build_object())
        ELSE jsonb_set(e.deliveries, ARRAY[%(sink)s::text], jsonb_build_object(
            'status', 'retrying', 'attempts', 0,
            'last_error', e.deliveries -> %(sink)s::text -> 'last_error'))
    END
FROM batch
WHERE e.id = batch.id
RETURNING e.id
"""
)

# Replay done events: pending again, due now, claim counter reset, and the chosen sink's
# delivery entry removed (or all entries), so the relay delivers there again (primary key).
_REPLAY = (
    """
WITH batch AS ("""
    + _BATCH
    + """)
UPDATE {table} AS e
SET status = 'pending', process_at = now(), done_at = NULL, attempts = 0,
    deliveries = CASE
        WHEN %(sink)s::text IS NULL THEN jsonb_build_object()
        ELSE e.deliveries - %(sink)s::text
    END
FROM batch
WHERE e.id = batch.id
RETURNING e.id
"""
)

# Delete finished events (primary key, via the batch).
_PURGE = (
    """
WITH batch AS ("""
    + _BATCH
    + """)
DELETE FROM {table} AS e
USING batch
WHERE e.id = batch.id
RETURNING e.id
"""
)

_REPAIRS = {"retry": _RETRY, "replay": _REPLAY, "purge": _PURGE}


def _render(template: str, schema: str) -> sql.Composed:
    return sql.SQL(template).format(
        table=sql.Identifier(schema, "outbox_events"),
        sinks=sql.Identifier(schema, "outbox_sinks"),
        filters=sql.SQL(_FILTERS),
    )


# -- parsing ---------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

TimeBound = dt.datetime | dt.timedelta
"""An absolute time, or how long before the database's ``now()``."""


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``10m``, ``2h``, ``7d``, ``1w`` or a sum like ``1h30m``; ``ValueError`` if not."""
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit s, m, h, d or w (10m, 2h, 7d)"
        )
    return dt.timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))


def parse_time(text: str) -> TimeBound:
    """An ISO 8601 date or datetime (UTC when no offset is given), ``now``, or a duration
    meaning that long ago (``10m``, ``7d``)."""
    stripped = text.strip()
    if stripped.lower() == "now":
        return dt.timedelta(0)
    try:
        return parse_duration(stripped)
    except ValueError:
        pass
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


# -- records ---------------------------------------------------------------------------------


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

    def __post_init__(self) -> None:
        if self.topic is not None:
            validate_pattern(self.topic)
        for status in self.statuses or ():
            if status not in STATUSES:
                raise ValueError(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
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
        """Parameters for ``_FILTERS``; call on a :meth:`resolved` filter."""
        return {
            "ids": list(self.ids) if self.ids else None,
            "statuses": list(self.statuses) if self.statuses else None,
            "topic_re": topic_regex(self.topic) if self.topic else None,
            "key": self.key,
            "sink": self.sink,
            "sink_status": self.sink_status,
            "since": self.since,
            "until": self.until,
            "done_before": self.done_before,
        }


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


@dataclasses.dataclass(frozen=True)
class Plan:
    """A repair, counted: ``matched`` rows, none with an id above ``upto``."""

    action: Action
    selection: EventFilter
    """Resolved: every time in it is absolute."""
    matched: int
    upto: int


# -- reading ---------------------------------------------------------------------------------


async def database_now(conn: Connection) -> dt.datetime:
    cursor = await conn.execute(_NOW)
    record = await cursor.fetchone()
    assert record is not None
    moment: dt.datetime = record[0]
    return moment


async def status(conn: Connection, schema: str) -> Status:
    """The whole picture: counts, lag, parked keys, failing and disabled sinks, relays
    holding leases and relays connected."""
    now = await database_now(conn)
    topics, totals = await _counts(conn, schema)
    parked_total, parked = await _parked(conn, schema)
    return Status(
        now=now,
        topics=topics,
        totals=totals,
        lag=await _lag(conn, schema),
        parked_keys=parked_total,
        parked=parked,
        failing_sinks=[FailingSink(*r) for r in await _fetch(conn, schema, _FAILING_SINKS)],
        disabled_sinks=await disabled_sinks(conn, schema),
        relays=[RelayLeases(*r) for r in await _fetch(conn, schema, _RELAYS)],
        connected=await _connected(conn, schema),
    )


async def _connected(conn: Connection, schema: str) -> list[ConnectedRelay]:
    prefix = RELAY_APPLICATION_PREFIX
    found = await _fetch(conn, schema, _CONNECTED, {"prefix": prefix, "prefix_length": len(prefix)})
    return [ConnectedRelay(*record) for record in found]


async def _fetch(
    conn: Connection, schema: str, template: str, params: dict[str, Any] | None = None
) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(_render(template, schema), params)
    return list(await cursor.fetchall())


async def _counts(
    conn: Connection, schema: str
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    topics: dict[str, dict[str, int]] = {}
    totals = dict.fromkeys(STATUSES, 0)
    for topic, event_status, count in await _fetch(conn, schema, _COUNTS):
        topics.setdefault(topic, dict.fromkeys(STATUSES, 0))[event_status] = count
        totals[event_status] += count
    return topics, totals


async def _lag(conn: Connection, schema: str) -> Lag | None:
    found = await _fetch(conn, schema, _LAG)
    if not found:
        return None
    due, event_id, topic, _process_at, created_at, seconds = found[0]
    return Lag(due, max(0.0, seconds), event_id, topic, created_at)


async def _parked(conn: Connection, schema: str) -> tuple[int, list[ParkedKey]]:
    found = await _fetch(conn, schema, _PARKED, {"limit": PARKED_SHOWN})
    total = found[0][-1] if found else 0
    return total, [ParkedKey(key, i, t, e, at, w) for key, i, t, e, at, w, _ in found]


async def list_events(
    conn: Connection, schema: str, selection: EventFilter, *, limit: int = LIST_LIMIT
) -> list[EventSummary]:
    """Events matching ``selection``, newest first, at most ``limit``."""
    resolved = selection.resolved(await database_now(conn))
    found = await _fetch(conn, schema, _LIST, {**resolved.params(), "limit": limit})
    return [_summary(record) for record in found]


def _summary(record: tuple[Any, ...]) -> EventSummary:
    event_id, topic, key, event_status, attempts, created, process_at, done_at, error, sinks = (
        record
    )
    return EventSummary(
        event_id,
        topic,
        key,
        event_status,
        attempts,
        created,
        process_at,
        done_at,
        error,
        {name: str(state.get("status", "?")) for name, state in sinks.items()},
    )


async def get_event(conn: Connection, schema: str, event_id: int) -> EventDetail | None:
    found = await _fetch(conn, schema, _SHOW, {"id": event_id})
    return EventDetail(*found[0]) if found else None


async def disabled_sinks(conn: Connection, schema: str) -> list[DisabledSink]:
    """Sinks switched off by an operator or a 410 Gone."""
    return [DisabledSink(*record) for record in await _fetch(conn, schema, _DISABLED)]


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
    with ``sink`` only to that one (and only events it had been delivered)."""
    selection = EventFilter(
        statuses=("done",),
        topic=topic,
        sink=sink,
        sink_status="delivered" if sink else None,
        since=since,
        until=until,
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
    found = await _fetch(conn, schema, _MATCH, resolved.params())
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
    statement = _render(_REPAIRS[plan.action], schema)
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
