"""Sync callable sinks run in threads of their own (issue 11, finding 4).

They used to share the event loop's default thread pool (``asyncio.to_thread``): as many
hung calls as that pool has threads starved every other sync call, of the same sink and of
every other one; the queued calls timed out and their events failed without ever being
called. Now each sync sink has a pool of ``concurrency`` threads, a batch goes to it in one
hop per thread, and a hung call costs only its own event a timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

import outbox
from outbox.callable_sink import CallableSink
from outbox.relay import Relay, RelayStats
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.sinks import Event

DEADLINE = 30.0
HANG = 20.0  # a hung call returns by itself after this long, so no test leaves it behind


def default_pool_size() -> int:
    """Threads in the event loop's default pool (ThreadPoolExecutor's default)."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()
    return min(32, (cpus or 1) + 4)


@pytest.fixture
def released() -> Iterator[threading.Event]:
    """Set at the end of the test: every hung call returns."""
    event = threading.Event()
    try:
        yield event
    finally:
        event.set()


async def statuses(url: str, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(
            "SELECT id, status, last_error FROM outbox_events WHERE id = ANY(%s)", (ids,)
        )
        return {row[0]: (row[1], row[2]) for row in await cursor.fetchall()}


async def until(check: Callable[[], Awaitable[bool]], task: asyncio.Task[Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        if task.done():
            task.result()
            raise AssertionError(f"the relay stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_hung_calls_time_out_alone_and_other_sync_calls_go_on(
    database_url: str, released: threading.Event
) -> None:
    """More calls hang than the default pool has threads: every other event is still
    delivered, by the same sink and by a second sync sink; only the hung events time out."""
    count = default_pool_size() + 1
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        published = [await outbox.publish(conn, "order.paid", {"n": n}) for n in range(3 * count)]
    ids = [event.id for event in published if event.id is not None]
    hung = set(ids[:count])
    slow_calls: list[int] = []
    other_calls: list[int] = []

    def slow(event: Event) -> None:
        if event.id in hung:
            released.wait(HANG)
        else:
            slow_calls.append(event.id)

    def other(event: Event) -> None:
        other_calls.append(event.id)

    slow_sink, other_sink = CallableSink(slow), CallableSink(other)
    slow_sink.concurrency = count + 4  # room for the others beside the hung calls
    retry = dataclasses.replace(relay_options().retry, max_attempts=1)
    options = relay_options(
        delivery_timeout=2.0, lease_seconds=10.0, poll_interval=0.1, retry=retry
    )
    subscription = Subscription(("order.#",), ("slow", "other"))
    relay = Relay(database_url, {"slow": slow_sink, "other": other_sink}, [subscription], options)
    task: asyncio.Task[RelayStats] = asyncio.create_task(relay.run())
    try:

        async def settled() -> bool:
            found = await statuses(database_url, ids)
            return all(status in ("done", "failed") for status, _ in found.values())

        await until(settled, task, "every event to settle")
    finally:
        relay.stop()
        await asyncio.wait_for(task, DEADLINE)
    assert sorted(other_calls) == ids
    assert sorted(slow_calls) == sorted(set(ids) - hung)
    found = await statuses(database_url, ids)
    assert {i for i, (status, _) in found.items() if status == "failed"} == hung
    assert all("timed out" in (found[i][1] or "") for i in hung)


async def test_an_event_not_started_by_the_deadline_is_never_called(
    released: threading.Event,
) -> None:
    """One thread: the first event is delivered, the second hangs past the deadline, the
    two after it are never called; every call ran on the sink's own thread, and the sink's
    next batch is delivered although its only thread is still stuck."""
    calls: list[tuple[int, threading.Thread]] = []

    def function(event: Event) -> None:
        calls.append((event.id, threading.current_thread()))
        if event.id == 2:
            released.wait(HANG)

    sink = CallableSink(function)
    sink.concurrency = 1
    events = [make_event(n) for n in range(1, 5)]
    results = await sink.deliver_batch(events, timeout=0.5)
    assert results[0] is None
    assert all(isinstance(r, outbox.RetryableError) for r in results[1:]), results
    assert all("timed out" in str(r) for r in results[1:])
    assert await sink.deliver_batch([make_event(5), make_event(6)], timeout=5.0) == [None, None]

    released.set()
    stuck = calls[1][1]
    await asyncio.to_thread(stuck.join, DEADLINE)  # a stuck thread ends once its call returns
    await sink.aclose()
    assert [event_id for event_id, _ in calls] == [1, 2, 5, 6]
    assert all(thread.name.startswith("outbox-callable-") for _, thread in calls), calls
    assert not stuck.is_alive()


async def test_batch_function_runs_in_the_sinks_thread(released: threading.Event) -> None:
    """``batch = true``: one call with the whole batch, on the sink's own thread; a hung
    one times the batch out, and the sink's next batch still goes through."""
    calls: list[tuple[list[int], str]] = []

    def function(events: list[Event]) -> None:
        calls.append(([event.id for event in events], threading.current_thread().name))
        if events[0].id == 1:
            released.wait(HANG)

    sink = CallableSink(function, batch=True)
    sink.concurrency = 1
    first = await sink.deliver_batch([make_event(1), make_event(2)], timeout=0.5)
    assert all("timed out" in str(r) for r in first), first
    assert await sink.deliver_batch([make_event(3)], timeout=5.0) == [None]
    await sink.aclose()
    assert [ids for ids, _ in calls] == [[1, 2], [3]]
    assert all(name.startswith("outbox-callable-") for _, name in calls)


def make_event(event_id: int) -> Event:
    return Event(
        id=event_id,
        topic="order.paid",
        payload={},
        key=None,
        headers={},
        created_at=dt.datetime.now(dt.UTC),
        attempt=1,
    )
