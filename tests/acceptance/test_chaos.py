"""Relay processes started as an operator would, killed as production would.

Events are published over many keys while several ``outbox relay`` processes deliver them to
two callable sinks (``chaos_sink.py``) that fail a share of calls at random and record every
success in a table of their own. Meanwhile relays are SIGKILLed (and replaced) and every
relay connection is terminated by the server. Afterwards the sinks' own records must show:
nothing lost, every event at every subscribed sink, per-key order kept at each sink, and
every duplicate accounted for: the attempt before it either never had its result written
(its relay was SIGKILLed, had its connection terminated, or lost its lease) or was written
as an error although the sink had the event (a timeout, the sink's own connection lost).
The sinks record each event's attempt number, which tells the two apart. A fault-free
control run must show no duplicates at all.

Both runs are made once per claim mode (``lease``, ``lock``); the lock-mode chaos run is a
shorter one (one termination round).

Size and seed come from the environment: ``OUTBOX_CHAOS_EVENTS`` (10000), ``_KEYS`` (500),
``_RELAYS`` (4), ``_KILLS`` (10), ``_TERMINATE_ROUNDS`` (2), ``_PUBLISH_RATE`` (events/s,
300), ``_CONTROL_EVENTS`` (2000), ``_SEED`` (random, printed), ``_DEADLINE`` (seconds, 300),
and for the lock-mode chaos run ``_LOCK_EVENTS`` (3000) and ``_LOCK_KILLS`` (4).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import pytest

import outbox
from outbox.routing import Router, Subscription

pytestmark = pytest.mark.acceptance

HERE = Path(__file__).resolve().parent
INJECTED = "RetryableError: chaos: injected failure"
SUBSCRIPTIONS = (
    Subscription(topics=("chaos.#",), sinks=("alpha",)),
    Subscription(topics=("chaos.order.*",), sinks=("beta",)),
)
# Order events go to both sinks, audit events to alpha alone.
TOPICS = ("chaos.order.placed", "chaos.order.paid", "chaos.audit")
RELAY_CONFIG = """\
[relay]
claim_mode = "{claim_mode}"
batch_size = 100
lease_seconds = {lease_seconds}
delivery_timeout = {delivery_timeout}
poll_interval = 0.5
max_attempts = 50
backoff_base = 0.01
backoff_cap = 0.2
errors_kept = 1000
maintenance_interval = 0.2
"""
# What the sinks received, in order (written by chaos_sink.py).
RECEIVED_TABLE: LiteralString = """
CREATE TABLE chaos_received (
    seq         bigserial   PRIMARY KEY,
    sink        text        NOT NULL,
    event_id    bigint      NOT NULL,
    key         text,
    attempt     integer     NOT NULL,
    relay_pid   integer     NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"OUTBOX_CHAOS_{name}", default))


@dataclasses.dataclass(frozen=True)
class Plan:
    events: int
    keys: int
    relays: int
    kills: int
    terminate_rounds: int
    failure_rate: float
    lease_seconds: float
    delivery_timeout: float
    publish_rate: float | None
    """Events per second the publisher aims for; ``None``: as fast as it can."""
    seed: int
    deadline: float
    claim_mode: str = "lease"


@dataclasses.dataclass
class Chaos:
    """What was done to the relays, and when (database clock)."""

    lease_seconds: float
    delivery_timeout: float
    kills: list[tuple[int, dt.datetime]] = dataclasses.field(default_factory=list)
    in_flight_at_kill: list[int] = dataclasses.field(default_factory=list)
    terminations: list[tuple[int, dt.datetime]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Receipt:
    seq: int
    sink: str
    event_id: int
    key: str | None
    attempt: int
    pid: int
    at: dt.datetime


@dataclasses.dataclass
class Report:
    seconds: float
    deliveries: int
    duplicates: int
    causes: collections.Counter[str]
    late_duplicates: int
    expired_leases: int
    errors: collections.Counter[str]
    """Sink errors other than the injected ones, by text."""


# -- relay processes ----------------------------------------------------------------------


class Fleet:
    """Relay processes, each started as ``python -m outbox.cli relay``, logging to a file."""

    def __init__(self, workdir: Path, database_url: str, plan: Plan) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.config = workdir / "outbox.toml"
        self.config.write_text(_config_text(plan), encoding="utf-8")
        self.claim_mode = plan.claim_mode
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.logs: dict[int, Path] = {}
        self.killed: set[int] = set()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
        self.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(HERE), os.environ.get("PYTHONPATH")])
        )
        self.env["CHAOS_SINK_DATABASE_URL"] = database_url
        self.env["CHAOS_SINK_FAILURE_RATE"] = str(plan.failure_rate)

    def start(self) -> int:
        log = self.workdir / f"relay-{len(self.logs) + 1:02d}.log"
        command = [sys.executable, "-m", "outbox.cli", "relay", "--config", str(self.config)]
        command += ["--database-url", self.database_url, "--log-level", "warning"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
            )
        self.procs[proc.pid] = proc
        self.logs[proc.pid] = log
        return proc.pid

    def wait_connected(self, conn: psycopg.Connection[Any], timeout: float = 60.0) -> None:
        """Wait until every live relay has a connection to the database."""
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
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

    def check_none_exited(self) -> None:
        """A relay must run until it is killed or stopped."""
        exited = {
            pid: proc.returncode
            for pid, proc in self.procs.items()
            if pid not in self.killed and proc.poll() is not None
        }
        assert not exited, f"relays exited on their own (pid: exit code): {exited}"

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
    )
    for name in sorted({sink for sub in SUBSCRIPTIONS for sink in sub.sinks}):
        text += f'\n[sinks.{name}]\ntype = "callable"\ntarget = "chaos_sink:{name}"\n'
    for sub in SUBSCRIPTIONS:
        topics = ", ".join(f'"{topic}"' for topic in sub.topics)
        sinks = ", ".join(f'"{sink}"' for sink in sub.sinks)
        text += f"\n[[subscriptions]]\ntopics = [{topics}]\nsinks = [{sinks}]\n"
    return text


# -- publishing ---------------------------------------------------------------------------


class Publisher(threading.Thread):
    """Publishes the plan's events in transactions of 50, paced to ``publish_rate``."""

    TRANSACTION = 50

    def __init__(self, database_url: str, plan: Plan) -> None:
        super().__init__(name="chaos-publisher", daemon=True)
        self.database_url = database_url
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.published: list[tuple[int, str | None, str]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(
                self.database_url, application_name="chaos-test-publisher"
            ) as conn:
                self._publish_all(conn)
        except BaseException as error:
            self.error = error

    def _publish_all(self, conn: psycopg.Connection[Any]) -> None:
        started = time.monotonic()
        for first in range(0, self.plan.events, self.TRANSACTION):
            with conn.transaction():
                for n in range(first, min(self.plan.events, first + self.TRANSACTION)):
                    self._publish_one(conn, n)
            if self.plan.publish_rate:
                due = started + (first + self.TRANSACTION) / self.plan.publish_rate
                time.sleep(max(0.0, due - time.monotonic()))

    def _publish_one(self, conn: psycopg.Connection[Any], n: int) -> None:
        # One event in twenty has no key: unordered, but never lost or duplicated either.
        key = None if n % 20 == 19 else f"key-{self.rng.randrange(self.plan.keys)}"
        topic = self.rng.choice(TOPICS)
        event = outbox.publish(conn, topic, {"n": n}, key=key)
        assert event.id is not None
        self.published.append((event.id, key, topic))

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"publisher failed: {self.error!r}") from self.error


# -- the run ------------------------------------------------------------------------------


def _connect(url: str) -> psycopg.Connection[Any]:
    # Autocommit: an idle transaction here would hold back the xmin that keyed claims wait for.
    return psycopg.connect(url, autocommit=True, application_name="chaos-test-monitor")


def _scalar(conn: psycopg.Connection[Any], query: LiteralString) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _progress(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), "
        "count(*) FILTER (WHERE status = 'failed') FROM outbox_events"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


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


def _relay_pid(name: str) -> int:
    """The process id in a relay's name (``host:pid:suffix``), or in its connections'
    ``application_name`` (``outbox relay host:pid:suffix``)."""
    return int(name.split(":")[-2])


def _terminate_relay_connections(conn: psycopg.Connection[Any], chaos: Chaos) -> None:
    """Terminate every client connection to this database but the test's own."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid), clock_timestamp() FROM pg_stat_activity "
        "WHERE datname = current_database() AND backend_type = 'client backend' "
        "AND pid <> pg_backend_pid() AND application_name NOT LIKE 'chaos-test%'"
    ).fetchall()
    at = rows[0][1] if rows else _scalar(conn, "SELECT clock_timestamp()")
    chaos.terminations.append((sum(1 for ok, _ in rows if ok), at))


def _kill_one(
    fleet: Fleet, conn: psycopg.Connection[Any], rng: random.Random, chaos: Chaos
) -> None:
    """SIGKILL a relay, preferring one with events in flight, and start another."""
    alive = set(fleet.alive())
    busy: dict[int, int] = {}
    give_up = time.monotonic() + 1.0
    while not busy and time.monotonic() < give_up:
        busy = {pid: n for pid, n in _busy_relays(conn, fleet).items() if pid in alive}
        time.sleep(0 if busy else 0.01)
    victim = rng.choice(sorted(busy or alive))
    fleet.kill(victim)
    chaos.kills.append((victim, _scalar(conn, "SELECT clock_timestamp()")))
    chaos.in_flight_at_kill.append(busy.get(victim, 0))
    fleet.start()


def _schedule(plan: Plan, rng: random.Random) -> list[tuple[float, str]]:
    """When to kill a relay and when to terminate connections, in seconds from the start,
    spread over the time the publisher needs."""
    window = plan.events / plan.publish_rate if plan.publish_rate else 10.0
    actions = [(rng.uniform(1.5, max(2.0, window)), "kill") for _ in range(plan.kills)]
    actions += [
        (window * (n + 1) / (plan.terminate_rounds + 1), "terminate")
        for n in range(plan.terminate_rounds)
    ]
    return sorted(actions)


def _drive(
    plan: Plan, fleet: Fleet, publisher: Publisher, conn: psycopg.Connection[Any]
) -> tuple[Chaos, float]:
    """Run the chaos schedule until every event is done; return what was done and the time."""
    rng = random.Random(plan.seed + 1)
    chaos = Chaos(plan.lease_seconds, plan.delivery_timeout)
    fleet.wait_connected(conn)
    actions = collections.deque(_schedule(plan, rng))
    started = time.monotonic()
    publisher.start()
    while True:
        elapsed = time.monotonic() - started
        while actions and actions[0][0] <= elapsed:
            _, action = actions.popleft()
            # Chaos for relays still starting up would test nothing: let them connect first.
            fleet.wait_connected(conn)
            if action == "kill":
                _kill_one(fleet, conn, rng, chaos)
            else:
                _terminate_relay_connections(conn, chaos)
        publisher.check()
        fleet.check_none_exited()
        total, done, failed = _progress(conn)
        assert failed == 0, f"{failed} events failed"
        if not actions and not publisher.is_alive() and done == total == plan.events:
            return chaos, elapsed
        if elapsed > plan.deadline:
            raise AssertionError(
                f"not drained after {elapsed:.0f}s: {done}/{total} done of {plan.events}, "
                f"publisher alive: {publisher.is_alive()}, actions left: {len(actions)}"
            )
        time.sleep(0.1)


def _run(plan: Plan, database_url: str, workdir: Path) -> tuple[Report, Chaos]:
    with _connect(database_url) as conn:
        conn.execute(RECEIVED_TABLE)
    fleet = Fleet(workdir, database_url, plan)
    publisher = Publisher(database_url, plan)
    try:
        for _ in range(plan.relays):
            fleet.start()
        with _connect(database_url) as conn:
            chaos, seconds = _drive(plan, fleet, publisher, conn)
            fleet.wait_connected(conn)  # a relay still importing has no SIGTERM handler yet
            codes = fleet.stop()
            assert all(code == 0 for code in codes.values()), f"SIGTERM exit codes: {codes}"
            report = _check(conn, plan, publisher, chaos, list(fleet.log_text()), seconds)
    except BaseException:
        print(f"seed {plan.seed}; relay logs under {workdir}\n{fleet.tails()}")
        raise
    finally:
        fleet.kill_all()
        publisher.join(timeout=30)
    return report, chaos


# -- checks -------------------------------------------------------------------------------


def _check(
    conn: psycopg.Connection[Any],
    plan: Plan,
    publisher: Publisher,
    chaos: Chaos,
    logs: list[str],
    seconds: float,
) -> Report:
    events = conn.execute("SELECT id, key, topic, status, errors FROM outbox_events").fetchall()
    receipts = [
        Receipt(*row)
        for row in conn.execute(
            "SELECT seq, sink, event_id, key, attempt, relay_pid, received_at "
            "FROM chaos_received ORDER BY seq"
        )
    ]
    published = {event_id: (key, topic) for event_id, key, topic in publisher.published}
    assert len(published) == plan.events
    assert {row[0]: (row[1], row[2]) for row in events} == published, "outbox rows changed"
    not_done = [(row[0], row[3]) for row in events if row[3] != "done"]
    assert not not_done, f"{len(not_done)} events not done, e.g. {not_done[:5]}"

    router = Router(SUBSCRIPTIONS)
    expected = {
        (sink, eid) for eid, (_, topic) in published.items() for sink in router.sinks_for(topic)
    }
    delivered = {(r.sink, r.event_id) for r in receipts}
    lost = sorted(expected - delivered)
    assert not lost, f"{len(lost)} deliveries lost, e.g. {lost[:10]}"
    unexpected = sorted(delivered - expected)
    assert not unexpected, f"{len(unexpected)} deliveries to unsubscribed sinks: {unexpected[:10]}"
    wrong_key = [(r.event_id, r.key) for r in receipts if r.key != published[r.event_id][0]]
    assert not wrong_key, f"sinks saw the wrong key: {wrong_key[:10]}"

    broken, late = _key_order(receipts)
    assert not broken, (
        f"per-key order broken (sink, key, id seen, earlier id after it): {broken[:10]}"
    )

    other_errors = [(row[0], error) for row in events for error in row[4]]
    other_errors = [(eid, error) for eid, error in other_errors if error["error"] != INJECTED]
    sink_errors = {(error["sink"], eid, error["attempt"]) for eid, error in other_errors}
    causes, unexplained = _explain_duplicates(receipts, chaos, sink_errors, _lease_lost(logs))
    assert not unexplained, (
        f"{len(unexplained)} duplicate receipts that no lost or failed attempt explains "
        f"(earlier receipt, later receipt): {unexplained[:5]}; kills: {chaos.kills}; "
        f"terminations: {chaos.terminations}"
    )
    return Report(
        seconds=seconds,
        deliveries=len(receipts),
        duplicates=len(receipts) - len(delivered),
        causes=causes,
        late_duplicates=late,
        errors=collections.Counter(error["error"] for _, error in other_errors),
        expired_leases=sum(len(_EXPIRED.findall(text)) for text in logs),
    )


def _key_order(receipts: list[Receipt]) -> tuple[list[tuple[str, str, int, int]], int]:
    """Per sink and key, first receipts must come in id order. Returns the violations and
    the count of late duplicates: receipts of an id after a higher id of the same key had
    arrived (at-least-once allows them; none are expected)."""
    seen: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    highest: dict[tuple[str, str], int] = {}
    broken = []
    late = 0
    for r in receipts:
        if r.key is None:
            continue
        stream = (r.sink, r.key)
        top = highest.get(stream, 0)
        if r.event_id in seen[stream]:
            late += r.event_id < top
            continue
        seen[stream].add(r.event_id)
        if r.event_id < top:
            broken.append((r.sink, r.key, top, r.event_id))
        highest[stream] = max(top, r.event_id)
    return broken, late


_EXPIRED = re.compile(r"lease expired for event (\d+)")
_LEASE_LOST = re.compile(r"event (\d+) \([^)]*\): lease lost")


def _lease_lost(logs: list[str]) -> set[int]:
    """Events whose relay found at settle time that its lease had been taken over."""
    return {int(match) for text in logs for match in _LEASE_LOST.findall(text)}


def _explain_duplicates(
    receipts: list[Receipt],
    chaos: Chaos,
    sink_errors: set[tuple[str, int, int]],
    lease_lost: set[int],
) -> tuple[collections.Counter[str], list[tuple[Receipt, Receipt]]]:
    """Account for every receipt after the first of its (sink, event).

    The receipt before it was an attempt whose success never reached the table: the relay
    recorded it as an error although the sink had the event (a timeout, a lost connection
    in the sink), or its claim was lost because the relay was SIGKILLed, had its connection
    terminated, or found its lease taken over when it came to settle.
    """
    causes: collections.Counter[str] = collections.Counter()
    unexplained = []
    previous: dict[tuple[str, int], Receipt] = {}
    for r in receipts:
        before = previous.get((r.sink, r.event_id))
        previous[(r.sink, r.event_id)] = r
        if before is None:
            continue
        cause = None
        if r.attempt < before.attempt:
            pass
        elif (r.sink, r.event_id, before.attempt) in sink_errors:
            cause = "error after the sink had it"
        elif _shortly_before_kill(before, chaos):
            cause = "relay SIGKILLed"
        elif _around_termination(before.at, chaos):
            cause = "connection terminated"
        elif r.event_id in lease_lost:
            cause = "lease lost"
        if cause is None:
            unexplained.append((before, r))
        else:
            causes[cause] += 1
    return causes, unexplained


# How far a relay's clock may lag behind its lease on this loaded 2-core machine: a claim
# in flight at a kill or a termination was delivered within a lease and a timeout of it.
_SLACK = dt.timedelta(seconds=5)


def _shortly_before_kill(receipt: Receipt, chaos: Chaos) -> bool:
    """Whether the relay that delivered ``receipt`` was SIGKILLed while it could still
    have held that claim."""
    window = dt.timedelta(seconds=chaos.lease_seconds) + _SLACK
    return any(
        pid == receipt.pid and killed_at - window <= receipt.at <= killed_at
        for pid, killed_at in chaos.kills
    )


def _around_termination(at: dt.datetime, chaos: Chaos) -> bool:
    """Whether a delivery at ``at`` belonged to a claim that a termination round cut off:
    claimed at most a lease before the round, delivered at most a timeout after it."""
    before = dt.timedelta(seconds=chaos.lease_seconds) + _SLACK
    after = dt.timedelta(seconds=chaos.delivery_timeout) + _SLACK
    return any(when - before <= at <= when + after for _, when in chaos.terminations)


# -- the tests ----------------------------------------------------------------------------


def _say(capsys: pytest.CaptureFixture[str], title: str, text: str) -> None:
    with capsys.disabled():
        print(f"\n[{title}] {text}")


def _chaos_plan(claim_mode: str) -> Plan:
    # The lock-mode round is shorter: it runs beside the full lease-mode one, and what it adds
    # (rows that nothing marks, freed at a kill) shows in fewer events.
    lock = claim_mode == "lock"
    return Plan(
        events=_env_int("LOCK_EVENTS", 3_000) if lock else _env_int("EVENTS", 10_000),
        keys=_env_int("KEYS", 500),
        relays=_env_int("RELAYS", 4),
        kills=_env_int("LOCK_KILLS", 4) if lock else _env_int("KILLS", 10),
        terminate_rounds=1 if lock else _env_int("TERMINATE_ROUNDS", 2),
        failure_rate=0.2,
        lease_seconds=2.0,
        delivery_timeout=1.0,
        publish_rate=float(_env_int("PUBLISH_RATE", 300)),
        seed=_env_int("SEED", random.randrange(1_000_000)),
        deadline=float(_env_int("DEADLINE", 300)),
        claim_mode=claim_mode,
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
def test_relays_lose_nothing_and_keep_key_order_through_kills_and_lost_connections(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], claim_mode: str
) -> None:
    plan = _chaos_plan(claim_mode)
    report, chaos = _run(plan, database_url, tmp_path)

    assert len(chaos.kills) == plan.kills
    assert plan.kills == 0 or sum(chaos.in_flight_at_kill) > 0, "no kill caught work in flight"
    assert len(chaos.terminations) == plan.terminate_rounds
    assert all(count > 0 for count, _ in chaos.terminations), chaos.terminations
    if claim_mode == "lock":
        assert report.expired_leases == 0, "lock mode wrote a lease"
    in_flight = "batches" if claim_mode == "lock" else "events"
    _say(
        capsys,
        f"chaos, {claim_mode}",
        f"seed={plan.seed} events={plan.events} keys={plan.keys} relays={plan.relays}: "
        f"drained in {report.seconds:.1f}s; {len(chaos.kills)} SIGKILLs ({in_flight} in "
        f"flight: {chaos.in_flight_at_kill}); connections terminated per round: "
        f"{[count for count, _ in chaos.terminations]}; {report.deliveries} deliveries, "
        f"{report.duplicates} duplicates ({dict(report.causes)}), "
        f"{report.late_duplicates} after a later event of their key; "
        f"{report.expired_leases} leases expired; other sink errors: {dict(report.errors)}",
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
def test_fault_free_relays_deliver_every_event_exactly_once_in_key_order(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], claim_mode: str
) -> None:
    plan = Plan(
        events=_env_int("CONTROL_EVENTS", 2_000),
        keys=_env_int("KEYS", 500),
        relays=_env_int("RELAYS", 4),
        kills=0,
        terminate_rounds=0,
        failure_rate=0.0,
        # Generous: with no faults, only a delivery slower than these (a loaded machine)
        # could make a duplicate, and that would say nothing about the relay.
        lease_seconds=60.0,
        delivery_timeout=30.0,
        publish_rate=None,
        seed=_env_int("SEED", random.randrange(1_000_000)),
        deadline=float(_env_int("DEADLINE", 300)),
        claim_mode=claim_mode,
    )
    report, _ = _run(plan, database_url, tmp_path)

    assert report.duplicates == 0, report
    assert report.expired_leases == 0
    _say(
        capsys,
        f"control, {claim_mode}",
        f"seed={plan.seed} events={plan.events} relays={plan.relays}: drained in "
        f"{report.seconds:.1f}s; {report.deliveries} deliveries, 0 duplicates",
    )
