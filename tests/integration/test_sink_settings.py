"""Per-sink settings (issue 12): ``max_attempts``, the backoff, ``batch_size`` and a
``rate_limit`` under ``[sinks.NAME]``, for any sink type, defaulting to the relay's.

The rate limit is held across every relay: three ``outbox relay`` processes deliver to one
webhook limited to 20 events/s, and the receiver's own timestamps must stay within the token
bucket's bound (a burst of one second's worth, then the rate).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox.exceptions import RetryableError
from outbox.rate_limit import RateLimiter, parse_rate
from outbox.relay import ClaimMode, Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import Settings
from outbox.sinks import Event, Sink
from outbox.store import Connector

DEADLINE = 60.0


class Failing(Sink):
    """Fails every delivery (retryable); counts its calls and the size of each batch."""

    def __init__(self, *, failing: bool = True) -> None:
        super().__init__()
        self.failing = failing
        self.calls = 0
        self.batches: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def deliver(self, event: Event) -> None:
        self.calls += 1
        if self.failing:
            raise RetryableError("down")

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the Sink signature)
    ) -> list[BaseException | None]:
        self.batches.append(len(events))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await super().deliver_batch(events, timeout=timeout)
        finally:
            self.in_flight -= 1


def _settings(**sinks: dict[str, Any]) -> Settings:
    return Settings.from_values(
        relay={
            "max_attempts": 4,
            "backoff_base": 0.01,
            "backoff_cap": 0.02,
            "batch_size": 10,
            "poll_interval": 0.05,
            "maintenance_interval": 0.1,
        },
        sinks={
            name: {"type": "callable", "target": "os:getcwd", **values}
            for name, values in sinks.items()
        },
    )


def _publish(database_url: str, count: int) -> list[int]:
    with psycopg.connect(database_url) as conn:
        return [outbox.publish(conn, "order.placed", {"n": n}).id or 0 for n in range(count)]


def _relays_connected(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        [(count,)] = conn.execute(
            "SELECT count(DISTINCT application_name) FROM pg_stat_activity "
            "WHERE application_name LIKE 'outbox relay %' AND datname = current_database()"
        ).fetchall()
    return int(count)


def _deliveries(database_url: str) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT deliveries FROM outbox_events ORDER BY id").fetchall()
    return [row[0] for row in rows]


async def test_each_sink_retries_by_its_own_max_attempts_and_backoff(database_url: str) -> None:
    settings = _settings(
        strict={"max_attempts": 2},
        lenient={},  # the relay's max_attempts, 4
        patient={"max_attempts": 5, "backoff_base": 600, "backoff_cap": 600},
    )
    sinks = {name: Failing() for name in settings.sinks}
    relay = Relay(
        database_url,
        sinks,
        [Subscription(("order.#",), tuple(sinks))],
        relay_options(settings),
    )
    _publish(database_url, 3)

    async def settled() -> bool:
        states = [d.get("lenient", {}).get("status") for d in _deliveries(database_url)]
        return states == ["failed"] * 3

    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + DEADLINE
        for _ in range(int(DEADLINE / 0.05)):
            if await settled() or time.monotonic() > deadline or task.done():
                break
            await asyncio.sleep(0.05)
    finally:
        relay.stop()
        await asyncio.wait_for(task, DEADLINE)

    assert (sinks["strict"].calls, sinks["lenient"].calls, sinks["patient"].calls) == (6, 12, 3)
    for deliveries in _deliveries(database_url):
        assert (deliveries["strict"]["status"], deliveries["strict"]["attempts"]) == ("failed", 2)
        assert (deliveries["lenient"]["status"], deliveries["lenient"]["attempts"]) == ("failed", 4)
        patient = deliveries["patient"]
        assert (patient["status"], patient["attempts"]) == ("retrying", 1)
        # Its own backoff: 600 s +/- the relay's jitter (25 %), not the relay's 0.01 s.
        with psycopg.connect(database_url) as conn:
            [(seconds,)] = conn.execute(
                "SELECT extract(epoch FROM %s::timestamptz - now())::float8",
                [patient["not_before"]],
            ).fetchall()
        assert seconds > 400


class InTransaction(Sink):
    """A transactional sink recording the size of each call."""

    transactional = True

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def deliver(self, event: Event) -> None:
        raise AssertionError("a transactional sink is not called directly")

    async def deliver_in_transaction(
        self, conn: psycopg.AsyncConnection[Any], events: Sequence[Event]
    ) -> list[BaseException | None]:
        self.batches.append(len(events))
        return [None] * len(events)


@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
async def test_a_sinks_share_goes_out_in_calls_of_its_batch_size_one_after_another(
    database_url: str, claim_mode: ClaimMode
) -> None:
    settings = _settings(small={"batch_size": 3}, whole={}, written={"batch_size": 4})
    small, whole, written = Failing(failing=False), Failing(failing=False), InTransaction()
    sinks: dict[str, Sink] = {"small": small, "whole": whole, "written": written}
    options = dataclasses.replace(relay_options(settings), claim_mode=claim_mode)
    relay = Relay(database_url, sinks, [Subscription(("order.#",), tuple(sinks))], options)
    _publish(database_url, 10)

    stats = await relay.run(once=True)

    assert stats.done == 10
    assert small.batches == [3, 3, 3, 1]
    assert small.most_in_flight == 1
    assert whole.batches == [10]
    assert written.batches == [4, 4, 2]


# -- the rate limit, held across three relays ---------------------------------------------------

RATE = 20.0
BURST = 20
EVENTS = 130  # a burst, then (130 - 20) / 20 = 5.5 s at the rate


class Receiver:
    """A webhook receiver on 127.0.0.1 recording when each event first arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: no connection per request

            def do_POST(self) -> None:
                arrived = time.monotonic()
                self.rfile.read(int(self.headers["content-length"]))
                with receiver._lock:
                    receiver.requests += 1
                    receiver.arrivals.setdefault(self.headers["webhook-id"], arrived)
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


class _Server(ThreadingHTTPServer):
    # Three relays open up to 16 connections each at once: a backlog of 5 would drop
    # connections, which the kernel retries a second later.
    request_queue_size = 128


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


LATE = 0.25
"""Seconds an event may reach the receiver after its relay took its token (a relay's first
request opens its connection): the tolerance of the bound below."""


@dataclasses.dataclass
class Figures:
    received: int
    span: float
    busiest_second: int
    """The most events that arrived within one second."""
    mean_rate: float
    """Events past the first burst, over the time from the first arrival to the last."""
    excess: float
    """The most that any stretch of arrivals went over the bucket's bound, burst plus the
    rate times the stretch's length (negative: under it throughout)."""


def _figures(arrivals: list[float]) -> Figures:
    times = sorted(arrivals)
    span = times[-1] - times[0]
    busiest = max(bisect.bisect_left(times, t + 1.0) - n for n, t in enumerate(times))
    excess = max(
        (j - i + 1) - (BURST + RATE * (times[j] - times[i]))
        for i in range(len(times))
        for j in range(i, len(times))
    )
    return Figures(len(times), span, busiest, (len(times) - BURST) / span, excess)


@pytest.mark.timeout(180)
def test_the_rate_limit_holds_across_three_relays(
    tmp_path: Path, database_url: str, receiver: Receiver
) -> None:
    config = tmp_path / "outbox.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [relay]
            poll_interval = 0.05
            maintenance_interval = 0.1

            [sinks.limited]
            type = "webhook"
            url = "{receiver.url}"
            secret = {{ env = "LIMITED_WEBHOOK_SECRET" }}
            allowed_networks = ["127.0.0.1/32"]
            rate_limit = "{RATE:g}/s"

            [[subscriptions]]
            topics = ["order.#"]
            sinks = ["limited"]
            """
        )
    )
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env["LIMITED_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    command = [sys.executable, "-m", "outbox.cli", "relay", "--config", str(config)]
    logs = [tmp_path / f"relay-{n}.log" for n in range(3)]
    relays = []
    for log in logs:
        with log.open("w") as stderr:
            relays.append(
                subprocess.Popen(
                    [*command, "--database-url", database_url],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            )
    try:
        deadline = time.monotonic() + DEADLINE
        # Every relay up before the events are published: all three take from the start.
        while _relays_connected(database_url) < 3 and time.monotonic() < deadline:
            assert all(relay.poll() is None for relay in relays), "a relay exited"
            time.sleep(0.1)
        ids = _publish(database_url, EVENTS)
        while len(receiver.arrivals) < EVENTS and time.monotonic() < deadline:
            assert all(relay.poll() is None for relay in relays), "a relay exited"
            time.sleep(0.1)
        relays_connected = _relays_connected(database_url)
    finally:
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
        for relay in relays:
            relay.wait(timeout=30)
    errors = [log.read_text()[-2000:] for log in logs]
    assert [relay.returncode for relay in relays] == [0, 0, 0], errors
    assert relays_connected == 3

    assert sorted(int(i) for i in receiver.arrivals) == ids
    figures = _figures(list(receiver.arrivals.values()))
    print(
        f"\nrate limit {RATE:g}/s (burst {BURST}), 3 relays: {figures.received} events in "
        f"{figures.span:.2f} s; busiest second {figures.busiest_second} "
        f"(bound {RATE + BURST:g}); past the burst {figures.mean_rate:.2f}/s; most over the "
        f"bound {figures.excess:+.1f} events; {receiver.requests} requests"
    )
    # The bucket's bound, burst + rate * time, over every stretch of arrivals, measured where
    # the events arrive: with LATE seconds' worth of tolerance.
    assert figures.excess <= RATE * LATE
    assert figures.busiest_second <= BURST + RATE * (1 + LATE)
    # And the limit lets the sink have its rate, not a trickle.
    assert figures.mean_rate >= RATE * 0.6
    # Events over the rate waited without an attempt counted: one attempt each.
    assert {d["limited"]["attempts"] for d in _deliveries(database_url)} == {1}


# -- outbox config check --------------------------------------------------------------------------


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(text), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "config", "check", "--config", "outbox.toml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_check_accepts_the_per_sink_keys_on_any_sink_type(tmp_path: Path) -> None:
    result = _check(
        tmp_path,
        """
        [sinks.trail]
        type = "jsonl"                # a plugin's type, which knows nothing of these keys
        path = "events.jsonl"
        max_attempts = 3
        backoff_base = 0.5
        backoff_cap = 30.0
        batch_size = 20
        rate_limit = "6000/min"

        [sinks.cache]
        type = "callable"
        target = "os:getcwd"
        concurrency = 4
        rate_limit = "10/h"

        [[subscriptions]]
        topics = ["order.*"]
        sinks = ["trail", "cache"]
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok: 2 sink(s), 1 subscription(s)"


def test_config_check_names_the_sink_and_key_of_each_bad_setting(tmp_path: Path) -> None:
    result = _check(
        tmp_path,
        """
        [relay]
        backoff_base = 5.0

        [sinks.fast]
        type = "callable"
        target = "os:getcwd"
        rate_limit = "10/ms"

        [sinks.vague]
        type = "jsonl"
        path = "events.jsonl"
        rate_limit = "quick"

        [sinks.zero]
        type = "callable"
        target = "os:getcwd"
        max_attempts = 0
        batch_size = 0
        """,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert lines[-1] == "4 error(s)", lines
    located = dict(line.split(": ", 1) for line in lines[:-1])
    assert set(located) == {
        "sinks.fast.rate_limit",
        "sinks.vague.rate_limit",
        "sinks.zero.max_attempts",
        "sinks.zero.batch_size",
    }
    assert located["sinks.fast.rate_limit"].startswith("invalid rate '10/ms'")
    assert "/min" in located["sinks.fast.rate_limit"]
    assert "invalid rate 'quick'" in located["sinks.vague.rate_limit"]
    assert "greater than or equal to 1" in located["sinks.zero.max_attempts"]


def test_config_check_refuses_a_sinks_backoff_cap_below_the_base_it_gets(tmp_path: Path) -> None:
    result = _check(
        tmp_path,
        """
        [relay]
        backoff_base = 5.0

        [sinks.hasty]
        type = "callable"
        target = "os:getcwd"
        backoff_cap = 1.0
        """,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "sinks: sink 'hasty': backoff_cap (1) must be at least backoff_base "
        "(5; the relay's unless the sink sets it)",
        "1 error(s)",
    ]


# -- the bucket itself --------------------------------------------------------------------------


async def test_concurrent_takes_never_exceed_the_bucket(database_url: str) -> None:
    """Three limiters (three relays' connections) taking at once from one bucket: what they
    are granted stays within the burst plus the rate times the time taken."""
    rate = parse_rate("50/s")
    limiters = [
        RateLimiter("public", Connector(database_url, f"taker-{n}"), {"s": rate}) for n in range(3)
    ]
    granted: list[int] = []
    started = time.monotonic()

    async def take(limiter: RateLimiter) -> None:
        while time.monotonic() - started < 1.5:
            grant = await limiter.take("s", 5)
            granted.append(grant.granted)
            assert 0 <= grant.wait_seconds <= 0.5  # at most half a burst's worth of waiting
            await asyncio.sleep(0.005)

    try:
        await asyncio.gather(*(take(limiter) for limiter in limiters))
    finally:
        for limiter in limiters:
            await limiter.aclose()
    elapsed = time.monotonic() - started
    print(f"\nbucket 50/s: {sum(granted)} granted in {elapsed:.2f} s over {len(granted)} takes")
    assert sum(granted) <= rate.burst + rate.per_second * elapsed
    assert sum(granted) >= rate.burst + rate.per_second * 1.5 * 0.8
