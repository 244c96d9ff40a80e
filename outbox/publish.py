"""Writing events into the outbox, in the caller's transaction.

Everything is validated before anything is written (:mod:`outbox._validation`): a refused
event raises :class:`~outbox.PublishError` and leaves the caller's transaction untouched. On a
connection the event writer (:mod:`outbox._writer`) writes it at once; on a session the
session hook (:mod:`outbox.hook`) writes it with the session's next flush.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, overload

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from outbox._validation import (
    JsonDefault,
    OutboxEvent,
    prepare_event,
    set_json_default,
    set_max_payload_bytes,
)
from outbox._writer import (
    set_destination,
    write_events_psycopg,
    write_events_psycopg_async,
    write_events_sqlalchemy,
    write_events_sqlalchemy_async,
)
from outbox.hook import stage_published

if TYPE_CHECKING:
    SyncTarget = Session | Connection | psycopg.Connection[Any]
    AsyncTarget = AsyncSession | AsyncConnection | psycopg.AsyncConnection[Any]

__all__ = ["OutboxEvent", "configure", "publish"]


def configure(
    *,
    schema: str | None = None,
    channel: str | None = None,
    max_payload_bytes: int | None = None,
    json_default: JsonDefault | None = None,
) -> None:
    """Set, for :func:`publish` and the session hook from now on: the outbox schema, the
    channel that wakes relays (their ``[relay] channel``), the payload size cap, and
    ``json_default``, a function like ``json.dumps``' ``default`` that turns a payload value
    of a type JSON does not know into one it does (or raises ``TypeError``). It is asked
    before the built-in rules for ``Decimal``, ``UUID``, dates and times, enums, dataclasses
    and pydantic models. An argument left ``None`` keeps its current setting.
    """
    set_destination(schema=schema, channel=channel)
    if max_payload_bytes is not None:
        set_max_payload_bytes(max_payload_bytes)
    if json_default is not None:
        set_json_default(json_default)


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
    :func:`outbox.install`), or at commit; its ``id`` is set then. Any session will do: the
    session hook serves every session, and starts if nothing started it yet.

    Events with the same ``key`` reach each sink in publish order. ``process_at`` (aware
    datetime) or ``delay`` (seconds or timedelta, measured on the database clock) postpone
    delivery. A second event with the same ``dedup_key`` is not written: the returned
    event then has ``duplicate=True`` and the existing event's ``id``.

    ``payload`` is JSON (not ``None``: pass ``{}`` for an event without data); ``Decimal``,
    ``UUID``, dates and times, enums, dataclasses and pydantic models in it are converted
    (see :func:`configure` for ``json_default``, and docs/publishing.md for what is stored).

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
        stage_published(target, event)
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


async def _publish_async(target: object, event: OutboxEvent) -> OutboxEvent:
    if isinstance(target, AsyncSession):
        if target.get_transaction() is None:
            await target.connection()
        stage_published(target.sync_session, event)
    elif isinstance(target, AsyncConnection):
        await write_events_sqlalchemy_async(target, [event])
    elif isinstance(target, psycopg.AsyncConnection):
        await write_events_psycopg_async(target, [event])
    return event
