"""publish() on every kind of connection: the event exists if and only if its transaction
commits."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import outbox
from outbox._urls import sqlalchemy_url

SYNC_KINDS = ["session", "connection", "psycopg"]
ASYNC_KINDS = ["async_session", "async_connection", "async_psycopg"]
MARKER_CHANNEL = "outbox_test_marker"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(database_url))
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url))
    yield engine
    await engine.dispose()


@contextlib.contextmanager
def sync_target(kind: str, engine: Engine, url: str) -> Iterator[Any]:
    """A Session, Core Connection or psycopg connection, each with commit() and rollback()."""
    if kind == "session":
        with Session(engine) as session:
            yield session
    elif kind == "connection":
        with engine.connect() as connection:
            yield connection
    else:
        with psycopg.connect(url) as connection:
            yield connection
            connection.rollback()  # leaving the block commits, which a test must do itself


@contextlib.asynccontextmanager
async def async_target(kind: str, engine: AsyncEngine, url: str) -> AsyncIterator[Any]:
    if kind == "async_session":
        async with AsyncSession(engine) as session:
            yield session
    elif kind == "async_connection":
        async with engine.connect() as connection:
            yield connection
    else:
        async with await psycopg.AsyncConnection.connect(url) as connection:
            yield connection
            await connection.rollback()


def stored(url: str, columns: str = "id, topic") -> list[tuple[Any, ...]]:
    """Rows of the outbox table in id order, read on a connection of its own."""
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT {columns} FROM outbox_events ORDER BY id").fetchall()


# -- the event exists iff the transaction commits ----------------------------------------


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_event_is_written_on_commit(kind: str, engine: Engine, database_url: str) -> None:
    with sync_target(kind, engine, database_url) as target:
        event = outbox.publish(target, "order.confirmed", {"order_id": 7}, key="order-7")
        if kind == "session":
            assert event.id is None  # written by the next flush, here the commit's
        else:
            assert event.id is not None
            assert event.duplicate is False
        assert stored(database_url) == []  # not visible before the commit
        target.commit()
        assert event.id is not None
        assert event.duplicate is False
    rows = stored(database_url, "id, topic, key, payload, headers, status, attempts, dedup_key")
    assert rows == [
        (event.id, "order.confirmed", "order-7", {"order_id": 7}, {}, "pending", 0, None)
    ]


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_rollback_removes_the_event(kind: str, engine: Engine, database_url: str) -> None:
    with sync_target(kind, engine, database_url) as target:
        outbox.publish(target, "order.cancelled", {})
        target.rollback()
        kept = outbox.publish(target, "order.confirmed", {})
        target.commit()
    assert stored(database_url) == [(kept.id, "order.confirmed")]


async def _publish_async(target: Any, topic: str, payload: Any, **kw: Any) -> outbox.OutboxEvent:
    result = outbox.publish(target, topic, payload, **kw)
    assert not isinstance(result, outbox.OutboxEvent), "async targets return an awaitable"
    return await result


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_event_is_written_on_commit(
    kind: str, async_engine: AsyncEngine, database_url: str
) -> None:
    async with async_target(kind, async_engine, database_url) as target:
        event = await _publish_async(target, "order.confirmed", {"n": 1}, key="k")
        assert (event.id is None) == (kind == "async_session")  # a session writes at flush
        await target.commit()
        assert event.id is not None
    assert stored(database_url, "id, topic, key, payload") == [
        (event.id, "order.confirmed", "k", {"n": 1})
    ]


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_rollback_removes_the_event(
    kind: str, async_engine: AsyncEngine, database_url: str
) -> None:
    async with async_target(kind, async_engine, database_url) as target:
        await _publish_async(target, "order.cancelled", {})
        await target.rollback()
        kept = await _publish_async(target, "order.confirmed", {})
        await target.commit()
    assert stored(database_url) == [(kept.id, "order.confirmed")]


def test_session_savepoint_rolled_back_removes_only_the_inner_event(
    engine: Engine, database_url: str
) -> None:
    with Session(engine) as session, session.begin():
        outer = outbox.publish(session, "outer.before", {})
        savepoint = session.begin_nested()
        outbox.publish(session, "inner.rolled_back", {})
        savepoint.rollback()
        after = outbox.publish(session, "outer.after", {})
    assert stored(database_url) == [(outer.id, "outer.before"), (after.id, "outer.after")]


def test_connection_savepoint_rolled_back_removes_only_the_inner_event(
    engine: Engine, database_url: str
) -> None:
    with engine.begin() as connection:
        outer = outbox.publish(connection, "outer", {})
        savepoint = connection.begin_nested()
        outbox.publish(connection, "inner", {})
        savepoint.rollback()
    assert stored(database_url) == [(outer.id, "outer")]


def test_psycopg_savepoint_rolled_back_removes_only_the_inner_event(database_url: str) -> None:
    with psycopg.connect(database_url) as connection, connection.transaction():
        outer = outbox.publish(connection, "outer", {})
        with connection.transaction():
            outbox.publish(connection, "inner", {})
            raise psycopg.Rollback()
    assert stored(database_url) == [(outer.id, "outer")]


async def test_async_session_savepoint_rolled_back_removes_only_the_inner_event(
    async_engine: AsyncEngine, database_url: str
) -> None:
    async with AsyncSession(async_engine) as session, session.begin():
        outer = await _publish_async(session, "outer", {})
        savepoint = await session.begin_nested()
        await _publish_async(session, "inner", {})
        await savepoint.rollback()
    assert stored(database_url) == [(outer.id, "outer")]


def test_psycopg_connection_with_dict_rows(database_url: str) -> None:
    with psycopg.connect(database_url, row_factory=dict_row) as connection:
        event = outbox.publish(connection, "order.confirmed", {}, dedup_key="d")
        again = outbox.publish(connection, "order.confirmed", {}, dedup_key="d")
    assert event.id is not None
    assert (again.duplicate, again.id) == (True, event.id)


async def test_async_psycopg_connection_with_dict_rows(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, row_factory=dict_row) as conn:
        event = await _publish_async(conn, "order.confirmed", {})
    assert stored(database_url) == [(event.id, "order.confirmed")]


# -- dedup_key ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_duplicate_dedup_key_is_a_no_op_returning_the_existing_id(
    kind: str, engine: Engine, database_url: str
) -> None:
    with sync_target(kind, engine, database_url) as target:
        first = outbox.publish(target, "payment.captured", {"n": 1}, dedup_key="pay-1")
        target.commit()
        second = outbox.publish(target, "payment.captured", {"n": 2}, dedup_key="pay-1")
        same_transaction = outbox.publish(target, "other.topic", {}, dedup_key="pay-1")
        target.commit()
    assert (first.duplicate, second.duplicate, same_transaction.duplicate) == (False, True, True)
    assert first.id is not None
    assert second.id == same_transaction.id == first.id
    assert stored(database_url, "id, payload, dedup_key") == [(first.id, {"n": 1}, "pay-1")]


async def test_async_duplicate_dedup_key_returns_the_existing_id(
    async_engine: AsyncEngine, database_url: str
) -> None:
    async with AsyncSession(async_engine) as session:
        first = await _publish_async(session, "a", {}, dedup_key="k")
        second = await _publish_async(session, "a", {}, dedup_key="k")
        await session.commit()
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        third = await _publish_async(conn, "a", {}, dedup_key="k")
    assert (second.duplicate, third.duplicate) == (True, True)
    assert second.id == third.id == first.id is not None


def test_dedup_key_of_a_rolled_back_event_is_free_again(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "a", {}, dedup_key="k")
        connection.rollback()
        event = outbox.publish(connection, "a", {}, dedup_key="k")
    assert event.duplicate is False
    assert stored(database_url) == [(event.id, "a")]


def test_concurrent_duplicate_waits_for_the_first_and_returns_its_id(database_url: str) -> None:
    results: list[outbox.OutboxEvent] = []
    with psycopg.connect(database_url) as first_conn:
        first = outbox.publish(first_conn, "a", {}, dedup_key="race")
        second_conn = psycopg.connect(database_url)
        pid = second_conn.info.backend_pid

        def publish_second() -> None:
            with second_conn:
                results.append(outbox.publish(second_conn, "a", {}, dedup_key="race"))

        thread = threading.Thread(target=publish_second)
        thread.start()
        _wait_until_blocked_on_a_lock(first_conn, pid)
        first_conn.commit()
        thread.join(timeout=30)
    assert [(event.duplicate, event.id) for event in results] == [(True, first.id)]
    assert stored(database_url) == [(first.id, "a")]


def _wait_until_blocked_on_a_lock(conn: psycopg.Connection[Any], pid: int) -> None:
    with psycopg.connect(conn.info.dsn, autocommit=True) as watcher:
        for _ in range(3000):
            row = watcher.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
            ).fetchone()
            if row is not None and row[0] == "Lock":
                return
            watcher.execute("SELECT pg_sleep(0.01)")
    raise AssertionError("the second publish never waited for the first")


# -- bad input ---------------------------------------------------------------------------


BAD_INPUTS: list[tuple[str, Any, dict[str, Any]]] = [
    ("", {}, {}),
    ("a..b", {}, {}),
    ("a", {"x": float("nan")}, {}),
    ("a", b"bytes", {}),
    ("a", {}, {"key": ""}),
    ("a", {}, {"headers": {"h": 1}}),
    ("a", {}, {"process_at": dt.datetime(2030, 1, 1)}),
    ("a", {}, {"delay": -1}),
    ("a", {}, {"delay": 1e15}),  # would overflow timestamptz in the database
    ("a", {"s": "\x00"}, {}),
    ("a", {}, {"dedup_key": "\ud800"}),
]


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_bad_input_writes_nothing_and_leaves_the_transaction_usable(
    kind: str, engine: Engine, database_url: str
) -> None:
    with sync_target(kind, engine, database_url) as target:
        before = outbox.publish(target, "before", {})
        for topic, payload, kw in BAD_INPUTS:
            with pytest.raises(outbox.PublishError):
                outbox.publish(target, topic, payload, **kw)
        after = outbox.publish(target, "after", {})
        target.commit()
    assert stored(database_url) == [(before.id, "before"), (after.id, "after")]


async def test_async_bad_input_leaves_the_transaction_usable(
    async_engine: AsyncEngine, database_url: str
) -> None:
    async with AsyncSession(async_engine) as session:
        for topic, payload, kw in BAD_INPUTS:
            with pytest.raises(outbox.PublishError):
                await _publish_async(session, topic, payload, **kw)
        after = await _publish_async(session, "after", {})
        await session.commit()
    assert stored(database_url) == [(after.id, "after")]


# -- scheduling and headers --------------------------------------------------------------


def test_without_schedule_process_at_is_the_transaction_time(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "a", {})
        now = connection.execute("SELECT now()").fetchone()
    assert now is not None
    assert stored(database_url, "process_at, created_at") == [(now[0], now[0])]


@pytest.mark.parametrize("delay", [90 * 60, 5400.0, dt.timedelta(minutes=90)])
def test_delay_is_added_to_the_database_clock(delay: Any, database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "a", {}, delay=delay)
        database_now = connection.execute("SELECT now()").fetchone()
    assert database_now is not None
    [(process_at, created_at)] = stored(database_url, "process_at, created_at")
    assert created_at == database_now[0]
    assert process_at - created_at == dt.timedelta(minutes=90)


def test_process_at_is_stored_as_the_same_instant(database_url: str) -> None:
    when = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=-3)))
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "a", {}, process_at=when)
    assert stored(database_url, "process_at") == [(when,)]


def test_past_process_at_is_kept(database_url: str) -> None:
    when = dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "a", {}, process_at=when)
    assert stored(database_url, "process_at") == [(when,)]


def test_headers_are_stored(engine: Engine, database_url: str) -> None:
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x": "é"}
    with Session(engine) as session:
        outbox.publish(session, "a", {}, headers=headers)
        outbox.publish(session, "b", {})
        session.commit()
    assert stored(database_url, "topic, headers") == [("a", headers), ("b", {})]


def test_payload_round_trips(database_url: str) -> None:
    payload = {"s": "Zoë 東京 🎉", "n": [1, 2.5, -3], "t": (True, None), "big": 2**70, "o": {}}
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "a", payload)
    [(stored_payload,)] = stored(database_url, "payload")
    assert stored_payload == {**payload, "t": [True, None]}


def test_ids_follow_publish_order(database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        events = [outbox.publish(connection, f"t{n}", {}) for n in range(5)]
    ids = [event.id for event in events]
    assert ids == sorted(ids)
    assert stored(database_url) == [(event.id, event.topic) for event in events]


# -- NOTIFY ------------------------------------------------------------------------------


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection listening on the outbox channel and on a marker channel."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("LISTEN outbox")
        conn.execute(f"LISTEN {MARKER_CHANNEL}")
        yield conn


def notifications_until_marker(listener: psycopg.Connection[Any], url: str) -> list[str]:
    """Channels notified so far on the outbox channel.

    A marker notification is sent last: Postgres delivers notifications in commit order, so
    every notification of an earlier transaction has arrived when the marker does.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"NOTIFY {MARKER_CHANNEL}")
    channels = []
    for notify in listener.notifies(timeout=30):
        if notify.channel == MARKER_CHANNEL:
            return channels
        channels.append(notify.channel)
    raise AssertionError("the marker notification never arrived")


def test_one_notify_per_committing_transaction(
    listener: psycopg.Connection[Any], engine: Engine, database_url: str
) -> None:
    with Session(engine) as session:
        for n in range(5):
            outbox.publish(session, "five", {"n": n})
            session.flush()
        session.commit()
    with psycopg.connect(database_url) as connection:
        for n in range(3):
            outbox.publish(connection, "three", {"n": n})
    assert notifications_until_marker(listener, database_url) == ["outbox", "outbox"]
    assert len(stored(database_url)) == 8


def test_notify_with_stop_after(listener: psycopg.Connection[Any], database_url: str) -> None:
    for count in (5, 3):
        with psycopg.connect(database_url) as connection:
            for n in range(count):
                outbox.publish(connection, "a", {"n": n})
    # A last notification on the same channel, told apart by its payload: with exactly one
    # notification per transaction before it, the third one received is this one.
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("SELECT pg_notify('outbox', 'end')")
    received = list(listener.notifies(timeout=30, stop_after=3))
    assert [(notify.channel, notify.payload) for notify in received] == [
        ("outbox", ""),
        ("outbox", ""),
        ("outbox", "end"),
    ]


def test_no_notify_for_a_rolled_back_transaction(
    listener: psycopg.Connection[Any], engine: Engine, database_url: str
) -> None:
    with Session(engine) as session:
        outbox.publish(session, "a", {})
        session.rollback()
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "b", {})
        connection.rollback()
    assert notifications_until_marker(listener, database_url) == []


def test_notify_payload_is_empty(listener: psycopg.Connection[Any], database_url: str) -> None:
    with psycopg.connect(database_url) as connection:
        outbox.publish(connection, "a", {"secret": "not in the notification"})
    [notify] = list(listener.notifies(timeout=30, stop_after=1))
    assert (notify.channel, notify.payload) == ("outbox", "")
