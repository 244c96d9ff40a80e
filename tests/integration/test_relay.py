"""The relay against a real PostgreSQL: fan-out, retries, ordering per key, leases, waking up,
reconnecting, retention and stopping.

Each test runs an in-process :class:`Relay` with sinks that record what they receive, publishes
with :func:`outbox.publish` on psycopg connections, and waits for the database to reach the
expected state with a deadline loop. Nothing here asserts a duration except the Retry-After
gap, which is behaviour: the second attempt must not come before the sink asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import psycopg
import pytest
from psycopg.rows import DictRow, dict_row

import outbox
from outbox.exceptions import PermanentError, RetryableError
from outbox.relay import Relay, RelayOptions, RelayStats
from outbox.retry import RetryPolicy
from outbox.routing import Subscription
from outbox.sinks import Event, Sink

DEADLINE = 10.0
FAST_RETRY = RetryPolicy(max_attempts=5, base_seconds=0.01, cap_seconds=0.05, jitter=0.0)
Db = psycopg.AsyncConnection[DictRow]
Rule = Callable[[Event], BaseException | None]


def options(**overrides: Any) -> RelayOptions:
    """Small timings: every wait in these tests is short."""
    values: dict[str, Any] = {
        "poll_interval": 0.05,
        "lease_seconds": 5.0,
        "delivery_timeout": 4.0,
        "retry": FAST_RETRY,
        "maintenance_interval": 0.1,
    }
    values.update(overrides)
    return RelayOptions(**values)


class Recorder(Sink):
    """Records every event it is handed, with the monotonic time it arrived; ``rule`` decides
    what each delivery raises (``None``: success)."""

    def __init__(self, rule: Rule | None = None, *, delay: float = 0.0) -> None:
        super().__init__()
        self.rule = rule
        self.delay = delay
        self.received: list[tuple[float, Event]] = []
        self.closed = False

    async def deliver(self, event: Event) -> None:
        self.received.append((time.monotonic(), event))
        if self.delay:
            await asyncio.sleep(self.delay)
        error = self.rule(event) if self.rule else None
        if error is not None:
            raise error

    async def aclose(self) -> None:
        self.closed = True

    def ids(self) -> list[int]:
        return [event.id for _, event in self.received]

    def times_of(self, event_id: int) -> list[float]:
        return [at for at, event in self.received if event.id == event_id]


class Gate(Recorder):
    """Holds every delivery until :attr:`release` is set; :attr:`entered` says one started."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def deliver(self, event: Event) -> None:
        self.received.append((time.monotonic(), event))
        self.entered.set()
        await self.release.wait()


@dataclasses.dataclass
class Running:
    relay: Relay
    task: asyncio.Task[RelayStats]

    async def until(
        self, check: Callable[[], Awaitable[bool]], what: str, within: float = DEADLINE
    ) -> None:
        """Wait until ``check()`` holds; fail if the relay dies or the deadline passes."""
        deadline = time.monotonic() + within
        while not await check():
            if self.task.done():
                self.task.result()  # re-raises what killed the relay
                raise AssertionError(f"the relay stopped before {what}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running(relay: Relay, *, drain: bool = False) -> AsyncIterator[Running]:
    task = asyncio.create_task(relay.run(drain=drain))
    try:
        yield Running(relay, task)
    finally:
        relay.stop()
        await asyncio.wait_for(task, DEADLINE)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Db]:
    """An autocommit connection for looking at (and tampering with) the outbox table."""
    conn = await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    )
    try:
        yield conn
    finally:
        await conn.close()


async def publish(url: str, topic: str, payload: Any = None, **kwargs: Any) -> int:
    """Publish one event in a transaction of its own; return its id."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        event = await outbox.publish(conn, topic, payload or {}, **kwargs)
    assert event.id is not None
    return event.id


async def rows(db: Db) -> dict[int, DictRow]:
    cursor = await db.execute("SELECT * FROM outbox_events ORDER BY id")
    return {row["id"]: row for row in await cursor.fetchall()}


async def row(db: Db, event_id: int) -> DictRow:
    cursor = await db.execute("SELECT * FROM outbox_events WHERE id = %s", (event_id,))
    found = await cursor.fetchone()
    assert found is not None, f"event {event_id} is gone"
    return found


def status_is(db: Db, status: str, *ids: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        current = await rows(db)
        return all(current[i]["status"] == status for i in ids)

    return check


def nothing_in(db: Db, *statuses: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        cursor = await db.execute(
            "SELECT count(*) AS n FROM outbox_events WHERE status = ANY(%s)", (list(statuses),)
        )
        found = await cursor.fetchone()
        return found is not None and found["n"] == 0

    return check


def relay_for(
    url: str,
    sinks: dict[str, Sink],
    topics: Sequence[str] = ("order.#",),
    **overrides: Any,
) -> Relay:
    subscription = Subscription(topics=tuple(topics), sinks=tuple(sinks))
    return Relay(url, sinks, [subscription], options(**overrides))


def fail_first(times: int, error: Callable[[], BaseException] = RetryableError) -> Rule:
    return lambda event: error() if event.attempt <= times else None


# -- delivery and settling -----------------------------------------------------------------


async def test_fan_out_retries_only_the_sink_that_failed(database_url: str, db: Db) -> None:
    flaky = Recorder(fail_first(2, lambda: RetryableError("flaky is down")))
    steady = Recorder()
    relay = relay_for(database_url, {"flaky": flaky, "steady": steady})
    async with running(relay) as run:
        event_id = await publish(database_url, "order.paid", {"order": 1})
        await run.until(status_is(db, "done", event_id), "the event to be done")

    assert steady.ids() == [event_id], "the steady sink saw the event more than once"
    assert flaky.ids() == [event_id] * 3
    assert [event.attempt for _, event in flaky.received] == [1, 2, 3]
    done = await row(db, event_id)
    assert done["attempts"] == 3
    assert done["deliveries"]["steady"]["status"] == "delivered"
    assert done["deliveries"]["steady"]["attempts"] == 1
    assert done["deliveries"]["flaky"]["status"] == "delivered"
    assert done["deliveries"]["flaky"]["attempts"] == 3
    assert [(e["sink"], e["attempt"]) for e in done["errors"]] == [("flaky", 1), ("flaky", 2)]
    assert done["errors"][0]["error"] == "RetryableError: flaky is down"
    assert done["locked_by"] is None
    assert done["lease_token"] is None
    assert done["done_at"] is not None
    assert relay.stats.done == 1
    assert relay.stats.retried == 2
    assert flaky.closed
    assert steady.closed


async def test_a_permanent_error_fails_the_event(database_url: str, db: Db) -> None:
    sink = Recorder(lambda event: PermanentError("400 Bad Request"))
    relay = relay_for(database_url, {"webhook": sink})
    async with running(relay) as run:
        event_id = await publish(database_url, "order.paid")
        await run.until(status_is(db, "failed", event_id), "the event to fail")

    failed = await row(db, event_id)
    assert sink.ids() == [event_id]
    assert failed["attempts"] == 1
    assert failed["last_error"] == "PermanentError: 400 Bad Request"
    assert failed["errors"] == [
        {
            "at": failed["errors"][0]["at"],
            "sink": "webhook",
            "attempt": 1,
            "error": "PermanentError: 400 Bad Request",
        }
    ]
    assert failed["deliveries"]["webhook"]["status"] == "failed"
    assert failed["done_at"] is not None
    assert relay.stats.failed == 1


async def test_an_error_message_with_a_nul_byte_is_stored(database_url: str, db: Db) -> None:
    sink = Recorder(lambda event: PermanentError("bad \x00 byte"))
    relay = relay_for(database_url, {"webhook": sink})
    async with running(relay) as run:
        event_id = await publish(database_url, "order.paid")
        await run.until(status_is(db, "failed", event_id), "the event to fail")
    failed = await row(db, event_id)
    assert failed["last_error"].startswith("PermanentError: bad ")
    assert failed["last_error"].endswith(" byte")


async def test_max_attempts_fails_the_event(database_url: str, db: Db) -> None:
    sink = Recorder(lambda event: RuntimeError(f"attempt {event.attempt}"))
    policy = dataclasses.replace(FAST_RETRY, max_attempts=3)
    relay = relay_for(database_url, {"webhook": sink}, retry=policy)
    async with running(relay) as run:
        event_id = await publish(database_url, "order.paid")
        await run.until(status_is(db, "failed", event_id), "the event to fail")

    failed = await row(db, event_id)
    assert [event.attempt for _, event in sink.received] == [1, 2, 3]
    assert failed["attempts"] == 3
    assert failed["deliveries"]["webhook"]["status"] == "failed"
    assert failed["deliveries"]["webhook"]["attempts"] == 3
    assert failed["last_error"] == "RuntimeError: attempt 3"
    assert [e["attempt"] for e in failed["errors"]] == [1, 2, 3]


async def test_retry_after_is_honoured(database_url: str, db: Db) -> None:
    sink = Recorder(fail_first(1, lambda: RetryableError("429", retry_after=0.5)))
    relay = relay_for(database_url, {"webhook": sink})  # the backoff alone would be 10 ms
    async with running(relay) as run:
        event_id = await publish(database_url, "order.paid")
        await run.until(status_is(db, "done", event_id), "the event to be done")

    first, second = sink.times_of(event_id)
    assert second - first >= 0.4, f"retried {second - first:.3f}s after a Retry-After of 0.5s"


async def test_an_infinite_retry_after_does_not_kill_the_relay(database_url: str, db: Db) -> None:
    sink = Recorder(lambda event: RetryableError("later", retry_after=float("inf")))
    relay = relay_for(database_url, {"sink": sink})
    async with running(relay) as run:
        event_id = await publish(database_url, "order.paid")
        await run.until(_stat(relay, "retried", 1), "the retry to be scheduled")
        marker = await publish(database_url, "order.marker", {"n": 2})
        await run.until(_stat(relay, "retried", 2), "the relay to keep working")
    waiting = await rows(db)
    assert [waiting[i]["status"] for i in (event_id, marker)] == ["pending", "pending"]
    assert waiting[event_id]["process_at"] > waiting[event_id]["created_at"] + dt.timedelta(days=1)


async def test_an_unrouted_topic_is_done_and_says_so(database_url: str, db: Db) -> None:
    sink = Recorder()
    relay = relay_for(database_url, {"webhook": sink}, topics=["order.#"])
    async with running(relay) as run:
        event_id = await publish(database_url, "invoice.paid")
        await run.until(status_is(db, "done", event_id), "the event to be done")

    assert sink.received == []
    done = await row(db, event_id)
    assert done["deliveries"] == {"*": {"status": "unrouted"}}
    assert done["errors"] == []


# -- order per key -------------------------------------------------------------------------


async def test_a_key_waits_for_an_earlier_id_that_commits_later(database_url: str, db: Db) -> None:
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink})
    async with (
        await psycopg.AsyncConnection.connect(database_url) as tx_a,
        await psycopg.AsyncConnection.connect(database_url) as tx_b,
        running(relay) as run,
    ):
        first = await outbox.publish(tx_a, "order.created", {"n": 1}, key="k")
        second = await outbox.publish(tx_b, "order.paid", {"n": 2}, key="k")
        assert first.id is not None
        assert second.id is not None
        assert first.id < second.id
        await tx_b.commit()
        # An unkeyed event published after B committed: once it is delivered, the relay
        # has claimed at least once while B's event was committed and A's was not.
        marker = await publish(database_url, "order.marker")
        await run.until(status_is(db, "done", marker), "the marker to be done")
        assert sink.ids() == [marker], "key k was delivered out of order"
        assert (await row(db, second.id))["status"] == "pending"

        await tx_a.commit()
        await run.until(status_is(db, "done", first.id, second.id), "key k to be delivered")

    assert sink.ids() == [marker, first.id, second.id]


async def test_a_failed_keyed_event_parks_its_key_only(database_url: str, db: Db) -> None:
    sink = Recorder(lambda event: PermanentError("no") if event.payload.get("poison") else None)
    relay = relay_for(database_url, {"sink": sink})
    poison = await publish(database_url, "order.paid", {"poison": True}, key="k1")
    parked = await publish(database_url, "order.paid", {"n": 2}, key="k1")
    other = await publish(database_url, "order.paid", {"n": 3}, key="k2")
    async with running(relay) as run:
        await run.until(status_is(db, "failed", poison), "the poison event to fail")
        await run.until(status_is(db, "done", other), "the other key to flow")
        later = await publish(database_url, "order.paid", {"n": 4}, key="k2")
        unkeyed = await publish(database_url, "order.paid", {"n": 5})
        await run.until(status_is(db, "done", later, unkeyed), "later events to flow")

    assert parked not in sink.ids()
    held = await row(db, parked)
    assert held["status"] == "pending"
    assert held["attempts"] == 0


# -- leases ----------------------------------------------------------------------------------


async def test_a_late_settle_after_the_lease_expired_changes_nothing(
    database_url: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relay 1 delivers, then stalls before its settle until its lease has expired, the row
    was recovered, and relay 2 delivered and settled it. Relay 1's settle must be a no-op.

    The stall is in the settle rather than in the sink: ``delivery_timeout`` is shorter than
    the lease, so a slow sink alone would be cut off and settle in time."""
    sink_1, sink_2 = Recorder(lambda event: RetryableError("relay 1 says retry")), Recorder()
    relay_1 = relay_for(
        database_url, {"sink": sink_1}, lease_seconds=0.5, delivery_timeout=0.4, name="relay-1"
    )
    relay_2 = relay_for(database_url, {"sink": sink_2}, name="relay-2")
    stalled, resume = asyncio.Event(), asyncio.Event()
    real_settle = relay_1._store.settle

    async def late_settle(*args: Any, **kwargs: Any) -> set[int]:
        stalled.set()
        await resume.wait()
        return await real_settle(*args, **kwargs)

    monkeypatch.setattr(relay_1._store, "settle", late_settle)
    event_id = await publish(database_url, "order.paid")
    async with running(relay_1) as run_1:
        await run_1.until(_is_set(stalled), "relay 1 to reach its settle")
        async with running(relay_2) as run_2:
            await run_2.until(status_is(db, "done", event_id), "relay 2 to deliver")
        before = await row(db, event_id)
        resume.set()
        await run_1.until(_stat(relay_1, "leases_lost", 1), "relay 1 to lose its lease")
        after = await row(db, event_id)

    assert sink_1.ids() == [event_id]
    assert sink_2.ids() == [event_id]
    assert after == before
    assert after["status"] == "done"
    assert after["deliveries"]["sink"]["status"] == "delivered"
    assert after["errors"] == []
    assert after["attempts"] == 2
    assert relay_1.stats.done == relay_1.stats.retried == 0
    assert relay_2.stats.done == 1


async def test_an_expired_lease_is_recovered(database_url: str, db: Db) -> None:
    event_id = await publish(database_url, "order.paid")
    await db.execute(
        "UPDATE outbox_events SET status = 'processing', attempts = 1, locked_by = 'dead',"
        " locked_until = now() - interval '1 second', lease_token = gen_random_uuid()"
    )
    sink = Recorder()
    async with running(relay_for(database_url, {"sink": sink})) as run:
        await run.until(status_is(db, "done", event_id), "the abandoned event to be delivered")
    assert sink.ids() == [event_id]
    assert (await row(db, event_id))["attempts"] == 2


# -- waking up -------------------------------------------------------------------------------


async def test_notify_wakes_the_relay(database_url: str, db: Db) -> None:
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink}, poll_interval=30.0)
    async with running(relay) as run:
        await run.until(_listening(relay), "the relay to listen")
        await asyncio.sleep(0.1)  # let the catch-up claim after LISTEN pass
        event_id = await publish(database_url, "order.paid")
        await run.until(status_is(db, "done", event_id), "a NOTIFY to wake the relay")


async def test_a_notification_during_the_idle_check_is_not_lost(
    database_url: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event committed between the relay's last empty claim and its wait must wake it."""
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink}, poll_interval=30.0)
    published: list[int] = []
    real = relay._store.next_due

    async def publish_meanwhile(conn: Any) -> tuple[float | None, bool]:
        if relay.listening and not published:
            published.append(await publish(database_url, "order.paid"))
            # The listener forwards the NOTIFY while this round is still deciding to wait.
            await asyncio.wait_for(relay._wake.wait(), DEADLINE)
        return await real(conn)

    monkeypatch.setattr(relay._store, "next_due", publish_meanwhile)
    async with running(relay) as run:
        await run.until(lambda: _true(bool(published)), "the event to be published")
        await run.until(status_is(db, "done", *published), "the relay to wake up")


async def test_the_listener_reconnects(database_url: str, db: Db) -> None:
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink}, poll_interval=30.0)
    async with running(relay) as run:
        await run.until(_listening(relay), "the relay to listen")
        old = await _listener_pids(db)
        assert len(old) == 1
        await db.execute("SELECT pg_terminate_backend(%s)", (old[0],))

        async def listening_again() -> bool:
            pids = await _listener_pids(db)
            return relay.listening and len(pids) == 1 and pids != old

        await run.until(listening_again, "the listener to reconnect")
        await asyncio.sleep(0.1)  # let the catch-up claim after LISTEN pass
        event_id = await publish(database_url, "order.paid")
        await run.until(status_is(db, "done", event_id), "a NOTIFY on the new listener")


async def test_poll_only_mode_delivers(database_url: str, db: Db) -> None:
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink}, listen=False, poll_interval=0.1)
    async with running(relay) as run:
        event_id = await publish(database_url, "order.paid")
        await run.until(status_is(db, "done", event_id), "a poll to find the event")
        assert not relay.listening
        assert await _listener_pids(db) == []
    assert sink.ids() == [event_id]


async def test_a_scheduled_event_waits_until_it_is_due(database_url: str, db: Db) -> None:
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink}, poll_interval=30.0)
    async with running(relay) as run:
        delayed = await publish(database_url, "order.reminder", delay=1.0)
        marker = await publish(database_url, "order.marker")
        await run.until(status_is(db, "done", marker), "the marker to be done")
        assert (await row(db, delayed))["status"] == "pending"
        await run.until(status_is(db, "done", delayed), "the delayed event to be delivered")

    done = await row(db, delayed)
    assert done["attempts"] == 1
    assert done["done_at"] >= done["process_at"]
    assert sink.ids() == [marker, delayed]


async def test_a_parked_key_does_not_hide_when_the_next_event_is_due(
    database_url: str, db: Db
) -> None:
    """A due row the relay cannot claim must not make it sleep a whole poll interval past
    the next scheduled event. (The key is parked by hand: with a 30 s poll, a keyed claim
    could wait on the xmin horizon of a busy shared server, which is not the point here.)"""
    poison = await publish(database_url, "order.paid", key="k")
    parked = await publish(database_url, "order.paid", key="k")
    await db.execute(
        "UPDATE outbox_events SET status = 'failed', done_at = now() WHERE id = %s", (poison,)
    )
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink}, poll_interval=30.0)
    async with running(relay) as run:
        delayed = await publish(database_url, "order.reminder", delay=0.5)
        await run.until(status_is(db, "done", delayed), "the relay to wake when it is due")
    assert sink.ids() == [delayed]
    assert (await row(db, parked))["status"] == "pending"


# -- upkeep and lifecycle --------------------------------------------------------------------


async def test_retention_deletes_done_events(database_url: str, db: Db) -> None:
    sink = Recorder(lambda event: PermanentError("no") if event.payload.get("bad") else None)
    relay = relay_for(database_url, {"sink": sink}, retention_seconds=0.0)
    async with running(relay) as run:
        failed = await publish(database_url, "order.paid", {"bad": True})
        ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(3)]

        async def only_the_failed_one_left() -> bool:
            return list(await rows(db)) == [failed]

        await run.until(only_the_failed_one_left, "retention to delete the done events")
    assert sorted(sink.ids()) == sorted([failed, *ids])
    assert (await row(db, failed))["status"] == "failed"


async def test_drain_returns_once_nothing_is_due(database_url: str, db: Db) -> None:
    sink = Recorder(lambda event: PermanentError("no") if event.payload.get("bad") else None)
    ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(25)]
    poison = await publish(database_url, "order.paid", {"bad": True}, key="k")
    parked = await publish(database_url, "order.paid", key="k")
    later = await publish(database_url, "order.paid", delay=3600)
    relay = relay_for(database_url, {"sink": sink}, batch_size=10, concurrency=2)

    stats = await asyncio.wait_for(relay.run(drain=True), DEADLINE)

    current = await rows(db)
    assert all(current[i]["status"] == "done" for i in ids)
    assert current[poison]["status"] == "failed"
    assert current[parked]["status"] == "pending"
    assert current[later]["status"] == "pending"
    assert stats.done == 25
    assert stats.failed == 1
    assert sorted(sink.ids()) == sorted([*ids, poison])


async def test_stop_lets_the_batch_in_flight_finish(database_url: str, db: Db) -> None:
    sink = Gate()
    relay = relay_for(database_url, {"sink": sink})
    ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(3)]
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.wait_for(sink.entered.wait(), DEADLINE)
        relay.stop()
        late = await publish(database_url, "order.paid", {"n": "late"})
        await asyncio.sleep(0.2)
        assert not task.done(), "run() returned while a batch was in flight"
        sink.release.set()
        stats = await asyncio.wait_for(task, DEADLINE)
    finally:
        relay.stop()
        sink.release.set()
        await asyncio.wait_for(task, DEADLINE)

    current = await rows(db)
    assert [current[i]["status"] for i in ids] == ["done"] * 3
    assert current[late]["status"] == "pending", "a stopping relay claimed a new batch"
    assert current[late]["attempts"] == 0
    assert stats.done == 3
    assert sorted(sink.ids()) == ids


async def test_the_relay_rides_out_killed_connections(database_url: str, db: Db) -> None:
    killed = asyncio.Event()

    async def kill_relay_connections() -> None:
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        killed.set()

    class KillOnce(Recorder):
        kill_started = False

        async def deliver(self, event: Event) -> None:
            await super().deliver(event)
            if len(self.received) >= 5 and not self.kill_started:
                self.kill_started = True
                await kill_relay_connections()  # mid-batch: this batch cannot settle

    sink = KillOnce(delay=0.01)
    relay = relay_for(
        database_url,
        {"sink": sink},
        batch_size=3,
        lease_seconds=1.0,
        delivery_timeout=0.5,
    )
    ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(12)]
    async with running(relay) as run:
        await run.until(_is_set(killed), "the connections to be killed")
        ids += [await publish(database_url, "order.paid", {"n": n}) for n in range(12, 15)]
        await run.until(status_is(db, "done", *ids), "every event to be delivered")
        await run.until(_listening(relay), "the listener to be back")
    assert await nothing_in(db, "pending", "processing")()
    assert set(sink.ids()) == set(ids)


def test_subscriptions_must_name_existing_sinks(database_url: str) -> None:
    with pytest.raises(ValueError, match="missing"):
        Relay(database_url, {"a": Recorder()}, [Subscription(("#",), ("a", "missing"))])


# -- helpers -------------------------------------------------------------------------------


async def _true(value: bool) -> bool:
    return value


def _is_set(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(event.is_set())


def _listening(relay: Relay) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(relay.listening)


def _stat(relay: Relay, name: str, value: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(getattr(relay.stats, name) == value)


async def _listener_pids(db: Db) -> list[int]:
    cursor = await db.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    return [found["pid"] for found in await cursor.fetchall()]
