"""Writing events into the outbox, in the caller's transaction.

Everything is validated before anything is written: a refused event raises
:class:`~outbox.PublishError` and leaves the caller's transaction untouched.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import json.encoder
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from outbox._identifiers import validate_identifier
from outbox.exceptions import PublishError

if TYPE_CHECKING:
    SyncTarget = Session | Connection | psycopg.Connection[Any]
    AsyncTarget = AsyncSession | AsyncConnection | psycopg.AsyncConnection[Any]

__all__ = ["OutboxEvent", "configure", "publish"]

TOPIC_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
MAX_TOPIC_LENGTH = 255
MAX_KEY_LENGTH = 255
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_json_string = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept
# Far enough for any schedule, near enough that now() + delay stays a valid timestamptz.
MAX_DELAY = dt.timedelta(days=1000 * 365)


@dataclasses.dataclass
class _Settings:
    schema: str = "public"
    channel: str = "outbox"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES


_settings = _Settings()


def configure(
    *,
    schema: str | None = None,
    channel: str | None = None,
    max_payload_bytes: int | None = None,
) -> None:
    """Set the outbox schema, the channel that wakes relays (their ``[relay] channel``) and
    the payload size cap used by :func:`publish` and the session hook."""
    if schema is not None:
        _settings.schema = validate_identifier(schema, "schema")
    if channel is not None:
        _settings.channel = validate_identifier(channel, "channel")
    if max_payload_bytes is not None:
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        _settings.max_payload_bytes = max_payload_bytes


@dataclasses.dataclass(eq=False)
class OutboxEvent:
    """An event handed to the outbox.

    ``id`` is set once the event is written: at once by :func:`publish` on a connection, by
    the next flush (or the commit) for :func:`publish` on a session and for
    :meth:`EventSource.record_event`. ``duplicate`` is then ``True`` when an event with the
    same ``dedup_key`` already existed, in which case nothing was written and ``id`` is the
    existing event's.
    """

    topic: str
    payload: Any
    key: str | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    process_at: dt.datetime | None = None
    delay: float | None = None
    dedup_key: str | None = None
    id: int | None = None
    duplicate: bool | None = None
    payload_json: str = dataclasses.field(default="", repr=False)


def prepare_event(
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    process_at: dt.datetime | None = None,
    delay: dt.timedelta | float | None = None,
    dedup_key: str | None = None,
) -> OutboxEvent:
    """Validate one event and serialise its payload; raise :class:`PublishError` if invalid."""
    _check_topic(topic)
    _check_optional_text(key, "key", MAX_KEY_LENGTH)
    _check_optional_text(dedup_key, "dedup_key", MAX_KEY_LENGTH)
    return OutboxEvent(
        topic=topic,
        payload=payload,
        key=key,
        headers=_with_trace_context(_check_headers(headers)),
        process_at=_check_process_at(process_at, delay),
        delay=_check_delay(delay),
        dedup_key=dedup_key,
        payload_json=_serialise_payload(payload, topic),
    )


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str):
        raise PublishError(f"topic must be a str, got {type(topic).__name__}")
    if not topic:
        raise PublishError("topic must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise PublishError(f"topic is {len(topic)} characters; at most {MAX_TOPIC_LENGTH}")
    if not TOPIC_PATTERN.fullmatch(topic):
        raise PublishError(
            f"invalid topic {topic!r}: dot-separated segments of letters, digits, '_' and '-' "
            "(for example 'order.confirmed')"
        )


def _check_optional_text(value: object, name: str, max_length: int) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise PublishError(f"{name} must be a str or None, got {type(value).__name__}")
    if not value:
        raise PublishError(f"{name} must not be empty (pass None for no {name})")
    if len(value) > max_length:
        raise PublishError(f"{name} is {len(value)} characters; at most {max_length}")
    _check_text(value, name)


def _check_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise PublishError(f"headers must be a mapping of str to str, got {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not name:
            raise PublishError(f"header name {name!r} must be a non-empty str")
        if not isinstance(value, str):
            raise PublishError(f"header {name!r} must be a str, got {type(value).__name__}")
        _check_text(name, "header name")
        _check_text(value, f"header {name!r}")
    return dict(headers)


_TRACE_HEADERS = ("traceparent", "tracestate")


def _with_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """Add the current OpenTelemetry trace context (``traceparent``, ``tracestate``) when
    OpenTelemetry is installed and a span is active; headers given by the caller win."""
    propagation = _trace_propagation()
    if propagation is None:
        return headers
    current_context, inject = propagation
    if not current_context() or any(name in headers for name in _TRACE_HEADERS):
        return headers  # an empty context has nothing to propagate
    carrier: dict[str, str] = {}
    inject(carrier)
    return {**carrier, **headers} if carrier else headers


@functools.cache
def _trace_propagation() -> tuple[Callable[[], Any], Callable[[dict[str, str]], None]] | None:
    """OpenTelemetry's current-context getter and injector, if it is installed."""
    try:
        from opentelemetry import context, propagate
    except ImportError:
        return None
    return context.get_current, propagate.inject


def _check_process_at(process_at: object, delay: object) -> dt.datetime | None:
    if process_at is None:
        return None
    if delay is not None:
        raise PublishError("pass process_at or delay, not both")
    if not isinstance(process_at, dt.datetime):
        raise PublishError(f"process_at must be a datetime, got {type(process_at).__name__}")
    if process_at.tzinfo is None or process_at.utcoffset() is None:
        raise PublishError("process_at must be timezone-aware (for example datetime.now(UTC))")
    return process_at


def _check_delay(delay: object) -> float | None:
    if delay is None:
        return None
    if isinstance(delay, dt.timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        seconds = float(delay)
    else:
        raise PublishError(f"delay must be a timedelta or seconds, got {type(delay).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise PublishError(f"delay must be a finite, non-negative duration, got {delay!r}")
    if seconds > MAX_DELAY.total_seconds():
        raise PublishError(f"delay must be at most {MAX_DELAY.days} days, got {delay!r}")
    return seconds


def _serialise_payload(payload: Any, topic: str) -> str:
    try:
        _check_json_value(payload, "payload")
        text = _ENCODER.encode(payload)
    except PublishError:
        raise
    except RecursionError:
        raise PublishError(f"payload of {topic!r} is nested too deeply") from None
    except ValueError as error:  # for example an int with more digits than str() allows
        raise PublishError(f"payload of {topic!r} cannot be serialised: {error}") from error
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > _settings.max_payload_bytes:
        raise PublishError(
            f"payload of {topic!r} is {size} bytes; the cap is {_settings.max_payload_bytes}"
        )
    return text


def _mapping_as_dict(value: object) -> dict[str, Any]:
    # json serialises dict only; _check_json_value has already accepted any Mapping.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# One encoder for every payload: json.dumps() with options builds a new one per call.
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_mapping_as_dict
)


def _check_text(value: str, what: str) -> None:
    """Refuse strings that Postgres text and jsonb cannot store."""
    if "\x00" in value:
        raise PublishError(f"{what} contains a NUL character, which Postgres cannot store")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PublishError(f"{what} contains a lone surrogate, which is not UTF-8") from None


def _check_json_value(value: Any, path: str) -> None:
    """Refuse what JSON or jsonb cannot hold exactly, naming where it is."""
    if isinstance(value, Mapping):
        _check_json_object(value, path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            # Plain leaves are checked inline: building their path costs more than the check.
            if not _is_plain_leaf(item):
                _check_json_value(item, f"{path}[{index}]")
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PublishError(f"{path} is {value!r}, which JSON cannot represent")
    elif not (value is None or isinstance(value, int)):
        raise PublishError(f"{path} is a {type(value).__name__}, which is not JSON-serialisable")


def _check_json_object(value: Mapping[Any, Any], path: str) -> None:
    for item_key, item in value.items():
        if not isinstance(item_key, str):
            raise PublishError(f"{path} has a key {item_key!r}; JSON object keys are str")
        if not _is_plain_leaf(item_key):
            _check_text(item_key, f"{path} key")
        if not _is_plain_leaf(item):
            _check_json_value(item, f"{path}[{item_key!r}]")


def _is_plain_leaf(value: Any) -> bool:
    """True for the common values that need no further check: ASCII text without NUL,
    None, bool, int and finite float (exact types only)."""
    kind = type(value)
    if kind is str:
        return value.isascii() and "\x00" not in value
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is int or kind is bool


# -- writing -----------------------------------------------------------------------------

# Inserts a batch of events given as one JSON array, in order, skipping duplicates of a
# dedup_key (served by outbox_events_dedup_key_idx).
_INSERT_ROWS = """
INSERT INTO {table} (topic, key, payload, headers, process_at, dedup_key)
SELECT r.topic, r.key, r.payload, COALESCE(r.headers, '{{}}'::jsonb),
       COALESCE(r.process_at, now() + make_interval(secs => COALESCE(r.delay, 0))),
       r.dedup_key
FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS r(
    n int, topic text, key text, payload jsonb, headers jsonb,
    process_at timestamptz, delay float8, dedup_key text)
ORDER BY r.n
ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
RETURNING id, dedup_key
"""

# The same, and a NOTIFY on the relays' channel if anything was inserted: at most one per
# statement, and Postgres folds a transaction's identical notifications into one, sent at
# commit (docs/decisions/0008). Ids in insert order.
_INSERT = """
WITH written AS ({insert}),
notified AS (SELECT pg_notify({channel}, '') WHERE EXISTS (SELECT FROM written))
SELECT id, dedup_key FROM written LEFT JOIN notified ON true ORDER BY id
"""

# The ids of events that already held the dedup keys of a batch.
_EXISTING = "SELECT id, dedup_key FROM {table} WHERE dedup_key = ANY(CAST(%(keys)s AS text[]))"


def _table() -> str:
    return f'"{_settings.schema}".outbox_events'


def _rows_json(events: Sequence[OutboxEvent]) -> str:
    return "[" + ",".join(_row_json(n, event) for n, event in enumerate(events)) + "]"


def _row_json(n: int, event: OutboxEvent) -> str:
    # Written by hand: this runs once per event. Absent fields are NULL to jsonb_to_recordset.
    row = f'{{"n":{n},"topic":{_json_string(event.topic)}'
    if event.key is not None:
        row += f',"key":{_json_string(event.key)}'
    if event.headers:
        row += f',"headers":{json.dumps(event.headers, ensure_ascii=False)}'
    if event.process_at is not None:
        row += f',"process_at":"{event.process_at.isoformat()}"'
    if event.delay is not None:
        row += f',"delay":{event.delay!r}'  # finite: checked by prepare_event
    if event.dedup_key is not None:
        row += f',"dedup_key":{_json_string(event.dedup_key)}'
    return f'{row},"payload":{event.payload_json}}}'


def _channel_literal() -> str:
    return "'" + _settings.channel.replace("'", "''") + "'"  # an identifier: no quote inside


def _insert_statements() -> tuple[str, str]:
    return _statements(_table(), _channel_literal())


@functools.lru_cache(maxsize=16)
def _statements(table: str, channel: str) -> tuple[str, str]:
    insert_rows = _INSERT_ROWS.format(table=table).strip()
    insert = _INSERT.format(insert=insert_rows, channel=channel)
    return insert, _EXISTING.format(table=table)


def _apply_ids(
    events: Sequence[OutboxEvent], returned: Sequence[tuple[int, str | None]]
) -> list[str]:
    """Give each event its id from RETURNING (insert order); return dedup keys left unmatched."""
    rows = iter(returned)
    row = next(rows, None)
    missing = []
    for event in events:
        if row is not None and (event.dedup_key is None or row[1] == event.dedup_key):
            event.id, event.duplicate = row[0], False
            row = next(rows, None)
        else:
            event.duplicate = True
            missing.append(event.dedup_key or "")
    return missing


def _apply_existing(events: Sequence[OutboxEvent], existing: Sequence[tuple[int, str]]) -> None:
    ids = {dedup_key: event_id for event_id, dedup_key in existing}
    for event in events:
        if event.duplicate and event.dedup_key is not None:
            event.id = ids.get(event.dedup_key)


def _pairs(rows: Sequence[Any]) -> list[tuple[Any, Any]]:
    return [(row[0], row[1]) for row in rows]


# -- riding on an INSERT of the flush -------------------------------------------------------
#
# The session hook writes a flush's events inside the flush's first INSERT ... RETURNING
# (usually the business row's), as a data-modifying CTE: one statement and one round trip
# for both. The events' ids come back as one more RETURNING column.

RIDE_IDS_COLUMN = "_outbox_ids"

# One event, the common case: plain parameters for the fields it has, the table's defaults
# for the others; no JSON array to unpack.
_ONE_EVENT_VALUES = {
    "topic": "%(outbox_topic)s",
    "payload": "CAST(%(outbox_payload)s AS jsonb)",
    "key": "%(outbox_key)s",
    "headers": "CAST(%(outbox_headers)s AS jsonb)",
    "process_at": "CAST(%(outbox_process_at)s AS timestamptz)",
    "delay": "now() + make_interval(secs => CAST(%(outbox_delay)s AS float8))",
}
RIDE_PARAMETERS = frozenset(
    (
        *("outbox_rows", "outbox_topic", "outbox_key", "outbox_payload"),
        *("outbox_headers", "outbox_process_at", "outbox_delay"),
    )
)

# The ids of the newest events this transaction wrote, when the INSERT that carried them
# returned no row (a BEFORE trigger on its table skipped it): the table's sequence bounds
# the primary key scan, the transaction id picks this transaction's rows. No row returned
# also means the carrier's NOTIFY was not evaluated: this statement sends it.
_NEWEST = """
WITH newest AS (
    SELECT id FROM {table}
    WHERE id <= currval(pg_get_serial_sequence(%(table)s, 'id'))
      AND txid = pg_current_xact_id()
    ORDER BY id DESC
    LIMIT %(count)s),
notified AS (SELECT pg_notify({channel}, ''))
SELECT id FROM newest LEFT JOIN notified ON true ORDER BY id
"""


def carrying(statement: str, events: Sequence[OutboxEvent]) -> tuple[str, dict[str, Any]]:
    """``statement`` (an ``INSERT ... RETURNING``) made to insert ``events`` too (which carry
    no dedup key), their ids returned as one more, last column; and the parameters to add."""
    table, channel = _table(), _channel_literal()
    if len(events) != 1:
        rows = {"outbox_rows": _rows_json(events)}
        return _ride_statement(statement, table, channel, ()), rows
    event = events[0]
    parameters: dict[str, Any] = {"outbox_topic": event.topic, "outbox_payload": event.payload_json}
    if event.key is not None:
        parameters["outbox_key"] = event.key
    if event.headers:
        parameters["outbox_headers"] = json.dumps(event.headers, ensure_ascii=False)
    if event.process_at is not None:
        parameters["outbox_process_at"] = event.process_at
    if event.delay is not None:
        parameters["outbox_delay"] = event.delay
    fields = tuple(name.removeprefix("outbox_") for name in parameters)
    return _ride_statement(statement, table, channel, fields), parameters


@functools.lru_cache(maxsize=256)
def _ride_statement(statement: str, table: str, channel: str, fields: tuple[str, ...]) -> str:
    """The carrying statement; ``fields`` names the one event's parameters, or is empty for
    a JSON array of events."""
    if fields:
        columns = ", ".join("process_at" if name == "delay" else name for name in fields)
        values = ", ".join(_ONE_EVENT_VALUES[name] for name in fields)
        insert_sql = f"INSERT INTO {table} ({columns}) VALUES ({values}) RETURNING id"
        ids = "SELECT id::text"
    else:
        insert_sql = _INSERT_ROWS.format(table=table).strip()
        insert_sql = insert_sql.replace("%(rows)s", "%(outbox_rows)s")
        ids = "SELECT array_to_string(array_agg(id ORDER BY id), ',')"
    # The NOTIFY is evaluated with the ids, once: see _INSERT.
    return (
        f"WITH _outbox_written AS ({insert_sql}), "
        f"_outbox_notified AS (SELECT pg_notify({channel}, '')) {statement}, "
        f"({ids} FROM _outbox_written LEFT JOIN _outbox_notified ON true) AS {RIDE_IDS_COLUMN}"
    )


def apply_ride_ids(events: Sequence[OutboxEvent], ids: Sequence[int]) -> None:
    """Give ``events`` (which carry no dedup key: every one was inserted) their ids."""
    for event, event_id in zip(events, ids, strict=True):
        event.id, event.duplicate = event_id, False


def parse_ride_ids(value: bytes) -> list[int]:
    """The ids column of a carrying INSERT: integers separated by commas, as text."""
    return [int(item) for item in value.split(b",")]


def find_ride_ids(connection: Connection, events: Sequence[OutboxEvent]) -> None:
    """Give ``events`` their ids when the INSERT that carried them returned no row."""
    found = connection.exec_driver_sql(
        _NEWEST.format(table=_table(), channel=_channel_literal()),
        {"table": _table(), "count": len(events)},
    )
    apply_ride_ids(events, [row[0] for row in found])


def write_events_sqlalchemy(connection: Connection, events: Sequence[OutboxEvent]) -> None:
    """Insert ``events`` on a SQLAlchemy connection, inside its current transaction."""
    insert_sql, existing_sql = _insert_statements()
    result = connection.exec_driver_sql(insert_sql, {"rows": _rows_json(events)})
    missing = _apply_ids(events, _pairs(result.all()))
    if missing:
        found = connection.exec_driver_sql(existing_sql, {"keys": missing})
        _apply_existing(events, _pairs(found.all()))


async def write_events_sqlalchemy_async(
    connection: AsyncConnection, events: Sequence[OutboxEvent]
) -> None:
    """Insert ``events`` on an async SQLAlchemy connection, inside its current transaction."""
    insert_sql, existing_sql = _insert_statements()
    result = await connection.exec_driver_sql(insert_sql, {"rows": _rows_json(events)})
    missing = _apply_ids(events, _pairs(result.all()))
    if missing:
        found = await connection.exec_driver_sql(existing_sql, {"keys": missing})
        _apply_existing(events, _pairs(found.all()))


def write_events_psycopg(
    connection: psycopg.Connection[Any], events: Sequence[OutboxEvent]
) -> None:
    """Insert ``events`` on a psycopg connection, inside its current transaction."""
    from psycopg.rows import tuple_row

    insert_sql, existing_sql = _insert_statements()
    # Our own row factory: the connection's may be dict_row or a class.
    with connection.cursor(row_factory=tuple_row) as cursor:
        cursor.execute(insert_sql.encode(), {"rows": _rows_json(events)})
        missing = _apply_ids(events, _pairs(cursor.fetchall()))
        if missing:
            cursor.execute(existing_sql.encode(), {"keys": missing})
            _apply_existing(events, _pairs(cursor.fetchall()))


async def write_events_psycopg_async(
    connection: psycopg.AsyncConnection[Any], events: Sequence[OutboxEvent]
) -> None:
    """Insert ``events`` on an async psycopg connection, inside its current transaction."""
    from psycopg.rows import tuple_row

    insert_sql, existing_sql = _insert_statements()
    async with connection.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(insert_sql.encode(), {"rows": _rows_json(events)})
        missing = _apply_ids(events, _pairs(await cursor.fetchall()))
        if missing:
            await cursor.execute(existing_sql.encode(), {"keys": missing})
            _apply_existing(events, _pairs(await cursor.fetchall()))


# -- publish -----------------------------------------------------------------------------


@overload
def publish(
    target: SyncTarget,
    topic: str,
    payload: Any,
    *,
    key: str | None = ...,
    headers: Mapping[str, str] | None = ...,
    process_at: dt.datetime | None = ...,
    delay: dt.timedelta | float | None = ...,
    dedup_key: str | None = ...,
) -> OutboxEvent: ...


@overload
def publish(
    target: AsyncTarget,
    topic: str,
    payload: Any,
    *,
    key: str | None = ...,
    headers: Mapping[str, str] | None = ...,
    process_at: dt.datetime | None = ...,
    delay: dt.timedelta | float | None = ...,
    dedup_key: str | None = ...,
) -> Awaitable[OutboxEvent]: ...


def publish(
    target: SyncTarget | AsyncTarget,
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    process_at: dt.datetime | None = None,
    delay: dt.timedelta | float | None = None,
    dedup_key: str | None = None,
) -> OutboxEvent | Awaitable[OutboxEvent]:
    """Write one event in ``target``'s current transaction.

    The event exists if and only if that transaction commits: a rolled-back transaction or
    savepoint takes it away. ``target`` is a SQLAlchemy ``Session`` or Core ``Connection``, a
    psycopg ``Connection``, or their async forms (then ``publish`` returns an awaitable).

    On a connection the event is written at once. On a session it is written by the
    session's next flush, together with the events entities recorded (see
    :func:`outbox.install`), or at commit; its ``id`` is set then. The first time a session
    class is given, the session hook is installed on it.

    Events with the same ``key`` reach each sink in publish order. ``process_at`` (aware
    datetime) or ``delay`` (seconds or timedelta, measured on the database clock) postpone
    delivery. A second event with the same ``dedup_key`` is not written: the returned
    event then has ``duplicate=True`` and the existing event's ``id``.

    Raises :class:`~outbox.PublishError` for invalid input, before anything is written.
    """
    event = prepare_event(
        topic,
        payload,
        key=key,
        headers=headers,
        process_at=process_at,
        delay=delay,
        dedup_key=dedup_key,
    )
    return _dispatch(target, event)


def _dispatch(target: object, event: OutboxEvent) -> OutboxEvent | Awaitable[OutboxEvent]:
    if isinstance(target, Session):
        if target.get_transaction() is None:
            target.connection()  # begin, so that a rollback before the flush takes it away
        _stage_published()(target, event)
    elif isinstance(target, Connection):
        write_events_sqlalchemy(target, [event])
    elif isinstance(target, psycopg.Connection):
        write_events_psycopg(target, [event])
    elif isinstance(target, AsyncSession | AsyncConnection | psycopg.AsyncConnection):
        return _publish_async(target, event)
    else:
        raise TypeError(
            "publish() needs a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection, "
            f"or a psycopg connection; got {type(target).__name__}"
        )
    return event


@functools.cache
def _stage_published() -> Callable[[Session, OutboxEvent], None]:
    from outbox.hook import stage_published  # the hook imports this module

    return stage_published


async def _publish_async(target: object, event: OutboxEvent) -> OutboxEvent:
    if isinstance(target, AsyncSession):
        if target.get_transaction() is None:
            await target.connection()
        _stage_published()(target.sync_session, event)
    elif isinstance(target, AsyncConnection):
        await write_events_sqlalchemy_async(target, [event])
    elif isinstance(target, psycopg.AsyncConnection):
        await write_events_psycopg_async(target, [event])
    return event
