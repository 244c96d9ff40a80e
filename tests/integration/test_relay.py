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
from outbox.exceptions import (
    DatabaseUnavailable,
    MigrationError,
    PermanentError,
    RetryableError,
)
from outbox.postgres_sink import PostgresOptions, PostgresSink
from outbox.relay import Relay, RelayOptions, RelayStats
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import RelaySettings
from outbox.sinks import Event, Sink
from outbox.store import Connector

DEADLINE = 10.0
FAST_RETRY = dataclasses.replace(
    relay_options().retry, max_attempts=5, base_seconds=0.01, cap_seconds=0.05, jitter=0.0
)
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
    return relay_options(**values)


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
    assert failed["last_error"].startswith("RuntimeError: attempt 3 (at ")
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
    # Parked for the sink the poison failed at, and only for it (decision 11).
    assert held["deliveries"]["sink"]["status"] == "waiting"


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
    # Relay 1's claim was given back when its lease expired (a row in flight at a relay's
    # death or stall is a suspect, not charged): only relay 2's attempt counts.
    assert after["attempts"] == 1
    assert (after["suspect"], after["crashes"]) == (False, 0)
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
    recovered = await row(db, event_id)
    # The dead relay's attempt is given back: it died with the event in a batch (here, of
    # one, but not claimed as a suspect), so the crash is not this event's to carry.
    assert recovered["attempts"] == 1
    assert (recovered["suspect"], recovered["crashes"]) == (False, 0)


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


async def test_a_draining_relay_ends_soon_after_another_relays_batch(
    database_url: str, db: Db
) -> None:
    """A draining relay that finds only rows in flight at another relay looks again soon,
    not after its poll interval: that relay's settle sends no NOTIFY."""
    gate = Gate()
    holder = relay_for(database_url, {"sink": gate}, name="holder")
    drainer = relay_for(database_url, {"sink": Recorder()}, name="drainer", poll_interval=60)
    event_id = await publish(database_url, "order.paid")
    async with running(holder) as run:
        await asyncio.wait_for(gate.entered.wait(), DEADLINE)
        draining = asyncio.create_task(drainer.run(drain=True))
        try:
            await asyncio.sleep(0.5)
            assert not draining.done(), "the drain ended while another relay held an event"
            gate.release.set()
            await run.until(status_is(db, "done", event_id), "the held event to be done")
            stats = await asyncio.wait_for(draining, 15)  # the poll interval is 60 s
        finally:
            drainer.stop()
            gate.release.set()
            await asyncio.wait_for(draining, DEADLINE)
    assert stats.claimed == 0


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


@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
async def test_the_relay_rides_out_killed_connections(
    database_url: str, db: Db, claim_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
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
        claim_mode=claim_mode,
    )
    ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(12)]
    async with running(relay) as run:
        await run.until(_is_set(killed), "the connections to be killed")
        ids += [await publish(database_url, "order.paid", {"n": n}) for n in range(12, 15)]
        await run.until(status_is(db, "done", *ids), "every event to be delivered")
        await run.until(_listening(relay), "the listener to be back")
    assert await nothing_in(db, "pending", "processing")()
    assert set(sink.ids()) == set(ids)
    if claim_mode == "lock":
        # The killed batch could not commit: its events went out again, nothing settled it
        # on another connection.
        assert "will be delivered again" in caplog.text
        assert len(sink.ids()) > len(ids)


# -- claim mode "lock": one transaction per batch, the row lock as the lease ------------------

# Every UPDATE of an outbox row, in order, with the status it wrote: the row versions a
# claim mode costs, and proof that no `processing` status was ever written.
STATUS_LOG = """
CREATE TABLE status_log (seq bigserial PRIMARY KEY, id bigint NOT NULL, status text NOT NULL);
CREATE FUNCTION log_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_log (id, status) VALUES (NEW.id, NEW.status);
    RETURN NULL;
END;
$$;
CREATE TRIGGER log_status AFTER UPDATE ON outbox_events
    FOR EACH ROW EXECUTE FUNCTION log_status();
"""


async def status_writes(db: Db) -> dict[int, list[str]]:
    cursor = await db.execute("SELECT id, status FROM status_log ORDER BY seq")
    writes: dict[int, list[str]] = {}
    for found in await cursor.fetchall():
        writes.setdefault(found["id"], []).append(found["status"])
    return writes


async def publish_together(
    url: str, payloads: Sequence[dict[str, Any]], **kwargs: Any
) -> list[int]:
    """Publish events in one transaction (so that one claim can take them all)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        events = [await outbox.publish(conn, "order.paid", p, **kwargs) for p in payloads]
    return [event.id for event in events if event.id is not None]


async def test_lock_mode_delivers_and_settles_with_one_write_per_event(
    database_url: str, db: Db
) -> None:
    await db.execute(STATUS_LOG)
    first, second = Recorder(), Recorder()
    relay = relay_for(database_url, {"first": first, "second": second}, claim_mode="lock")
    ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(3)]
    async with running(relay) as run:
        await run.until(status_is(db, "done", *ids), "the events to be done")

    assert sorted(first.ids()) == sorted(second.ids()) == ids
    current = await rows(db)
    for event_id in ids:
        done = current[event_id]
        assert done["attempts"] == 1
        sinks = {
            name: (state["status"], state["attempts"]) for name, state in done["deliveries"].items()
        }
        assert sinks == {"first": ("delivered", 1), "second": ("delivered", 1)}
        assert done["errors"] == []
        assert done["last_error"] is None
        assert done["done_at"] is not None
        assert (done["locked_by"], done["locked_until"], done["lease_token"]) == (None, None, None)
    assert await status_writes(db) == {event_id: ["done"] for event_id in ids}
    assert relay.stats.done == 3


async def test_lock_mode_commits_a_postgres_sink_with_the_settle(database_url: str, db: Db) -> None:
    audit = PostgresSink(PostgresOptions.model_validate({"schema": "audit", "table": "events"}))
    cache = Recorder()
    ids = await publish_together(database_url, [{"n": n} for n in range(4)])
    relay = relay_for(database_url, {"audit": audit, "cache": cache}, claim_mode="lock")
    await asyncio.wait_for(relay.run(drain=True), DEADLINE)

    current = await rows(db)
    assert [current[i]["status"] for i in ids] == ["done"] * 4
    assert [current[i]["attempts"] for i in ids] == [1] * 4
    assert all(current[i]["deliveries"]["audit"]["status"] == "delivered" for i in ids)
    cursor = await db.execute("SELECT event_id FROM audit.events ORDER BY event_id")
    assert [found["event_id"] for found in await cursor.fetchall()] == ids
    assert sorted(cache.ids()) == ids


async def test_lock_mode_schedules_a_retry_as_lease_mode_does(database_url: str, db: Db) -> None:
    """The same events settled by a relay in each mode leave the same rows: a batch whose
    events settle differently (one retried, one done), then a retried event alone."""
    hour = dataclasses.replace(FAST_RETRY, base_seconds=3600.0, cap_seconds=3600.0)

    def fail(event: Event) -> BaseException | None:
        return RetryableError("flaky is down") if event.payload["fail"] else None

    settled: dict[str, list[dict[str, Any]]] = {}
    for mode in ("lease", "lock"):
        flaky, steady = Recorder(fail), Recorder()
        relay = relay_for(
            database_url, {"flaky": flaky, "steady": steady}, retry=hour, claim_mode=mode
        )
        ids = await publish_together(database_url, [{"fail": True}, {"fail": False}])
        async with running(relay) as run:
            await run.until(_stat(relay, "retried", 1), "the failed event to be rescheduled")
            ids += await publish_together(database_url, [{"fail": True}])
            await run.until(_stat(relay, "retried", 2), "the lone event to be rescheduled")
        current = await rows(db)
        settled[mode] = [_settled_state(current[event_id]) for event_id in ids]
        assert relay.stats.done == 1

    assert settled["lock"] == settled["lease"]
    retried, done, alone = settled["lock"]
    assert retried == alone
    assert retried["status"] == "pending"
    assert retried["attempts"] == 1
    assert retried["retry_in"] == 3600.0
    assert retried["deliveries"] == {
        "flaky": {
            "attempts": 1,
            "status": "retrying",
            "last_error": "RetryableError: flaky is down",
        },
        "steady": {"attempts": 1, "status": "delivered", "last_error": None},
    }
    assert retried["errors"] == [
        {"sink": "flaky", "attempt": 1, "error": "RetryableError: flaky is down"}
    ]
    assert (done["status"], done["attempts"], done["finished"]) == ("done", 1, True)


def _settled_state(found: DictRow) -> dict[str, Any]:
    """What a settle wrote, without its timestamps; ``retry_in``: seconds from the settle
    to the next attempt."""
    errors = found["errors"]
    retry_in = None
    if found["status"] == "pending":
        retry_in = (
            found["process_at"] - dt.datetime.fromisoformat(errors[-1]["at"])
        ).total_seconds()
    return {
        "status": found["status"],
        "attempts": found["attempts"],
        "retry_in": retry_in,
        "deliveries": {
            name: {k: v for k, v in state.items() if k not in ("delivered_at", "not_before")}
            for name, state in found["deliveries"].items()
        },
        "errors": [{k: v for k, v in error.items() if k != "at"} for error in errors],
        "last_error": found["last_error"],
        "finished": found["done_at"] is not None,
        "claim": (found["locked_by"], found["locked_until"], found["lease_token"]),
    }


async def test_lock_mode_keeps_key_order_across_relays(database_url: str, db: Db) -> None:
    sink = Recorder(delay=0.002)
    keys = [f"k{n}" for n in range(5)]
    expected: dict[str, list[int]] = {key: [] for key in keys}
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for n in range(60):
            event = await outbox.publish(conn, "order.paid", {"n": n}, key=keys[n % 5])
            assert event.id is not None
            expected[keys[n % 5]].append(event.id)
    relays = [
        relay_for(
            database_url, {"sink": sink}, claim_mode="lock", concurrency=2, batch_size=3,
            name=f"relay-{n}",
        )
        for n in range(2)
    ]  # fmt: skip
    every = [event_id for ids in expected.values() for event_id in ids]
    async with running(relays[0]) as run, running(relays[1]):
        await run.until(status_is(db, "done", *every), "every event to be done", within=30)

    assert {key: [e.id for _, e in sink.received if e.key == key] for key in keys} == expected
    assert relays[0].stats.done + relays[1].stats.done == 60


async def test_a_lock_mode_batch_in_flight_is_held_by_its_row_locks(
    database_url: str, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a lock-mode relay delivers, its rows stay `pending` (nothing is written before
    the settle) and relays of either mode pass them by."""
    await db.execute(STATUS_LOG)
    gate = Gate()
    holder = relay_for(
        database_url, {"sink": gate}, claim_mode="lock", lease_seconds=30, delivery_timeout=20
    )
    ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(3)]
    other = Recorder()
    async with running(holder) as run:
        await run.until(_is_set(gate.entered), "the batch to be mid-delivery")
        for mode in ("lease", "lock"):
            rival = relay_for(database_url, {"sink": other}, claim_mode=mode)
            claims = _count_claims(rival, monkeypatch)
            async with running(rival) as run_rival:
                await run_rival.until(_grown(claims, 3), f"a {mode} relay to claim three times")
            assert set(claims) == {0}, f"a {mode} relay claimed rows held by another"
        held = await rows(db)
        assert [held[i]["status"] for i in ids] == ["pending"] * 3
        assert [held[i]["attempts"] for i in ids] == [0] * 3
        assert await status_writes(db) == {}
        gate.release.set()
        await run.until(status_is(db, "done", *ids), "the held batch to settle")

    assert other.received == []
    assert await status_writes(db) == {event_id: ["done"] for event_id in ids}
    assert [(await row(db, i))["attempts"] for i in ids] == [1] * 3


async def test_a_cancelled_lock_mode_batch_is_rolled_back_uncounted(
    database_url: str, db: Db
) -> None:
    await db.execute(STATUS_LOG)
    gate = Gate()
    holder = relay_for(
        database_url, {"sink": gate}, claim_mode="lock", lease_seconds=30, delivery_timeout=20
    )
    ids = [await publish(database_url, "order.paid", {"n": n}) for n in range(3)]
    task = asyncio.create_task(holder.run())
    await asyncio.wait_for(gate.entered.wait(), DEADLINE)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE)

    assert await status_writes(db) == {}
    assert [(await row(db, i))["attempts"] for i in ids] == [0] * 3
    sink = Recorder()
    relay = relay_for(database_url, {"sink": sink}, claim_mode="lock")
    await asyncio.wait_for(relay.run(drain=True), DEADLINE)
    assert sink.ids() == ids
    assert [(await row(db, i))["attempts"] for i in ids] == [1] * 3


def test_relay_settings_refuse_an_unknown_claim_mode() -> None:
    with pytest.raises(ValueError, match="claim_mode"):
        RelaySettings(claim_mode="queue")  # type: ignore[arg-type]


def test_subscriptions_must_name_existing_sinks(database_url: str) -> None:
    with pytest.raises(ValueError, match="missing"):
        Relay(database_url, {"a": Recorder()}, [Subscription(("#",), ("a", "missing"))], options())


# -- helpers -------------------------------------------------------------------------------


async def _true(value: bool) -> bool:
    return value


def _is_set(event: asyncio.Event) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(event.is_set())


def _listening(relay: Relay) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(relay.listening)


def _stat(relay: Relay, name: str, value: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(getattr(relay.stats, name) == value)


def _grown(values: list[int], size: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(len(values) >= size)


def _count_claims(relay: Relay, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch ``relay`` claims from now on."""
    name = "claim_locked" if relay.options.claim_mode == "lock" else "claim"
    real = getattr(relay._store, name)
    sizes: list[int] = []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        claim = await real(*args, **kwargs)
        sizes.append(len(claim.rows))
        return claim

    monkeypatch.setattr(relay._store, name, counted)
    return sizes


async def test_relay_connections_carry_its_name(database_url: str, db: Db) -> None:
    relay = relay_for(database_url, {"sink": Recorder()}, name="relay-seen")
    async with running(relay) as run:
        await run.until(_listening(relay), "the relay to listen")
        cursor = await db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = %s",
            ("outbox relay relay-seen",),
        )
        found = await cursor.fetchone()
    assert found is not None
    assert found["n"] >= 2  # a worker and the listener


async def _listener_pids(db: Db) -> list[int]:
    cursor = await db.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    return [found["pid"] for found in await cursor.fetchall()]


# -- the relay's contract with its sinks and the database ----------------------------------


async def test_the_relay_passes_its_deadline_and_leaves_its_sinks_alone(
    database_url: str, db: Db
) -> None:
    """The relay hands its ``delivery_timeout`` to ``deliver_batch`` and sets nothing on the
    sink."""

    class Timed(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.timeouts: list[float | None] = []

        async def deliver_batch(
            self,
            events: Sequence[Event],
            *,
            timeout: float | None = None,  # noqa: ASYNC109 (the Sink signature)
        ) -> list[BaseException | None]:
            self.timeouts.append(timeout)
            return await super().deliver_batch(events, timeout=timeout)

    sink = Timed()
    relay = relay_for(database_url, {"sink": sink}, delivery_timeout=3.5)
    event_id = await publish(database_url, "order.paid")
    await relay.run(drain=True)
    assert sink.ids() == [event_id]
    assert sink.timeouts == [3.5]
    assert sink.delivery_timeout is None


async def test_a_relay_on_an_unmigrated_schema_says_to_migrate(database_url: str) -> None:
    relay = relay_for(database_url, {"sink": Recorder()}, schema="nowhere")
    with pytest.raises(MigrationError, match=r"schema 'nowhere'.*outbox migrate"):
        await relay.run(drain=True)


async def test_an_unreachable_server_is_unavailable() -> None:
    connector = Connector("postgresql://postgres@127.0.0.1:1/postgres?connect_timeout=2", "r")
    with pytest.raises(DatabaseUnavailable) as raised:
        await connector.connect()
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)


async def test_relay_connections_run_without_jit_and_keep_the_urls_options(
    database_url: str,
) -> None:
    """JIT compiled the keyed claim's subplans on every claim (a backlog makes their
    estimates huge): the relay switches it off on its connections, keeping the URL's own
    server options."""
    separator = "&" if "?" in database_url else "?"
    url = f"{database_url}{separator}options=-c%20statement_timeout%3D4321"
    conn = await Connector(url, "jit-check").connect()
    try:
        cursor = await conn.execute(
            "SELECT current_setting('jit'), current_setting('statement_timeout')"
        )
        assert await cursor.fetchone() == ("off", "4321ms")
    finally:
        await conn.close()
