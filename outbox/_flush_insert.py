"""A flush's events written by the flush's own ``INSERT ... RETURNING`` (docs/decisions/0006).

Before a flush the session hook hands the flush's events to :func:`write_with_first_insert`.
An engine hook then rewrites the flush's first ``INSERT ... RETURNING`` executed once (not
``executemany``) on the session's connection, usually the business row's: the events' insert
and the NOTIFY go in front of it as data-modifying CTEs, and the events' ids come back as one
more, last returned column, read without moving the cursor before SQLAlchemy fetches its row.
One statement and one round trip write both. The parts added are ``queries.sql``'s
``flush_insert_*`` statements; only joining them to the application's statement is done here.

:func:`finish_flush`, at the end of the flush, writes the events no INSERT took as a
statement of their own, or looks their ids up when the INSERT returned no row (a ``BEFORE``
trigger skipped it). Events with a dedup key, and drivers other than psycopg 3 in sync mode,
are written as a statement of their own at once.
"""

from __future__ import annotations

import dataclasses
import json
import re
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from outbox._validation import OutboxEvent
from outbox._writer import IDS_COLUMN, Statements, rows_json, statements, write_events_sqlalchemy

_PENDING = "outbox.flush_insert"  # session.info and connection.info: the events of a flush
_IDS_COLUMN = IDS_COLUMN.encode()
# The parameters the added parts use: an application statement using one is left alone.
_ADDED_PARAMETERS = frozenset(
    (
        *("outbox_rows", "outbox_topic", "outbox_key", "outbox_payload"),
        *("outbox_headers", "outbox_process_at", "outbox_delay"),
    )
)
# Recognises the application's single-row INSERT ... RETURNING that can take the events.
_INSERT_RETURNING_PATTERN = r"\s*INSERT\s.*\sRETURNING\s"
_insert_returning = re.compile(_INSERT_RETURNING_PATTERN, re.DOTALL)
_listened_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


@dataclasses.dataclass(eq=False)
class _PendingEvents:
    """Events of a flush waiting for the flush's first INSERT that can take them."""

    connection: Connection
    events: list[OutboxEvent]
    statement: str | None = None  # the rewritten INSERT sent with them


def write_with_first_insert(session: Session, events: list[OutboxEvent]) -> None:
    """Let the flush's first INSERT ... RETURNING write ``events``, or write them now."""
    connection = session.connection()
    dialect = connection.dialect
    combinable = (
        dialect.driver == "psycopg"
        and not dialect.is_async
        and dialect.paramstyle == "pyformat"
        # A duplicate dedup key inserts no row: its id needs a lookup of its own.
        and not any(outbox_event.dedup_key for outbox_event in events)
    )
    if not combinable:
        write_events_sqlalchemy(connection, events)
        return
    _listen_on(connection.engine)
    session.info[_PENDING] = connection.info[_PENDING] = _PendingEvents(connection, events)


def finish_flush(session: Session) -> None:
    """At the end of a flush: write the events no INSERT took, or read back their ids."""
    pending: _PendingEvents | None = session.info.pop(_PENDING, None)
    if pending is None:
        return
    pending.connection.info.pop(_PENDING, None)
    if pending.statement is None:
        write_events_sqlalchemy(pending.connection, pending.events)
    elif pending.events[0].id is None:  # the INSERT returned no row to read them from
        _look_up_ids(pending.connection, pending.events)


def forget_flush(session: Session) -> None:
    """Forget the events of a flush that failed or was rolled back."""
    pending: _PendingEvents | None = session.info.pop(_PENDING, None)
    if pending is not None:
        pending.connection.info.pop(_PENDING, None)


def _listen_on(engine: Engine) -> None:
    if engine not in _listened_engines:
        event.listen(engine, "before_cursor_execute", _add_events, retval=True)
        event.listen(engine, "after_cursor_execute", _read_ids)
        event.listen(engine, "commit", _write_left_over)
        _listened_engines.add(engine)


def _write_left_over(conn: Connection) -> None:
    # A flush whose before_flush hooks left it nothing to do ends without after_flush_postexec:
    # its events are written here, before the COMMIT.
    pending: _PendingEvents | None = conn.info.pop(_PENDING, None)
    if pending is not None and pending.statement is None and pending.connection is conn:
        write_events_sqlalchemy(conn, pending.events)


def _add_events(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> tuple[str, Any]:
    pending: _PendingEvents | None = conn.info.get(_PENDING)
    if (
        pending is None
        or pending.statement is not None
        or pending.connection is not conn
        or executemany
        or not isinstance(parameters, dict)
        or not _ADDED_PARAMETERS.isdisjoint(parameters)
        or not hasattr(cursor, "pgresult")
        or not _insert_returning.match(statement)
    ):
        return statement, parameters
    pending.statement, added = _with_events(statement, pending.events)
    return pending.statement, {**parameters, **added}


def _with_events(statement: str, events: Sequence[OutboxEvent]) -> tuple[str, dict[str, Any]]:
    """``statement`` (an ``INSERT ... RETURNING``) made to insert ``events`` too (which carry
    no dedup key), their ids returned as one more, last column; and the parameters to add."""
    current = statements()
    if len(events) == 1:
        front, parameters = _one_event(current, events[0])
        ids = current.flush_insert_event_id
    else:
        front, parameters = current.flush_insert_events, {"outbox_rows": rows_json(events)}
        ids = current.flush_insert_event_ids
    return f"{front} {statement}, {ids}", parameters


def _one_event(current: Statements, one: OutboxEvent) -> tuple[str, dict[str, Any]]:
    """The part in front for one event, and its parameters: plain ones, no JSON array. Three
    shapes, so that an event without headers or schedule binds no parameter for them (each
    bound field costs the statement a few microseconds)."""
    parameters: dict[str, Any] = {
        "outbox_topic": one.topic,
        "outbox_key": one.key,
        "outbox_payload": one.payload_json,
    }
    headers = json.dumps(one.headers, ensure_ascii=False) if one.headers else None
    if one.process_at is None and one.delay is None:
        if headers is None:
            return current.flush_insert_one_event, parameters
        parameters["outbox_headers"] = headers
        return current.flush_insert_one_event_with_headers, parameters
    parameters["outbox_headers"] = headers
    parameters["outbox_process_at"] = one.process_at
    parameters["outbox_delay"] = one.delay
    return current.flush_insert_one_scheduled_event, parameters


def _read_ids(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    pending: _PendingEvents | None = conn.info.get(_PENDING)
    if pending is None or statement is not pending.statement or pending.connection is not conn:
        return
    # Read from the result without moving the cursor: SQLAlchemy fetches the rows next.
    result = cursor.pgresult
    if (
        result is None
        or result.ntuples == 0  # a trigger skipped the row: finish_flush() looks the ids up
        or result.fname(result.nfields - 1) != _IDS_COLUMN
    ):
        return
    ids = result.get_value(0, result.nfields - 1)
    _apply_ids(pending.events, [int(item) for item in ids.split(b",")])


def _look_up_ids(connection: Connection, events: Sequence[OutboxEvent]) -> None:
    """Give ``events`` their ids when the INSERT that carried them returned no row."""
    found = connection.exec_driver_sql(statements().flush_insert_lookup_ids, {"count": len(events)})
    _apply_ids(events, [row[0] for row in found])


def _apply_ids(events: Sequence[OutboxEvent], ids: Sequence[int]) -> None:
    """Give ``events`` (which carry no dedup key: every one was inserted) their ids."""
    for outbox_event, event_id in zip(events, ids, strict=True):
        outbox_event.id, outbox_event.duplicate = event_id, False
