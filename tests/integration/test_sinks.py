"""The built-in sinks against a real PostgreSQL: the conformance suite, the postgres sink
through a relay (same database and another one), and the exactly-once proof with a relay
killed between the sink's insert and the settle."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import outbox
from outbox.callable_sink import CallableSink
from outbox.exceptions import PermanentError, RetryableError
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.postgres_sink import PostgresOptions, PostgresSink
from outbox.relay import Relay, RelayOptions
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings
from outbox.sinks import Event, Sink
from outbox.testing import Behaviour, SinkHarness, exercise_sink, make_event

ALL_CHECKS = ["acks", "repeat_is_harmless", "retryable", "permanent", "retry_after", "concurrency"]
DEADLINE = 15.0
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


def postgres_sink(*, schema: str = "audit", table: str = "events", **options: Any) -> PostgresSink:
    return PostgresSink(
        PostgresOptions.model_validate({"schema": schema, "table": table, **options})
    )


def fetch(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def table_exists(url: str, schema: str, table: str) -> bool:
    qualified = f"{schema}.{table}"
    return bool(fetch(url, "SELECT to_regclass(%s) IS NOT NULL", qualified)[0][0])


def publish(url: str, count: int, topic: str = "order.confirmed") -> list[int]:
    """Publish ``count`` events in one committed transaction; return their ids."""
    with psycopg.connect(url) as conn:
        events = [
            outbox.publish(
                conn,
                topic,
                {"n": n, "text": "ünïcode ✓"},
                key=f"order-{n % 2}",
                headers={"x-test": str(n)},
            )
            for n in range(count)
        ]
    return [event.id for event in events if event.id is not None]


def fast_options(**overrides: Any) -> RelayOptions:
    values: dict[str, Any] = {
        "poll_interval": 0.05,
        "maintenance_interval": 0.1,
        "lease_seconds": 5.0,
        "delivery_timeout": 4.0,
    }
    values.update(overrides)
    return relay_options(**values)


async def drain(url: str, sinks: dict[str, Sink], options: RelayOptions | None = None) -> None:
    subscriptions = [Subscription(("#",), tuple(sinks))]
    relay = Relay(url, sinks, subscriptions, options or fast_options())
    await asyncio.wait_for(relay.run(drain=True), DEADLINE)


# -- the callable sink ---------------------------------------------------------------------------


FAILURES: dict[Behaviour, Callable[[], Exception] | None] = {
    "ok": None,
    "retryable": lambda: RetryableError("busy"),
    "permanent": lambda: PermanentError("refused"),
    "retry_after": lambda: RetryableError("slow down", retry_after=7),
}


class CallableHarness(SinkHarness):
    """A function (sync or async, one event or a list) that raises what ``behaviour`` says."""

    def __init__(self, *, is_async: bool, batch: bool) -> None:
        self.is_async = is_async
        self.batch = batch
        self.received: list[int] = []
        self.arguments: list[object] = []

    def _record(self, argument: object, failure: Callable[[], Exception] | None) -> None:
        self.arguments.append(argument)
        if failure is not None:
            raise failure()
        events = argument if self.batch else [argument]
        assert isinstance(events, list)
        self.received.extend(event.id for event in events)

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        failure = FAILURES[behaviour]

        def sync_function(argument: object) -> None:
            self._record(argument, failure)

        async def async_function(argument: object) -> None:
            await asyncio.sleep(0)
            self._record(argument, failure)

        function = async_function if self.is_async else sync_function
        return CallableSink(function, batch=self.batch)

    async def received_ids(self) -> Sequence[int]:
        return list(self.received)


@pytest.mark.parametrize("batch", [False, True], ids=["per-event", "batch"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_callable_sink_conformance(is_async: bool, batch: bool) -> None:
    harness = CallableHarness(is_async=is_async, batch=batch)
    assert await exercise_sink(harness) == ALL_CHECKS
    expected = list if batch else Event
    assert all(isinstance(argument, expected) for argument in harness.arguments)


async def test_callable_sink_error_results_carry_what_the_function_raised() -> None:
    sink = await CallableHarness(is_async=False, batch=True).make_sink("retry_after")
    assert sink is not None
    results = await sink.deliver_batch([make_event(), make_event()])
    assert all(isinstance(r, RetryableError) and r.retry_after == 7 for r in results)


@pytest.fixture
def handlers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An importable module whose functions record what they are called with."""
    module = unique("fake_outbox_handlers")
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            """
            calls = []

            def record(argument):
                calls.append(argument)

            async def record_async(argument):
                calls.append(argument)
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    imported = importlib.import_module(module)
    yield imported
    del sys.modules[module]


def configured_callable(handlers: Any, function: str, **options: Any) -> Sink:
    settings = SinkSettings.model_validate(
        {"type": "callable", "target": f"{handlers.__name__}:{function}", **options}
    )
    types = sink_types(make_plugin_manager(entry_points=False))
    return build_sinks({"cache": settings}, types)["cache"]


@pytest.mark.parametrize("function", ["record", "record_async"])
async def test_callable_batch_true_gets_one_list(handlers: Any, function: str) -> None:
    sink = configured_callable(handlers, function, batch=True)
    events = [make_event() for _ in range(3)]
    assert await sink.deliver_batch(events) == [None, None, None]
    assert handlers.calls == [events]


@pytest.mark.parametrize("function", ["record", "record_async"])
async def test_callable_batch_false_gets_each_event(handlers: Any, function: str) -> None:
    sink = configured_callable(handlers, function)
    events = [make_event() for _ in range(3)]
    assert await sink.deliver_batch(events) == [None, None, None]
    assert sorted(e.id for e in handlers.calls) == sorted(e.id for e in events)


async def test_sync_function_runs_in_a_thread_and_leaves_the_loop_free() -> None:
    """The function waits for a flag that only the event loop sets: it can return only if
    it runs in another thread while the loop keeps running."""
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()
    threads: list[int] = []
    called = asyncio.Event()
    released = threading.Event()

    def blocking(event: Event) -> None:
        threads.append(threading.get_ident())
        loop.call_soon_threadsafe(called.set)
        if not released.wait(timeout=DEADLINE):
            raise AssertionError("the event loop was blocked")

    async def release_once_called() -> None:
        await called.wait()
        released.set()

    results, _ = await asyncio.gather(
        CallableSink(blocking).deliver_batch([make_event()]), release_once_called()
    )
    assert results == [None]
    assert len(threads) == 1
    assert threads[0] != loop_thread


async def test_object_with_async_call_is_awaited() -> None:
    class Handler:
        def __init__(self) -> None:
            self.seen: list[int] = []

        async def __call__(self, event: Event) -> None:
            await asyncio.sleep(0)
            self.seen.append(event.id)

    handler = Handler()
    event = make_event()
    assert await CallableSink(handler).deliver_batch([event]) == [None]
    assert handler.seen == [event.id]


# -- the postgres sink: conformance --------------------------------------------------------------


class OtherDatabaseHarness(SinkHarness):
    """The postgres sink writing into another database through ``dsn``.

    Its receiver refuses for good when a CHECK constraint rejects every row, and fails for
    now when the server cannot be reached. A database never asks for a delay."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = unique("sink")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (event_id bigint PRIMARY KEY, topic text, key text, "
                    "payload jsonb, headers jsonb, created_at timestamptz, "
                    "CONSTRAINT refuse_everything CHECK (false))"
                ).format(sql.Identifier(self.schema, "refusing"))
            )

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        if behaviour == "ok":
            return postgres_sink(schema=self.schema, table="events", dsn=self.url)
        if behaviour == "permanent":
            return postgres_sink(
                schema=self.schema, table="refusing", dsn=self.url, create_table=False
            )
        if behaviour == "retryable":  # nothing listens on port 1
            return postgres_sink(
                schema=self.schema,
                table="events",
                dsn="postgresql://outbox@127.0.0.1:1/none?connect_timeout=2",
            )
        return None

    async def received_ids(self) -> Sequence[int]:
        query = sql.SQL("SELECT event_id FROM {}").format(sql.Identifier(self.schema, "events"))
        with psycopg.connect(self.url) as conn:
            return [row[0] for row in conn.execute(query)]


async def test_postgres_sink_conformance_other_database(empty_database_url: str) -> None:
    ran = await exercise_sink(OtherDatabaseHarness(empty_database_url))
    assert ran == ["acks", "repeat_is_harmless", "retryable", "permanent", "concurrency"]


async def test_postgres_sink_repeat_leaves_one_row(empty_database_url: str) -> None:
    event = make_event(payload={"once": True})
    for _ in range(2):  # two sink instances: a relay restarted between deliveries
        async with postgres_sink(dsn=empty_database_url) as sink:
            assert await sink.deliver_batch([event, event]) == [None, None]
    rows = fetch(empty_database_url, "SELECT event_id, payload FROM audit.events")
    assert rows == [(event.id, {"once": True})]


# -- the postgres sink: same database, inside the caller's transaction ----------------------------


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    connection = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        yield connection
    finally:
        await connection.close()


async def test_deliver_in_transaction_commits_with_the_transaction(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    sink = postgres_sink()
    assert sink.transactional
    kept, dropped = make_event(), make_event()
    async with conn.transaction():
        assert await sink.deliver_in_transaction(conn, [kept]) == [None]
    async with conn.transaction(force_rollback=True):
        assert await sink.deliver_in_transaction(conn, [dropped]) == [None]
        inside = await (await conn.execute("SELECT count(*) FROM audit.events")).fetchone()
        assert inside == (2,)  # written, but only visible to this transaction
    assert fetch(database_url, "SELECT event_id FROM audit.events") == [(kept.id,)]


async def test_deliver_in_transaction_rolled_back_leaves_nothing(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    sink = postgres_sink()
    async with conn.transaction(force_rollback=True):
        await sink.deliver_in_transaction(conn, [make_event()])
    assert not table_exists(database_url, "audit", "events")  # the creation went too


async def test_table_creation_rolled_back_is_redone(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """A first batch rolled back takes the new table with it; the sink must not go on
    believing the table exists (every later batch would fail)."""
    sink = postgres_sink()
    async with conn.transaction(force_rollback=True):
        await sink.deliver_in_transaction(conn, [make_event()])
    event = make_event()
    results: list[BaseException | None] = []
    for _ in range(2):  # at most one failed attempt, as the relay would retry it
        try:
            async with conn.transaction():
                results = await sink.deliver_in_transaction(conn, [event])
            break
        except psycopg.errors.UndefinedTable:
            continue
    assert results == [None]
    assert fetch(database_url, "SELECT event_id FROM audit.events") == [(event.id,)]


# -- the postgres sink through a relay ------------------------------------------------------------


def assert_copied(outbox_url: str, sink_url: str, table: str, ids: list[int]) -> None:
    """The sink table holds exactly one row per event, with the event's columns."""
    events = fetch(
        outbox_url,
        "SELECT id, topic, key, payload, headers, created_at FROM outbox_events "
        "WHERE id = ANY(%s) ORDER BY id",
        ids,
    )
    copied = fetch(
        sink_url,
        f"SELECT event_id, topic, key, payload, headers, created_at FROM {table} ORDER BY 1",
    )
    assert copied == events
    assert len(copied) == len(ids)
    assert fetch(sink_url, f"SELECT count(*) FROM {table} WHERE delivered_at IS NULL") == [(0,)]


def statuses(url: str) -> list[str]:
    return [row[0] for row in fetch(url, "SELECT status FROM outbox_events ORDER BY id")]


def make_pending_again(url: str) -> None:
    """As if every event had to be delivered again (a lost acknowledgement)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE outbox_events SET status = 'pending', deliveries = '{}', process_at = now(), "
            "done_at = NULL"
        )


async def test_relay_into_another_schema_of_the_same_database(database_url: str) -> None:
    ids = publish(database_url, 5)
    await drain(database_url, {"audit": postgres_sink(schema="audit", table="events")})
    assert statuses(database_url) == ["done"] * 5
    assert_copied(database_url, database_url, "audit.events", ids)

    make_pending_again(database_url)
    await drain(database_url, {"audit": postgres_sink(schema="audit", table="events")})
    assert statuses(database_url) == ["done"] * 5
    assert_copied(database_url, database_url, "audit.events", ids)


async def test_relay_into_another_database(database_url: str, empty_database_url: str) -> None:
    ids = publish(database_url, 5)
    sink = postgres_sink(schema="archive", table="orders", dsn=empty_database_url)
    assert not sink.transactional
    await drain(database_url, {"archive": sink})
    assert statuses(database_url) == ["done"] * 5
    assert_copied(database_url, empty_database_url, "archive.orders", ids)

    make_pending_again(database_url)
    again = postgres_sink(schema="archive", table="orders", dsn=empty_database_url)
    await drain(database_url, {"archive": again})
    assert_copied(database_url, empty_database_url, "archive.orders", ids)


# -- exactly once: killed between the insert and the settle --------------------------------------

DIES_AFTER_INSERT = """
import asyncio
import os
import signal
import sys

from outbox.postgres_sink import PostgresOptions, PostgresSink
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options


class DiesAfterInsert(PostgresSink):
    async def deliver_in_transaction(self, conn, events):
        results = await super().deliver_in_transaction(conn, events)
        cursor = await conn.execute("SELECT count(*) FROM audit.events")
        print("inserted, not committed:", (await cursor.fetchone())[0], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        return results


async def main(url):
    sink = DiesAfterInsert(PostgresOptions(schema="audit", table="events"))
    options = relay_options(lease_seconds=1, delivery_timeout=0.5, listen=False)
    relay = Relay(url, {"audit": sink}, [Subscription(("#",), ("audit",))], options)
    await relay.run(once=True)


asyncio.run(main(sys.argv[1]))
print("still alive", flush=True)
"""


async def test_relay_killed_between_insert_and_settle_leaves_no_duplicate(
    database_url: str, conn: psycopg.AsyncConnection[Any], tmp_path: Path
) -> None:
    async with conn.transaction():  # create the sink table, so "no row" means something
        await postgres_sink().deliver_in_transaction(conn, [])
    (event_id,) = publish(database_url, 1)
    script = tmp_path / "dies_after_insert.py"
    script.write_text(DIES_AFTER_INSERT, encoding="utf-8")

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        database_url,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode == -signal.SIGKILL, stderr.decode()
    assert stdout.decode().splitlines() == ["inserted, not committed: 1"]
    assert fetch(database_url, "SELECT count(*) FROM audit.events") == [(0,)]
    assert statuses(database_url) == ["processing"]

    options = fast_options(lease_seconds=1, delivery_timeout=0.5)
    await drain(database_url, {"audit": postgres_sink()}, options)
    assert fetch(database_url, "SELECT event_id FROM audit.events") == [(event_id,)]
    # The killed relay's attempt is given back (it died with the event in an ordinary batch:
    # a suspect, retried alone, decision 10), so only the second counts.
    assert fetch(database_url, "SELECT status, attempts FROM outbox_events") == [("done", 1)]
