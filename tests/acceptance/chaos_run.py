"""The chaos run itself: its plan, the relay fleet (a supervisor of ``outbox relay``
processes), the publisher, and the schedule of faults. ``chaos_checks.py`` judges the result.

Not a test module: ``test_chaos.py`` imports it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime as dt
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, LiteralString

import psycopg

import outbox
from outbox.routing import Router, Subscription
from outbox.sink_switches import Switches

from .chaos_server import EmbeddedServer
from .chaos_sink import POISON_EXIT_CODE

HERE = Path(__file__).resolve().parent
# Order events go to alpha, beta and one of gamma (paid) or the webhook (placed); audit
# events to alpha, gamma and the webhook: three sinks per event.
SUBSCRIPTIONS = (
    Subscription(topics=("chaos.#",), sinks=("alpha",)),
    Subscription(topics=("chaos.order.*",), sinks=("beta",)),
    Subscription(topics=("chaos.order.paid", "chaos.audit"), sinks=("gamma",)),
    Subscription(topics=("chaos.order.placed", "chaos.audit"), sinks=("hook",)),
)
CALLABLE_SINKS = ("alpha", "beta", "gamma")
WEBHOOK_SINK = "hook"
TOPICS = ("chaos.order.placed", "chaos.order.paid", "chaos.audit")
HANG_TOPIC = "chaos.audit"
"""Hanging events go to gamma, the sink that hangs on them."""
RELAY_CONFIG = """\
[relay]
claim_mode = "{claim_mode}"
batch_size = 100
lease_seconds = {lease_seconds}
delivery_timeout = {delivery_timeout}
poll_interval = 0.5
max_attempts = {max_attempts}
backoff_base = 0.01
backoff_cap = 0.2
errors_kept = 1000
maintenance_interval = 0.2

[sinks.alpha]
type = "callable"
target = "chaos_sink:alpha"

[sinks.beta]
type = "callable"
target = "chaos_sink:beta"

[sinks.gamma]
type = "callable"
target = "chaos_sink:gamma"
concurrency = 4

[sinks.hook]
type = "webhook"
url = {{ env = "CHAOS_WEBHOOK_URL" }}
secret = "{webhook_secret}"
timeout = {delivery_timeout}
connect_timeout = {connect_timeout}
allowed_networks = ["127.0.0.1/32"]
"""
# What the sinks received, in order (written by chaos_sink.py, and by the test for the
# webhook receiver). ``attempt`` is the sink's attempt number and ``called_at`` when the call
# started; a webhook request carries neither.
RECEIVED_TABLE: LiteralString = """
CREATE TABLE chaos_received (
    seq         bigserial   PRIMARY KEY,
    sink        text        NOT NULL,
    event_id    bigint      NOT NULL,
    key         text,
    attempt     integer,
    relay_pid   integer     NOT NULL,
    called_at   timestamptz,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


@dataclasses.dataclass(frozen=True)
class Plan:
    events: int
    keys: int
    relays: int
    kills: int
    terminate_rounds: int
    restarts: int
    """Restarts of the database server (the run's own embedded server)."""
    failure_rate: float
    """Share of calls each sink fails on purpose (the webhook receiver's share too)."""
    max_attempts: int
    lease_seconds: float
    delivery_timeout: float
    publish_rate: float | None
    """Events per second the publisher aims for; ``None``: as fast as it can."""
    seed: int
    deadline: float
    claim_mode: str = "lease"
    poison: bool = False
    """One event that ends every relay delivering it (``os._exit(77)`` in alpha)."""
    hangs: int = 0
    """Events whose first call to gamma hangs past the delivery timeout."""
    restart_down_seconds: float = 1.5
    paused_sink: str | None = None
    """A sink paused by an operator for part of the publish window, then resumed."""
    pause_window: tuple[float, float] = (0.2, 0.6)
    """When the pause starts and ends, as shares of the publish window."""


@dataclasses.dataclass
class Pause:
    """A sink paused and resumed during the run, and how many of its deliveries waited for it
    when it was resumed. Both times are on the database clock and lie inside the pause: read
    after the pause committed and before the resume began (a relay told of the resume may call
    the sink before the test's next statement)."""

    sink: str
    paused_at: dt.datetime
    resumed_at: dt.datetime | None = None
    waiting_at_resume: int = 0


@dataclasses.dataclass
class Chaos:
    """What was done to the relays and the server, and when (database clock)."""

    lease_seconds: float
    delivery_timeout: float
    kills: list[tuple[int, dt.datetime]] = dataclasses.field(default_factory=list)
    in_flight_at_kill: list[int] = dataclasses.field(default_factory=list)
    terminations: list[tuple[int, dt.datetime]] = dataclasses.field(default_factory=list)
    restarts: list[tuple[dt.datetime, dt.datetime]] = dataclasses.field(default_factory=list)
    """When the server was stopped, and when it accepted connections again."""
    poison_deaths: list[tuple[int, dt.datetime]] = dataclasses.field(default_factory=list)
    """Relays that exited with the poison's code, and when the supervisor saw it."""
    pause: Pause | None = None

    def fault_times(self) -> list[dt.datetime]:
        """When each fault ended: a kill, a termination round, a poison death, a restart."""
        times = [at for _, at in self.kills + self.terminations + self.poison_deaths]
        return times + [started for _, started in self.restarts]


# -- the events ---------------------------------------------------------------------------


@dataclasses.dataclass
class Planned:
    n: int
    key: str | None
    topic: str
    payload: dict[str, Any]


def plan_events(plan: Plan) -> tuple[list[Planned], int | None]:
    """The events to publish, in order, and the index of the poison event (if any).

    One event in twenty has no key: unordered, but never lost or duplicated either. The
    poison, a third of the way in, is keyed and has events of its key right after it (in
    its transaction, so claimed in its batch) and later on; the hanging events are spread
    over the run.
    """
    rng = random.Random(plan.seed)
    events = []
    for n in range(plan.events):
        key = None if n % 20 == 19 else f"key-{rng.randrange(plan.keys)}"
        events.append(Planned(n, key, rng.choice(TOPICS), {"n": n}))
    poison = None
    if plan.poison:
        poison = plan.events // 3 - (plan.events // 3) % 20  # keyed: n % 20 == 0
        events[poison].payload["poison"] = True
        for later in (poison + 1, poison + 7, poison + 60, poison + 400):
            if later < plan.events and events[later].key is not None:
                events[later].key = events[poison].key
    for h in range(plan.hangs):
        n = (h + 1) * plan.events // (plan.hangs + 1) + 3
        while poison is not None and n >= poison and events[n].key == events[poison].key:
            n += 1  # not the poison, nor an event parked behind it
        events[n].topic = HANG_TOPIC
        events[n].payload["hang"] = True
    return events, poison


class Publisher(threading.Thread):
    """Publishes the plan's events in transactions of 50, paced to ``publish_rate``.

    It survives the server's restarts: a transaction whose connection is lost is looked up
    by its events' ``n`` (a commit can succeed although its answer was lost), and published
    again only if it is not there. ``published`` holds exactly what committed.
    """

    TRANSACTION = 50

    def __init__(self, database_url: str, plan: Plan) -> None:
        super().__init__(name="chaos-publisher", daemon=True)
        self.database_url = database_url
        self.plan = plan
        self.planned, self._poison_n = plan_events(plan)
        self.published: list[tuple[int, str | None, str]] = []
        self.poison_id: int | None = None
        self.hang_ids: list[int] = []
        self.lost_transactions = 0
        """Transactions the server lost (rolled back by a restart) and published again."""
        self.unknown_commits = 0
        """Transactions whose commit was not confirmed, found committed."""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._publish_all()
        except BaseException as error:
            self.error = error

    def _publish_all(self) -> None:
        started = time.monotonic()
        conn: psycopg.Connection[Any] | None = None
        try:
            for first in range(0, self.plan.events, self.TRANSACTION):
                chunk = self.planned[first : first + self.TRANSACTION]
                ids = None
                while ids is None:
                    try:
                        if conn is None:
                            conn = self._connect()
                        ids = self._publish(conn, chunk)
                    except psycopg.OperationalError:
                        if conn is not None:
                            conn.close()
                        conn = self._connect()
                        ids = self._committed(conn, chunk)
                        if ids is None:
                            self.lost_transactions += 1
                        else:
                            self.unknown_commits += 1
                self._note(chunk, ids)
                if self.plan.publish_rate:
                    due = started + (first + self.TRANSACTION) / self.plan.publish_rate
                    time.sleep(max(0.0, due - time.monotonic()))
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> psycopg.Connection[Any]:
        give_up = time.monotonic() + 120
        while True:
            try:
                return psycopg.connect(self.database_url, application_name="chaos-test-publisher")
            except psycopg.OperationalError:
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.2)

    @staticmethod
    def _publish(conn: psycopg.Connection[Any], chunk: list[Planned]) -> list[int]:
        ids = []
        with conn.transaction():
            for planned in chunk:
                event = outbox.publish(conn, planned.topic, planned.payload, key=planned.key)
                assert event.id is not None
                ids.append(event.id)
        return ids

    @staticmethod
    def _committed(conn: psycopg.Connection[Any], chunk: list[Planned]) -> list[int] | None:
        """The ids of ``chunk``'s events if its transaction committed, else None."""
        with conn.transaction():
            rows = conn.execute(
                "SELECT (payload ->> 'n')::int, id FROM outbox_events "
                "WHERE (payload ->> 'n')::int = ANY(%s)",
                ([planned.n for planned in chunk],),
            ).fetchall()
        if not rows:
            return None
        found = dict(rows)
        assert len(found) == len(rows) == len(chunk), f"half a transaction committed: {rows}"
        return [found[planned.n] for planned in chunk]

    def _note(self, chunk: list[Planned], ids: list[int]) -> None:
        for planned, event_id in zip(chunk, ids, strict=True):
            self.published.append((event_id, planned.key, planned.topic))
            if planned.n == self._poison_n:
                self.poison_id = event_id
            if planned.payload.get("hang"):
                self.hang_ids.append(event_id)

    def parked_count(self) -> int:
        """How many events end not done: the poison and the later events of its key (these
        wait for alpha at least, every event's sink)."""
        if self._poison_n is None:
            return 0
        key = self.planned[self._poison_n].key
        return 1 + sum(1 for p in self.planned[self._poison_n + 1 :] if p.key == key)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"publisher failed: {self.error!r}") from self.error


# -- relay processes ----------------------------------------------------------------------


class Fleet:
    """Relay processes, each started as ``python -m outbox.cli relay``, logging to a file,
    under a supervisor: a relay that exits with the poison's code is counted and replaced;
    any other exit that the test did not cause is an error."""

    def __init__(self, workdir: Path, database_url: str, plan: Plan, webhook_url: str) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.webhook_url = webhook_url
        self.config = workdir / "outbox.toml"
        self.config.write_text(_config_text(plan), encoding="utf-8")
        self.claim_mode = plan.claim_mode
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Path] = {}
        self.pid_by_number: dict[int, int] = {}
        self.killed: set[int] = set()
        self.poison_deaths: list[tuple[int, dt.datetime]] = []
        self._reaped: set[int] = set()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
        )
        self.env["CHAOS_SINK_DATABASE_URL"] = database_url
        self.env["CHAOS_SINK_FAILURE_RATE"] = str(plan.failure_rate)
        self.env["CHAOS_SINK_HANG_SECONDS"] = str(max(5.0, 4 * plan.delivery_timeout))
        self.env["CHAOS_SINK_SYNCHRONOUS_COMMIT"] = "on" if plan.restarts else "off"

    def start(self) -> int:
        number = len(self.logs) + 1
        log = self.workdir / f"relay-{number:02d}.log"
        command = [sys.executable, "-m", "outbox.cli", "relay", "--config", str(self.config)]
        command += ["--database-url", self.database_url, "--log-level", "warning"]
        # Each relay posts to a path of its own, so the receiver knows who sent what.
        env = {**self.env, "CHAOS_WEBHOOK_URL": f"{self.webhook_url}/relay-{number}"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir
            )
        self.procs[proc.pid] = proc
        self.logs[proc.pid] = log
        self.pid_by_number[number] = proc.pid
        return proc.pid

    def supervise(self) -> None:
        """Replace relays that the poison ended; fail on any other exit."""
        for pid, proc in list(self.procs.items()):
            if pid in self.killed or pid in self._reaped or proc.poll() is None:
                continue
            assert proc.returncode == POISON_EXIT_CODE, (
                f"relay {pid} exited on its own with code {proc.returncode}"
            )
            self._reaped.add(pid)
            self.poison_deaths.append((pid, dt.datetime.now(dt.UTC)))
            self.start()

    def wait_connected(self, conn: psycopg.Connection[Any], timeout: float = 60.0) -> None:
        """Wait until every live relay has a connection to the database."""
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            self.supervise()
            rows = conn.execute(
                "SELECT DISTINCT application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name LIKE 'outbox relay %'"
            ).fetchall()
            if set(self.alive()) <= {_relay_pid(name) for (name,) in rows}:
                return
            time.sleep(0.1)
        raise AssertionError(f"relays not connected after {timeout:g}s")

    def alive(self) -> list[int]:
        return [pid for pid, proc in self.procs.items() if proc.poll() is None]

    def kill(self, pid: int) -> None:
        self.killed.add(pid)
        proc = self.procs[pid]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> dict[int, int | None]:
        """SIGTERM every live relay (graceful stop); return exit codes by pid."""
        running = self.alive()
        for pid in running:
            self.procs[pid].send_signal(signal.SIGTERM)
        codes: dict[int, int | None] = {}
        for pid in running:
            try:
                codes[pid] = self.procs[pid].wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                codes[pid] = None
        return codes

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def log_text(self) -> Iterator[str]:
        for path in self.logs.values():
            yield path.read_text(encoding="utf-8", errors="replace")

    def tails(self, lines: int = 25) -> str:
        parts = []
        for pid, path in self.logs.items():
            text = path.read_text(encoding="utf-8", errors="replace")
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"--- relay {pid} ({path.name}) ---\n{tail}")
        return "\n".join(parts)


def _config_text(plan: Plan) -> str:
    text = RELAY_CONFIG.format(
        claim_mode=plan.claim_mode,
        lease_seconds=plan.lease_seconds,
        delivery_timeout=plan.delivery_timeout,
        max_attempts=plan.max_attempts,
        webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
        connect_timeout=min(1.0, plan.delivery_timeout),
    )
    for sub in SUBSCRIPTIONS:
        topics = ", ".join(f'"{topic}"' for topic in sub.topics)
        sinks = ", ".join(f'"{sink}"' for sink in sub.sinks)
        text += f"\n[[subscriptions]]\ntopics = [{topics}]\nsinks = [{sinks}]\n"
    return text


def _relay_pid(name: str) -> int:
    """The process id in a relay's name (``host:pid:suffix``), or in its connections'
    ``application_name`` (``outbox relay host:pid:suffix``)."""
    return int(name.split(":")[-2])


# -- faults -------------------------------------------------------------------------------


def connect(url: str, timeout: float = 60.0) -> psycopg.Connection[Any]:
    """The test's own connection, retried while the server starts up. Autocommit: an idle
    transaction here would hold back the keyed claims."""
    give_up = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(url, autocommit=True, application_name="chaos-test-monitor")
        except psycopg.OperationalError:
            if time.monotonic() > give_up:
                raise
            time.sleep(0.2)


def scalar(conn: psycopg.Connection[Any], query: LiteralString) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _busy_relays(conn: psycopg.Connection[Any], fleet: Fleet) -> dict[int, int]:
    """Work in flight per relay pid. Lease mode: events marked processing (relay names are
    ``host:pid:suffix``). Lock mode, where nothing is marked: batches, that is relay
    connections holding a transaction that has locked rows (and so has a transaction id)."""
    if fleet.claim_mode == "lock":
        rows = conn.execute(
            "SELECT application_name, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE 'outbox relay %' "
            "AND backend_xid IS NOT NULL GROUP BY application_name"
        ).fetchall()
        return {_relay_pid(name): int(count) for name, count in rows}
    rows = conn.execute(
        "SELECT locked_by, count(*) FROM outbox_events WHERE status = 'processing' "
        "GROUP BY locked_by"
    ).fetchall()
    return {_relay_pid(name): int(count) for name, count in rows if name}


def _terminate_relay_connections(conn: psycopg.Connection[Any], chaos: Chaos) -> None:
    """Terminate every client connection to this database but the test's own."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid), clock_timestamp() FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'chaos-test%'"
    ).fetchall()
    at = rows[0][1] if rows else scalar(conn, "SELECT clock_timestamp()")
    chaos.terminations.append((sum(1 for ok, _ in rows if ok), at))


def _kill_one(
    fleet: Fleet, conn: psycopg.Connection[Any], rng: random.Random, chaos: Chaos
) -> None:
    """SIGKILL a relay, preferring one with work in flight (waiting up to 3 s for one),
    and start another."""
    alive = set(fleet.alive())
    busy: dict[int, int] = {}
    give_up = time.monotonic() + 3.0
    while not busy and time.monotonic() < give_up:
        busy = {pid: n for pid, n in _busy_relays(conn, fleet).items() if pid in alive}
        time.sleep(0 if busy else 0.01)
    victim = rng.choice(sorted(busy or alive))
    fleet.kill(victim)
    chaos.kills.append((victim, scalar(conn, "SELECT clock_timestamp()")))
    chaos.in_flight_at_kill.append(busy.get(victim, 0))
    fleet.start()


def _switch(url: str, sink: str, on: bool) -> None:
    """Pause or resume ``sink`` as an operator would (``outbox sinks pause|resume``): the
    switch and the relays' NOTIFY commit together."""

    async def switch() -> None:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, application_name="chaos-test-switch"
        )
        async with conn:
            if on:
                assert await Switches().resume(conn, sink), f"{sink} was not paused"
            else:
                assert await Switches().pause(conn, sink, "chaos: paused for a while")

    asyncio.run(switch())


def _pause(url: str, conn: psycopg.Connection[Any], sink: str, chaos: Chaos) -> None:
    _switch(url, sink, on=False)
    chaos.pause = Pause(sink, scalar(conn, "SELECT clock_timestamp()"))


def _resume(url: str, conn: psycopg.Connection[Any], sink: str, chaos: Chaos) -> None:
    assert chaos.pause is not None
    row = conn.execute(
        "SELECT count(*) FROM outbox_events WHERE status = 'pending' "
        "AND deliveries -> %s ->> 'status' = 'waiting'",
        (sink,),
    ).fetchone()
    assert row is not None
    chaos.pause.waiting_at_resume = int(row[0])
    chaos.pause.resumed_at = scalar(conn, "SELECT clock_timestamp()")
    _switch(url, sink, on=True)


def _schedule(plan: Plan, rng: random.Random) -> list[tuple[float, str]]:
    """When to kill a relay, terminate connections, restart the server, pause and resume a
    sink, in seconds from the start, spread over the time the publisher needs."""
    window = plan.events / plan.publish_rate if plan.publish_rate else 10.0
    actions = [(rng.uniform(1.5, max(2.0, window)), "kill") for _ in range(plan.kills)]
    actions += [
        (window * (n + 1) / (plan.terminate_rounds + 1), "terminate")
        for n in range(plan.terminate_rounds)
    ]
    # Away from the termination rounds (a third and two thirds in, or half way).
    actions += [(window * (n + 0.8) / plan.restarts, "restart") for n in range(plan.restarts)]
    if plan.paused_sink:
        actions += [
            (window * plan.pause_window[0], "pause"),
            (window * plan.pause_window[1], "resume"),
        ]
    return sorted(actions)


def drive(
    plan: Plan,
    fleet: Fleet,
    publisher: Publisher,
    url: str,
    server: EmbeddedServer | None,
) -> tuple[Chaos, float]:
    """Run the chaos schedule until every event is settled as the plan expects (all done;
    with a poison, that one failed and the later events of its key pending); return what
    was done and the time it took."""
    rng = random.Random(plan.seed + 1)
    chaos = Chaos(plan.lease_seconds, plan.delivery_timeout)
    conn = connect(url)
    try:
        fleet.wait_connected(conn)
        actions = collections.deque(_schedule(plan, rng))
        started = time.monotonic()
        publisher.start()
        while True:
            elapsed = time.monotonic() - started
            while actions and actions[0][0] <= elapsed:
                # Kills do not wait for replaced relays to connect: with a relay replaced at
                # every kill and every poison death, that would push them past the time the
                # publisher runs; a kill picks a relay with work in flight anyway.
                _, action = actions.popleft()
                if action == "kill":
                    _kill_one(fleet, conn, rng, chaos)
                elif action == "terminate":
                    fleet.wait_connected(conn)
                    _terminate_relay_connections(conn, chaos)
                elif action == "pause":
                    assert plan.paused_sink is not None
                    _pause(url, conn, plan.paused_sink, chaos)
                elif action == "resume":
                    assert plan.paused_sink is not None
                    _resume(url, conn, plan.paused_sink, chaos)
                else:
                    assert server is not None, "a restart needs the run's own server"
                    conn.close()
                    stopped = dt.datetime.now(dt.UTC)
                    server.restart(plan.restart_down_seconds)
                    chaos.restarts.append((stopped, dt.datetime.now(dt.UTC)))
                    conn = connect(url)
            publisher.check()
            fleet.supervise()
            # The first death may come in a batch (not charged), then max_attempts alone.
            assert len(fleet.poison_deaths) <= plan.max_attempts + 2, (
                f"{len(fleet.poison_deaths)} relays died of the poison, max_attempts = "
                f"{plan.max_attempts}: its crashes are not counted"
            )
            if _settled(conn, plan, publisher) and not actions and not publisher.is_alive():
                chaos.poison_deaths = list(fleet.poison_deaths)
                return chaos, elapsed
            if elapsed > plan.deadline:
                total, done, failed = _progress(conn)
                raise AssertionError(
                    f"not settled after {elapsed:.0f}s: {done}/{total} done, {failed} failed, "
                    f"of {plan.events}; publisher alive: {publisher.is_alive()}, actions "
                    f"left: {len(actions)}, poison deaths: {len(fleet.poison_deaths)}, "
                    f"expected not done: {publisher.parked_count()}; unfinished: "
                    f"{_unfinished(conn, publisher.poison_id)}"
                )
            time.sleep(0.1)
    finally:
        conn.close()


def parked_sinks(poison_deliveries: dict[str, Any], sinks: Iterable[str]) -> set[str]:
    """Which of ``sinks``, for an event after the failed poison in its key, wait behind it
    (docs/decisions/0011-sinks-held-independently.md: per-key order is per sink). A poison
    never routed (no sink recorded) holds back its whole key; one routed holds back only the
    sinks it has not reached (alpha at least, which ends every relay delivering it)."""
    if not poison_deliveries:
        return set(sinks)
    return {
        sink
        for sink in sinks
        if sink in poison_deliveries and poison_deliveries[sink].get("status") != "delivered"
    }


def _behind_poison_settled(conn: psycopg.Connection[Any], poison_id: int) -> bool:
    """Whether every later event of the poison's key has reached each sink not parked
    behind the poison."""
    rows = conn.execute(
        "SELECT e.id, e.topic, e.deliveries FROM outbox_events AS e "
        "JOIN outbox_events AS p ON p.id = %s AND e.key = p.key AND e.id >= p.id ORDER BY e.id",
        (poison_id,),
    ).fetchall()
    (_, _, poison), later = rows[0], rows[1:]
    router = Router(SUBSCRIPTIONS)
    for _, topic, deliveries in later:
        sinks = router.sinks_for(topic)
        free = set(sinks) - parked_sinks(poison, sinks)
        if any(deliveries.get(sink, {}).get("status") != "delivered" for sink in free):
            return False
    return True


def _unfinished(conn: psycopg.Connection[Any], poison_id: int | None) -> list[Any]:
    """The first events not done, the poison's key marked, for a failure message."""
    return conn.execute(
        "SELECT e.id, e.key = p.key AS poison_key, e.topic, e.status, e.process_at, e.deliveries "
        "FROM outbox_events AS e LEFT JOIN outbox_events AS p ON p.id = %s "
        "WHERE e.status <> 'done' ORDER BY poison_key NULLS FIRST, e.id LIMIT 8",
        (poison_id,),
    ).fetchall()


def _progress(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), "
        "count(*) FILTER (WHERE status = 'failed') FROM outbox_events"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _settled(conn: psycopg.Connection[Any], plan: Plan, publisher: Publisher) -> bool:
    """Whether every event is where it ends; fails at once when an event other than the
    poison has failed."""
    total, done, failed = _progress(conn)
    if failed:
        rows = conn.execute(
            "SELECT id, last_error FROM outbox_events WHERE status = 'failed' ORDER BY id"
        ).fetchall()
        innocent = [
            (event_id, error) for event_id, error in rows if event_id != publisher.poison_id
        ]
        assert not innocent, f"{len(innocent)} events failed (id, last error): {innocent[:5]}"
    parked = publisher.parked_count()
    counted = (
        total == plan.events and done == plan.events - parked and failed == (1 if parked else 0)
    )
    if not counted or publisher.poison_id is None:
        return counted
    return _behind_poison_settled(conn, publisher.poison_id)
