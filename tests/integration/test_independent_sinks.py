"""Sinks never hold each other back (issue 12; docs/decisions/0011-sinks-held-independently.md).

One relay, four sinks on every event: a healthy one; one failing every delivery (retryable);
one paused by an operator; a webhook whose real local receiver answers 410 Gone, which
disables it. The healthy sink must receive every event of every key, in per-key order, as
if the others did not exist; the paused sink must be attempted for nothing. Once the failing
sink recovers, the paused one is resumed and the gone one enabled, each must receive every
event in per-key order, and the healthy sink nothing twice.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

import outbox
from outbox import admin
from outbox.exceptions import PermanentError, RetryableError
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings
from outbox.sink_switches import Switches
from outbox.sinks import Event, Sink

DEADLINE = 30.0
"""Enough for the held sinks to catch up: each delivery wakes the next event of its key
(decision 11)."""
CATCH_UP = 10.0
"""Below the 15 seconds after which a waiting event looks again by itself: within it, only
the wake after a delivery lets the next event of the key go."""
KEYS = 8
EVENTS = 120


class Recording(Sink):
    """Records the ids it was given and those it accepted, in order; fails every delivery
    while ``failing``."""

    def __init__(self, *, failing: bool = False) -> None:
        super().__init__()
        self.failing = failing
        self.accepted: list[int] = []
        self.tried: list[int] = []
        self.calls = 0

    async def deliver(self, event: Event) -> None:
        self.calls += 1
        self.tried.append(event.id)
        if self.failing:
            raise RetryableError("down for maintenance")
        self.accepted.append(event.id)


class GoneReceiver:
    """An HTTP receiver on 127.0.0.1 answering ``status`` and recording accepted event ids."""

    def __init__(self) -> None:
        self.status = 410
        self.accepted: list[int] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.requests += 1
                status = receiver.status
                if status < 300:
                    receiver.accepted.append(int(self.headers["webhook-id"]))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


@pytest.fixture
def gone_receiver() -> Iterator[GoneReceiver]:
    receiver = GoneReceiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@dataclasses.dataclass
class Fleet:
    healthy: Recording
    failing: Recording
    paused: Recording
    receiver: GoneReceiver

    def received(self) -> dict[str, list[int]]:
        return {
            "healthy": self.healthy.accepted,
            "failing": self.failing.accepted,
            "paused": self.paused.accepted,
            "gone": self.receiver.accepted,
        }


def _relay(database_url: str, fleet: Fleet, claim_mode: str) -> Relay:
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    webhook = SinkSettings(
        type="webhook", url=fleet.receiver.url, secret=secret, allowed_networks=["127.0.0.1/32"]
    )
    sinks: dict[str, Sink] = dict(
        build_sinks({"gone": webhook}, sink_types(make_plugin_manager(entry_points=False)))
    )
    sinks.update(healthy=fleet.healthy, failing=fleet.failing, paused=fleet.paused)
    options = relay_options(
        claim_mode=claim_mode,
        poll_interval=0.05,
        maintenance_interval=0.1,
        lease_seconds=10,
        delivery_timeout=5,
        retry=dataclasses.replace(
            relay_options().retry, max_attempts=1000, base_seconds=0.01, cap_seconds=0.1
        ),
    )
    return Relay(database_url, sinks, [Subscription(("order.#",), tuple(sinks))], options)


@contextlib.asynccontextmanager
async def _running(relay: Relay) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(relay.run())
    try:
        yield task
    finally:
        relay.stop()
        await asyncio.wait_for(task, DEADLINE)


async def _until(
    task: asyncio.Task[Any], check: Any, what: str, *, within: float = DEADLINE
) -> None:
    deadline = time.monotonic() + within
    while not check():
        if task.done():
            task.result()
            raise AssertionError(f"the relay stopped before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {_describe_state()}")
        await asyncio.sleep(0.05)


_STATE: dict[str, Any] = {}


def _describe_state() -> str:
    fleet, url = _STATE.get("fleet"), _STATE.get("url")
    if fleet is None or url is None:
        return ""
    counts = {name: len(set(ids)) for name, ids in fleet.received().items()}
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, key, status, process_at, deliveries FROM outbox_events "
            "WHERE status <> 'done' ORDER BY id LIMIT 5"
        ).fetchall()
    return f"{counts}; first unfinished: {rows}"


def _publish(database_url: str) -> dict[str, list[int]]:
    """EVENTS events over KEYS keys, in transactions of ten; the ids of each key, in order."""
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    with psycopg.connect(database_url) as conn:
        for first in range(0, EVENTS, 10):
            with conn.transaction():
                for n in range(first, first + 10):
                    key = f"key-{n % KEYS}"
                    event = outbox.publish(conn, "order.placed", {"n": n}, key=key)
                    assert event.id is not None
                    by_key[key].append(event.id)
    return by_key


def _in_key_order(received: list[int], by_key: dict[str, list[int]]) -> bool:
    """Whether each key's events were received in id order (first receipts)."""
    position = {event_id: n for n, event_id in enumerate(dict.fromkeys(received))}
    return all(
        sorted(ids, key=lambda i: position.get(i, 1 << 30)) == ids for ids in by_key.values()
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
async def test_a_failing_a_paused_and_a_gone_sink_hold_back_only_themselves(
    database_url: str, gone_receiver: GoneReceiver, claim_mode: str
) -> None:
    fleet = Fleet(Recording(), Recording(failing=True), Recording(), gone_receiver)
    _STATE.update(fleet=fleet, url=database_url)
    switches = Switches()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        assert await switches.pause(conn, "paused", "testing")
    by_key = _publish(database_url)
    every = sorted(i for ids in by_key.values() for i in ids)

    relay = _relay(database_url, fleet, claim_mode)
    async with _running(relay) as task:
        await _until(task, lambda: len(fleet.healthy.accepted) == EVENTS, "the healthy sink")
        assert sorted(fleet.healthy.accepted) == every
        assert _in_key_order(fleet.healthy.accepted, by_key)
        assert fleet.paused.calls == 0, "a paused sink was attempted"
        assert fleet.failing.calls > 0

        def paused_states() -> set[tuple[str, int] | None]:
            with psycopg.connect(database_url) as conn:
                rows = conn.execute("SELECT deliveries -> 'paused' FROM outbox_events").fetchall()
            return {None if s is None else (s["status"], s["attempts"]) for (s,) in rows}

        # Every event is routed (its last ones are settled a moment after the healthy sink
        # has them), and none was attempted for the paused sink.
        await _until(task, lambda: None not in paused_states(), "every event to be routed")
        assert paused_states() == {("waiting", 0)}

        # Recovery, resume and enable: every held delivery flows, in per-key order.
        fleet.failing.failing = False
        gone_receiver.status = 204
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            assert await switches.resume(conn, "paused")
            assert await switches.enable(conn, "gone")
        await _until(
            task,
            lambda: all(len(set(ids)) == EVENTS for ids in fleet.received().values()),
            "every sink to have every event",
        )

        def statuses() -> list[tuple[str]]:
            with psycopg.connect(database_url) as conn:
                return conn.execute("SELECT DISTINCT status FROM outbox_events").fetchall()

        # The last receipts are settled a moment after the sinks have them.
        await _until(task, lambda: statuses() == [("done",)], "every event to be done")
    for name, received in fleet.received().items():
        assert sorted(set(received)) == every, name
        assert _in_key_order(received, by_key), f"{name} broke per-key order"
    assert len(fleet.healthy.accepted) == EVENTS, "the healthy sink got an event twice"


@pytest.mark.timeout(60)
async def test_a_relay_started_while_its_database_refused_connections_holds_a_paused_sink(
    server_url: str, database_url: str
) -> None:
    """The relay reads the switches before its first claim; when the database refuses it at
    the start, it reads them once it is let in, before claiming: not one call to the paused
    sink, though the maintenance round that would also read them is a minute away."""
    active, paused = Recording(), Recording()
    sinks: dict[str, Sink] = {"active": active, "paused": paused}
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        assert await Switches().pause(conn, "paused", "testing")
    with psycopg.connect(database_url) as conn:
        ids = [outbox.publish(conn, "order.placed", {"n": n}, key=f"k{n}").id for n in range(5)]
    name = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    options = relay_options(poll_interval=0.05, maintenance_interval=60)
    relay = Relay(database_url, sinks, [Subscription(("order.#",), tuple(sinks))], options)
    with psycopg.connect(server_url, autocommit=True) as admin_conn:
        admin_conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        try:
            async with _running(relay) as task:
                await asyncio.sleep(0.5)  # the relay starts, and is refused
                assert not task.done()
                admin_conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
                await _until(task, lambda: sorted(active.accepted) == ids, "the active sink")
        finally:
            admin_conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
    assert paused.calls == 0, "the paused sink was called"


class Gated(Recording):
    """Holds every call until ``gate`` is set; ``entered`` is set by the first call."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def deliver(self, event: Event) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().deliver(event)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
async def test_a_sink_resumed_while_a_batch_held_for_it_is_in_flight_gets_its_events(
    database_url: str, claim_mode: str
) -> None:
    """The resume's own wake runs while the batch is in flight, before the settle writes
    that the batch's events wait for the sink: the relay that settles wakes them itself,
    with no maintenance round (a minute away) and no NOTIFY (not listening) to tell it."""
    slow, paused = Gated(), Recording()
    sinks: dict[str, Sink] = {"slow": slow, "paused": paused}
    switches = Switches()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        assert await switches.pause(conn, "paused", "testing")
    with psycopg.connect(database_url) as conn:
        ids = [outbox.publish(conn, "order.placed", {"n": n}, key=f"k{n}").id for n in range(5)]
    options = relay_options(
        claim_mode=claim_mode, poll_interval=0.05, maintenance_interval=60, listen=False
    )
    relay = Relay(database_url, sinks, [Subscription(("order.#",), tuple(sinks))], options)
    async with _running(relay) as task:
        await asyncio.wait_for(slow.entered.wait(), DEADLINE)
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            assert await switches.resume(conn, "paused")
        slow.gate.set()
        await _until(task, lambda: sorted(paused.accepted) == ids, "the resumed sink", within=10)
    assert sorted(slow.accepted) == ids


class Refusing(Recording):
    """Refuses (permanently) every event whose payload says so, while ``refusing``."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing = True

    async def deliver(self, event: Event) -> None:
        self.calls += 1
        if self.refusing and event.payload.get("refuse"):
            raise PermanentError("refused")
        self.accepted.append(event.id)


class AlwaysRefusing(Recording):
    async def deliver(self, event: Event) -> None:
        self.calls += 1
        raise PermanentError("refused")


@pytest.mark.timeout(120)
async def test_a_failed_event_parks_its_key_for_that_sink_only_until_it_is_retried(
    database_url: str,
) -> None:
    picky, easy = Refusing(), Recording()
    sinks: dict[str, Sink] = {"picky": picky, "easy": easy}
    options = relay_options(poll_interval=0.05, maintenance_interval=0.1)
    relay = Relay(database_url, sinks, [Subscription(("order.#",), tuple(sinks))], options)
    with psycopg.connect(database_url) as conn:
        ids = [
            outbox.publish(conn, "order.placed", {"refuse": n == 0}, key="k").id for n in range(3)
        ]
    first, *later = ids

    def states() -> list[tuple[str, str]]:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT status, deliveries -> 'picky' ->> 'status' FROM outbox_events ORDER BY id"
            ).fetchall()
        return [(row[0], row[1]) for row in rows]

    async with _running(relay) as task:
        await _until(task, lambda: easy.accepted == ids, "the easy sink to get every event")
        await _until(
            task,
            lambda: (
                states() == [("failed", "failed"), ("pending", "waiting"), ("pending", "waiting")]
            ),
            "the later events to wait for the picky sink",
        )
        assert picky.accepted == []

        picky.refusing = False
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            plan = await admin.plan_retry(conn, "public", ids=[first])
            assert await admin.apply(conn, "public", plan) == 1
        await _until(task, lambda: picky.accepted == ids, "the picky sink, in key order")
    assert easy.accepted == ids, "the easy sink got an event twice"
    assert later == ids[1:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
@pytest.mark.parametrize("skipped_ends", ["retrying", "failed"])
async def test_an_event_that_skips_a_sink_still_keeps_its_keys_order_there(
    database_url: str, claim_mode: str, skipped_ends: str
) -> None:
    """A later event learns what it waits for from the nearest events of its key; one that
    does not go to a sink must pass that sink on, whether it is still retrying its own sinks
    or has failed there. Once the earlier event reaches the sink, the later one follows at
    once (within CATCH_UP, below the 15 seconds after which it would look again by itself)."""
    z = Recording(failing=True) if skipped_ends == "retrying" else AlwaysRefusing()
    x, y = Recording(failing=True), Recording()
    sinks: dict[str, Sink] = {"x": x, "y": y, "z": z}
    subscriptions = [
        Subscription(("order.placed",), ("x", "y")),
        Subscription(("order.noted",), ("y", "z")),  # never reaches x; stays unfinished at z
    ]
    options = relay_options(
        claim_mode=claim_mode,
        poll_interval=0.05,
        maintenance_interval=0.1,
        retry=dataclasses.replace(
            relay_options().retry, max_attempts=1000, base_seconds=0.01, cap_seconds=0.1
        ),
    )
    relay = Relay(database_url, sinks, subscriptions, options)
    with psycopg.connect(database_url) as conn:
        ids = [
            outbox.publish(conn, topic, {"n": n}, key="k").id
            for n, topic in enumerate(["order.placed", "order.noted", "order.placed"])
        ]
    first, noted, later = ids
    async with _running(relay) as task:
        await _until(task, lambda: sorted(y.accepted) == ids, "the healthy sink")
        await _until(task, lambda: x.calls >= 3, "x to fail a few times")
        assert set(x.tried) == {first}, "x was tried with a later event of the key"
        x.failing = False
        await _until(task, lambda: len(x.accepted) == 2, "x to catch up", within=CATCH_UP)
    assert x.accepted == [first, later], "x got the later event before the earlier one"
    assert noted not in x.accepted
