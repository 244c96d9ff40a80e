"""The event writer: one statement inserts a batch of events in the caller's transaction.

Writing is one sequence, written once: insert the batch (``insert_events``, or
``insert_undeduplicated_events`` when no event has a dedup key; both NOTIFY the relays), then,
if a dedup key was already taken, look up the existing events' ids
(``events_of_dedup_keys``). :func:`_writing` is that sequence as a generator that yields each
statement with its parameters and is sent the rows it returned, as psycopg's generators do;
each kind of connection is a thin adapter that executes what it yields.

The statements come from ``outbox/sql/queries.sql``, rendered once per schema and channel
(:func:`statements`), the session hook's among them (see :mod:`outbox._flush_insert`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import json.encoder
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from outbox._identifiers import validate_identifier
from outbox._queries import render
from outbox._validation import OutboxEvent

# The column of a flush's INSERT ... RETURNING that returns the ids of the events it wrote.
IDS_COLUMN = "_outbox_ids"

_json_string = json.encoder.encode_basestring  # a str as a JSON string, non-ASCII kept

_Rows = Sequence[Sequence[Any]]
_Step = tuple[str, dict[str, Any]]  # a statement and its parameters


@dataclasses.dataclass(frozen=True)
class Statements:
    """The publishing statements over one schema's ``outbox_events``, notifying one channel;
    the fields are named like the statements of ``queries.sql``."""

    insert_events: str
    insert_undeduplicated_events: str
    events_of_dedup_keys: str
    flush_insert_one_event: str
    flush_insert_one_event_with_headers: str
    flush_insert_one_scheduled_event: str
    flush_insert_events: str
    flush_insert_event_id: str
    flush_insert_event_ids: str
    flush_insert_lookup_ids: str


@dataclasses.dataclass
class _Destination:
    schema: str = "public"
    channel: str = "outbox"


_destination = _Destination()


def set_destination(*, schema: str | None = None, channel: str | None = None) -> None:
    """Write events to ``schema``'s ``outbox_events`` and NOTIFY ``channel`` from now on."""
    if schema is not None:
        _destination.schema = validate_identifier(schema, "schema")
    if channel is not None:
        _destination.channel = validate_identifier(channel, "channel")


def statements() -> Statements:
    """The statements for the schema and channel set by :func:`set_destination`."""
    return _statements_for(_destination.schema, _destination.channel)


@functools.cache
def _statements_for(schema: str, channel: str) -> Statements:
    table = sql.Identifier(schema, "outbox_events")
    placeholders = {
        "table": table,
        "table_name": sql.Literal(table.as_string(None)),
        "channel": sql.Literal(channel),
        "ids_column": sql.Identifier(IDS_COLUMN),
    }
    rendered = {
        field.name: render(field.name, **placeholders).decode()
        for field in dataclasses.fields(Statements)
    }
    return Statements(**rendered)


# -- the parameters ----------------------------------------------------------------------


def rows_json(events: Sequence[OutboxEvent]) -> str:
    """``events`` as the JSON array that ``insert_event_rows`` unpacks."""
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


# -- the sequence ------------------------------------------------------------------------


def _writing(events: Sequence[OutboxEvent]) -> Generator[_Step, _Rows, None]:
    """The statements that write ``events``; each is sent the rows it returned."""
    current = statements()
    parameters = {"outbox_rows": rows_json(events)}
    if any(event.dedup_key is not None for event in events):
        returned = yield current.insert_events, parameters
    else:
        # The ids as one row of text: a row each cost the client more than the ids themselves.
        joined = yield current.insert_undeduplicated_events, parameters
        returned = [(int(n), None) for n in joined[0][0].split(",")] if joined[0][0] else []
    missing = _apply_ids(events, returned)
    if missing:
        existing = yield current.events_of_dedup_keys, {"keys": missing}
        _apply_existing(events, existing)


def _apply_ids(events: Sequence[OutboxEvent], returned: _Rows) -> list[str]:
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


def _apply_existing(events: Sequence[OutboxEvent], existing: _Rows) -> None:
    ids = {row[1]: row[0] for row in existing}
    for event in events:
        if event.duplicate and event.dedup_key is not None:
            event.id = ids.get(event.dedup_key)


def _run(execute: Callable[[str, dict[str, Any]], _Rows], events: Sequence[OutboxEvent]) -> None:
    steps = _writing(events)
    step = next(steps)
    while True:
        rows = execute(*step)
        try:
            step = steps.send(rows)
        except StopIteration:
            return


async def _run_async(
    execute: Callable[[str, dict[str, Any]], Awaitable[_Rows]], events: Sequence[OutboxEvent]
) -> None:
    steps = _writing(events)
    step = next(steps)
    while True:
        rows = await execute(*step)
        try:
            step = steps.send(rows)
        except StopIteration:
            return


# -- the adapters, one per kind of connection ---------------------------------------------


def write_events_sqlalchemy(connection: Connection, events: Sequence[OutboxEvent]) -> None:
    """Insert ``events`` on a SQLAlchemy connection, inside its current transaction."""
    _run(
        lambda statement, parameters: connection.exec_driver_sql(statement, parameters).all(),
        events,
    )


async def write_events_sqlalchemy_async(
    connection: AsyncConnection, events: Sequence[OutboxEvent]
) -> None:
    """Insert ``events`` on an async SQLAlchemy connection, inside its current transaction."""

    async def execute(statement: str, parameters: dict[str, Any]) -> _Rows:
        return (await connection.exec_driver_sql(statement, parameters)).all()

    await _run_async(execute, events)


def write_events_psycopg(
    connection: psycopg.Connection[Any], events: Sequence[OutboxEvent]
) -> None:
    """Insert ``events`` on a psycopg connection, inside its current transaction."""
    # Our own row factory: the connection's may be dict_row or a class.
    with connection.cursor(row_factory=tuple_row) as cursor:
        _run(lambda statement, parameters: cursor.execute(statement, parameters).fetchall(), events)


async def write_events_psycopg_async(
    connection: psycopg.AsyncConnection[Any], events: Sequence[OutboxEvent]
) -> None:
    """Insert ``events`` on an async psycopg connection, inside its current transaction."""
    async with connection.cursor(row_factory=tuple_row) as cursor:

        async def execute(statement: str, parameters: dict[str, Any]) -> _Rows:
            await cursor.execute(statement, parameters)
            return await cursor.fetchall()

        await _run_async(execute, events)
