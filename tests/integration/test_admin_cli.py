"""The operator commands as an operator runs them: `outbox status`, `outbox events list|show`,
`outbox retry`, `outbox replay`, `outbox purge`, against a real PostgreSQL.

Rows are published with :func:`outbox.publish`, then pushed into the states under test
(failed, done, retrying, leased) with direct UPDATEs. Commands run as subprocesses in an empty
directory, so no configuration file is picked up; the confirmation prompt is answered through
a pseudo-terminal. A few checks call :mod:`outbox.admin` directly where that is sharper, and
two run a relay afterwards to prove that a retried or replayed event reaches exactly the sinks
it should.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import outbox
from outbox import admin, runtime
from outbox._urls import with_database
from outbox.relay import Relay
from outbox.routing import Subscription, topic_matches
from outbox.sinks import Event, Sink

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/x?connect_timeout=2"
HOOK_FAILED = {"status": "failed", "attempts": 5, "last_error": "HTTP 500"}
DELIVERED = {"status": "delivered", "attempts": 1, "delivered_at": "2024-01-01T00:00:00+00:00"}


# -- helpers ---------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory: no config/outbox.toml to pick up."""
    return tmp_path


def clean_env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}


def cli(
    cwd: Path, *args: str, url: str | None = None, stdin: Any = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    database = ["--database-url", url] if url else []
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args, *database],
        cwd=cwd,
        env=clean_env(),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_json(cwd: Path, *args: str, url: str) -> Any:
    result = cli(cwd, *args, "--json", url=url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def cli_in_terminal(cwd: Path, *args: str, url: str, answer: str) -> tuple[int, str]:
    """Run with a pseudo-terminal as stdin and stdout; type ``answer`` at the prompt."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "outbox.cli", *args, "--database-url", url],
        cwd=cwd,
        env=clean_env(),
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.STDOUT,
    )
    os.close(terminal)
    seen = b""
    try:
        seen = _read_until(controller, seen, b"[y/N]")
        os.write(controller, answer.encode() + b"\n")
        seen = _read_until(controller, seen, None)
        return proc.wait(timeout=60), seen.decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()


def _read_until(fd: int, seen: bytes, marker: bytes | None) -> bytes:
    deadline = time.monotonic() + 60
    while marker is None or marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            chunk = b""
        if not chunk:
            assert marker is None, f"no {marker!r} in {seen!r}"
            return seen
        seen += chunk
    return seen


def publish(url: str, topic: str, key: str | None = None, payload: Any = None) -> int:
    with psycopg.connect(url) as conn:
        event = outbox.publish(conn, topic, payload or {"topic": topic}, key=key)
    assert event.id is not None
    return event.id


def update(url: str, event_id: int, **columns: Any) -> None:
    """Set columns of one row; dicts and lists become jsonb, strings ending in ' ago' become
    now() minus that interval."""
    assignments, values = [], []
    for name, value in columns.items():
        if isinstance(value, str) and value.endswith(" ago"):
            assignments.append(f"{name} = now() - %s::interval")
            values.append(value.removesuffix(" ago"))
            continue
        assignments.append(f"{name} = %s")
        values.append(Jsonb(value) if isinstance(value, dict | list) else value)
    statement = f"UPDATE outbox_events SET {', '.join(assignments)} WHERE id = %s"
    with psycopg.connect(url) as conn:
        conn.execute(statement.encode(), [*values, event_id])


def fail(url: str, event_id: int, deliveries: dict[str, Any], ago: str = "1 hour") -> None:
    update(
        url,
        event_id,
        status="failed",
        attempts=5,
        deliveries=deliveries,
        last_error="HTTP 500",
        done_at=f"{ago} ago",
    )


def finish(url: str, event_id: int, deliveries: dict[str, Any], ago: str = "1 hour") -> None:
    update(url, event_id, status="done", attempts=1, deliveries=deliveries, done_at=f"{ago} ago")


def row(url: str, event_id: int) -> dict[str, Any] | None:
    with psycopg.connect(url) as conn:
        cursor = conn.execute("SELECT * FROM outbox_events WHERE id = %s", [event_id])
        found = cursor.fetchone()
        if found is None:
            return None
        assert cursor.description is not None
        return dict(zip([c.name for c in cursor.description], found, strict=True))


def must_row(url: str, event_id: int) -> dict[str, Any]:
    found = row(url, event_id)
    assert found is not None, f"event {event_id} is gone"
    return found


def snapshot(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, status, attempts, deliveries, done_at FROM outbox_events ORDER BY id"
        ).fetchall()


class Recorder(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[Event] = []

    async def deliver(self, event: Event) -> None:
        self.received.append(event)


async def drain(url: str, sinks: dict[str, Sink]) -> None:
    """Run a relay until nothing is left to do."""
    options = runtime.relay_options(poll_interval=0.05, lease_seconds=5.0, delivery_timeout=4.0)
    relay = Relay(url, sinks, [Subscription(("order.#",), tuple(sinks))], options)
    await relay.run(drain=True)


# -- status ----------------------------------------------------------------------------------


@pytest.fixture
def busy(database_url: str) -> dict[str, int]:
    """A table with a bit of everything; returns the ids by role."""
    url = database_url
    ids = {
        "parked": publish(url, "order.paid", key="cust-1"),
        "behind1": publish(url, "order.shipped", key="cust-1"),
        "behind2": publish(url, "order.shipped", key="cust-1"),
        "done": publish(url, "order.paid"),
        "retrying": publish(url, "order.paid"),
        "leased": publish(url, "user.created"),
        "stale": publish(url, "user.created"),
        "due": publish(url, "user.deleted"),
    }
    fail(url, ids["parked"], {"hook": HOOK_FAILED, "audit": DELIVERED})
    finish(url, ids["done"], {"hook": DELIVERED})
    update(
        url,
        ids["retrying"],
        process_at="1 hour ago",
        deliveries={
            "hook": {"status": "retrying", "attempts": 2, "last_error": "timeout"},
            "audit": DELIVERED,
        },
    )
    update(url, ids["due"], process_at="30 minutes ago")
    for name, until in (
        ("leased", "now() + interval '1 minute'"),
        ("stale", "now() - interval '1 second'"),
    ):
        with psycopg.connect(url) as conn:
            conn.execute(
                f"UPDATE outbox_events SET status = 'processing', locked_by = 'relay-a', "
                f"lease_token = gen_random_uuid(), locked_until = {until} WHERE id = %s".encode(),
                [ids[name]],
            )
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO outbox_sinks (name, disabled_at, disabled_reason) "
            "VALUES ('gone', now(), 'HTTP 410 Gone'), ('back', NULL, NULL)"
        )
    return ids


def test_status_json(database_url: str, workdir: Path, busy: dict[str, int]) -> None:
    report = cli_json(workdir, "status", url=database_url)

    assert set(report) == {
        "now",
        "topics",
        "totals",
        "lag",
        "parked_keys",
        "parked",
        "failing_sinks",
        "disabled_sinks",
        "relays",
        "connected",
        "fence_holder",
        "sinks",
        "unrouted",
    }
    assert report["topics"] == {
        "order.paid": {"pending": 1, "processing": 0, "done": 1, "failed": 1},
        "order.shipped": {"pending": 2, "processing": 0, "done": 0, "failed": 0},
        "user.created": {"pending": 0, "processing": 2, "done": 0, "failed": 0},
        "user.deleted": {"pending": 1, "processing": 0, "done": 0, "failed": 0},
    }
    assert report["totals"] == {"pending": 4, "processing": 2, "done": 1, "failed": 1}
    # Of the two events behind the parked key, the first is due: a relay routes it and
    # delivers it to the sinks the failed event did not fail at (decision 11); the second
    # waits until the first is routed. The lag is the retrying event's hour.
    lag = report["lag"]
    assert lag["event_id"] == busy["retrying"]
    assert lag["due"] == 3
    assert 3500 < lag["seconds"] < 3700
    assert report["parked_keys"] == 1
    assert report["parked"] == [
        {
            "key": "cust-1",
            "failed_id": busy["parked"],
            "topic": "order.paid",
            "error": "HTTP 500",
            "failed_at": report["parked"][0]["failed_at"],
            "waiting": 2,
        }
    ]
    assert report["failing_sinks"] == [
        {
            "sink": "hook",
            "retrying": 1,
            "failed": 1,
            "last_error": "timeout",
            "last_event_id": busy["retrying"],
        }
    ]
    assert [(d["sink"], d["reason"]) for d in report["disabled_sinks"]] == [
        ("gone", "HTTP 410 Gone")
    ]
    [relay] = report["relays"]
    assert relay["relay"] == "relay-a"
    assert relay["events"] == 2
    assert relay["expired"] == 1
    assert relay["lease_until"] > report["now"]
    assert report["connected"] == []  # no relay runs


def test_status_shows_connected_relays_and_their_open_transactions(
    database_url: str, workdir: Path
) -> None:
    # Connections named as a relay names its own: one idle, one inside a transaction (what a
    # lock-mode batch in flight looks like).
    with (
        psycopg.connect(database_url, application_name="outbox relay r1") as idle,
        psycopg.connect(database_url, application_name="outbox relay r1") as busy_conn,
        psycopg.connect(database_url, application_name="another app") as other,
    ):
        idle.execute("SELECT 1")
        idle.commit()
        other.execute("SELECT 1")
        busy_conn.execute("SELECT 1")  # its transaction stays open
        report = cli_json(workdir, "status", url=database_url)
        text = cli(workdir, "status", url=database_url).stdout
    [connected] = report["connected"]
    assert connected["relay"] == "r1"
    assert connected["connections"] == 2
    assert connected["oldest_transaction"] >= 0
    assert "relays connected: 1" in text
    assert "r1: 2 connection(s), oldest transaction open " in text


def test_status_text(database_url: str, workdir: Path, busy: dict[str, int]) -> None:
    result = cli(workdir, "status", url=database_url)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TOPIC", "PENDING", "PROCESSING", "DONE", "FAILED"]
    assert "order.paid 1 0 1 1" in [" ".join(line.split()) for line in lines]
    assert "total 4 2 1 1" in [" ".join(line.split()) for line in lines]
    out = result.stdout
    assert "lag: 1.0h (3 due" in out
    assert f"longest waiting: event {busy['retrying']}" in out
    assert "parked keys: 1" in out
    assert f"cust-1: event {busy['parked']} (order.paid) failed, 2 waiting" in out
    assert "hook: 1 retrying, 1 failed" in out
    assert "disabled sinks: 1" in out
    assert "gone: since" in out
    assert "HTTP 410 Gone" in out
    assert "relay-a: 2 event(s)" in out
    assert "1 expired" in out


def test_status_of_an_empty_table(database_url: str, workdir: Path) -> None:
    report = cli_json(workdir, "status", url=database_url)
    assert report["topics"] == {}
    assert report["totals"] == {"pending": 0, "processing": 0, "done": 0, "failed": 0}
    assert report["lag"] is None
    assert report["parked"] == []
    assert report["relays"] == []

    text = cli(workdir, "status", url=database_url).stdout
    assert "lag: none" in text
    assert "parked keys: 0" in text


def test_status_reads_the_schema_from_the_config_file(server_url: str, workdir: Path) -> None:
    # A database of its own, migrated into schema "ops", named only by the config file.
    name = f"outbox_admin_cfg_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        url = with_database(server_url, name)
        outbox.migrate(url, schema="ops")
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO ops.outbox_events (topic, payload) VALUES ('order.paid', '{}')"
            )
        config = workdir / "ops.toml"
        config.write_text(f'database_url = "{url}"\nschema = "ops"\n')

        result = cli(workdir, "status", "--json", "--config", str(config))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["totals"]["pending"] == 1
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


# -- events list / show ----------------------------------------------------------------------


@pytest.fixture
def catalogue(database_url: str) -> dict[str, int]:
    url = database_url
    ids = {
        "paid_old": publish(url, "order.paid", key="a"),
        "paid_late": publish(url, "order.paid.late", key="b"),
        "shipped": publish(url, "order.shipped", key="a"),
        "user": publish(url, "user.created"),
        "order": publish(url, "order"),
    }
    update(url, ids["paid_old"], created_at="3 days ago")
    update(url, ids["paid_late"], created_at="5 hours ago")
    finish(url, ids["paid_old"], {"hook": DELIVERED, "audit": DELIVERED})
    fail(url, ids["paid_late"], {"hook": HOOK_FAILED, "audit": DELIVERED})
    update(
        url,
        ids["shipped"],
        deliveries={"hook": {"status": "retrying", "attempts": 1, "last_error": "x"}},
    )
    return ids


def listed(workdir: Path, url: str, *args: str) -> list[int]:
    return [event["id"] for event in cli_json(workdir, "events", "list", *args, url=url)]


def test_events_list_filters(database_url: str, workdir: Path, catalogue: dict[str, int]) -> None:
    url, ids = database_url, catalogue

    assert listed(workdir, url) == sorted(ids.values(), reverse=True), "newest first"
    assert listed(workdir, url, "--topic", "order.*") == [ids["shipped"], ids["paid_old"]]
    assert listed(workdir, url, "--topic", "order.#") == [
        ids["order"],
        ids["shipped"],
        ids["paid_late"],
        ids["paid_old"],
    ]
    assert listed(workdir, url, "--topic", "*.paid.#") == [ids["paid_late"], ids["paid_old"]]
    assert listed(workdir, url, "--topic", "#.late") == [ids["paid_late"]]
    assert listed(workdir, url, "--status", "failed") == [ids["paid_late"]]
    assert listed(workdir, url, "--status", "done", "--status", "failed") == [
        ids["paid_late"],
        ids["paid_old"],
    ]
    assert listed(workdir, url, "--key", "a") == [ids["shipped"], ids["paid_old"]]
    assert listed(workdir, url, "--sink", "hook") == [
        ids["shipped"],
        ids["paid_late"],
        ids["paid_old"],
    ]
    assert listed(workdir, url, "--sink", "hook", "--sink-status", "failed") == [ids["paid_late"]]
    assert listed(workdir, url, "--sink", "audit", "--sink-status", "delivered") == [
        ids["paid_late"],
        ids["paid_old"],
    ]
    assert listed(workdir, url, "--since", "1d") == [
        ids["order"],
        ids["user"],
        ids["shipped"],
        ids["paid_late"],
    ]
    assert listed(workdir, url, "--since", "4d", "--until", "1d") == [ids["paid_old"]]
    assert listed(workdir, url, "--until", "2h") == [ids["paid_late"], ids["paid_old"]]
    assert listed(workdir, url, "--since", "2000-01-01", "--until", "2000-01-02T00:00:00Z") == []
    assert listed(workdir, url, "--limit", "2") == [ids["order"], ids["user"]]


def test_events_list_json_shape_and_text(
    database_url: str, workdir: Path, catalogue: dict[str, int]
) -> None:
    [event] = cli_json(workdir, "events", "list", "--status", "failed", url=database_url)
    assert event == {
        "id": catalogue["paid_late"],
        "topic": "order.paid.late",
        "key": "b",
        "status": "failed",
        "attempts": 5,
        "created_at": event["created_at"],
        "process_at": event["process_at"],
        "done_at": event["done_at"],
        "last_error": "HTTP 500",
        "sinks": {"hook": "failed", "audit": "delivered"},
    }
    assert event["created_at"].endswith("+00:00")

    result = cli(workdir, "events", "list", "--key", "a", url=database_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "STATUS", "ATTEMPTS", "CREATED", "TOPIC"]
    assert lines[1].split()[:2] == [str(catalogue["shipped"]), "pending"]
    assert "hook:retrying" in lines[1]
    assert lines[-1] == "2 event(s)"
    assert cli(workdir, "events", "list", "--key", "zzz", url=database_url).stdout == (
        "no events match\n"
    )


def test_events_show(database_url: str, workdir: Path, catalogue: dict[str, int]) -> None:
    event_id = catalogue["paid_late"]
    update(database_url, event_id, headers={"traceparent": "00-abc-def-01"})
    shown = cli_json(workdir, "events", "show", str(event_id), url=database_url)
    assert set(shown) == {
        "id",
        "topic",
        "key",
        "status",
        "attempts",
        "process_at",
        "locked_by",
        "locked_until",
        "lease_token",
        "payload",
        "headers",
        "deliveries",
        "errors",
        "last_error",
        "dedup_key",
        "txid",
        "created_at",
        "done_at",
        "crashes",
        "suspect",
    }
    assert (shown["crashes"], shown["suspect"]) == (0, False)
    assert shown["payload"] == {"topic": "order.paid.late"}
    assert shown["headers"] == {"traceparent": "00-abc-def-01"}
    assert shown["deliveries"] == {"hook": HOOK_FAILED, "audit": DELIVERED}
    assert shown["status"] == "failed"
    assert shown["txid"].isdigit()

    text = cli(workdir, "events", "show", str(event_id), url=database_url)
    assert text.returncode == 0, text.stderr
    assert f"event {event_id}" in text.stdout
    assert '"topic": "order.paid.late"' in text.stdout  # the payload
    assert "traceparent" in text.stdout
    assert "hook: " in text.stdout
    assert "HTTP 500" in text.stdout

    missing = cli(workdir, "events", "show", "999999", url=database_url)
    assert missing.returncode == 1
    assert "no event 999999" in missing.stderr
    assert cli(workdir, "events", "show", "abc", url=database_url).returncode == 2


async def test_topic_patterns_in_sql_agree_with_the_router(database_url: str) -> None:
    patterns = ["#", "order", "order.#", "order.*", "*.paid", "#.paid", "a.#.b", "*.*", "#.*.#"]
    topics = ["order", "order.paid", "order.paid.late", "a.b", "a.x.b", "a.x.y.b", "user.paid"]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        for pattern in patterns:
            for topic in topics:
                cursor = await conn.execute(
                    "SELECT %s ~ %s", ["." + topic, admin.topic_regex(pattern)]
                )
                found = await cursor.fetchone()
                assert found is not None
                assert found[0] == topic_matches(pattern, topic), (pattern, topic)


# -- retry -----------------------------------------------------------------------------------


async def test_retry_resets_only_the_failed_sink(database_url: str, workdir: Path) -> None:
    url = database_url
    event_id = publish(url, "order.paid", key="k")
    fail(url, event_id, {"hook": HOOK_FAILED, "audit": DELIVERED})
    other = publish(url, "order.paid")
    finish(url, other, {"hook": DELIVERED, "audit": DELIVERED})

    result = cli(workdir, "retry", "--all", "--yes", url=url)

    assert result.returncode == 0, result.stderr
    assert "1 failed event(s) match" in result.stdout
    assert "retried 1 failed event(s)" in result.stdout
    retried = must_row(url, event_id)
    assert retried["status"] == "pending"
    assert retried["attempts"] == 0
    assert retried["done_at"] is None
    assert retried["deliveries"] == {
        "hook": {"status": "retrying", "attempts": 0, "last_error": "HTTP 500"},
        "audit": DELIVERED,
    }
    assert must_row(url, other)["status"] == "done"

    hook, audit = Recorder(), Recorder()
    await drain(url, {"hook": hook, "audit": audit})
    assert [(e.id, e.attempt) for e in hook.received] == [(event_id, 1)]
    assert audit.received == [], "a delivered sink saw the event again"
    done = must_row(url, event_id)
    assert done["status"] == "done"
    assert done["deliveries"]["audit"] == DELIVERED


def test_retry_with_sink_touches_only_that_sink(database_url: str, workdir: Path) -> None:
    url = database_url
    both = publish(url, "order.paid")
    audit_only = publish(url, "order.paid")
    fail(url, both, {"hook": HOOK_FAILED, "audit": {"status": "failed", "attempts": 2}})
    fail(url, audit_only, {"hook": DELIVERED, "audit": {"status": "failed", "attempts": 2}})

    summary = cli_json(workdir, "retry", "--sink", "hook", "--yes", url=url)

    assert summary == {"matched": 1, "touched": 1}
    reset = must_row(url, both)
    assert reset["status"] == "pending"
    assert reset["deliveries"]["hook"] == {
        "status": "retrying",
        "attempts": 0,
        "last_error": "HTTP 500",
    }
    assert reset["deliveries"]["audit"] == {"status": "failed", "attempts": 2}
    untouched = must_row(url, audit_only)
    assert untouched["status"] == "failed"
    assert untouched["deliveries"]["audit"] == {"status": "failed", "attempts": 2}


def test_retry_by_id_and_topic(database_url: str, workdir: Path) -> None:
    url = database_url
    paid = [publish(url, "order.paid") for _ in range(3)]
    user = publish(url, "user.created")
    pending = publish(url, "order.paid")
    for event_id in [*paid, user]:
        fail(url, event_id, {"hook": HOOK_FAILED})

    by_id = cli_json(workdir, "retry", "--id", str(paid[0]), "--id", str(pending), "--yes", url=url)
    assert by_id == {"matched": 1, "touched": 1}, "a pending event is not retried"
    assert must_row(url, paid[0])["status"] == "pending"
    assert must_row(url, paid[1])["status"] == "failed"

    by_topic = cli_json(workdir, "retry", "--topic", "order.*", "--yes", url=url)
    assert by_topic == {"matched": 2, "touched": 2}
    assert must_row(url, paid[2])["status"] == "pending"
    assert must_row(url, user)["status"] == "failed"

    nothing = cli(workdir, "retry", "--topic", "order.#", url=url)  # no --yes: nothing to ask
    assert nothing.returncode == 0, nothing.stderr
    assert "0 failed event(s) match" in nothing.stdout


def test_retry_dry_run_changes_nothing(database_url: str, workdir: Path) -> None:
    event_id = publish(database_url, "order.paid")
    fail(database_url, event_id, {"hook": HOOK_FAILED})
    before = snapshot(database_url)
    assert cli_json(workdir, "retry", "--all", "--dry-run", url=database_url) == {
        "matched": 1,
        "touched": 0,
    }
    assert snapshot(database_url) == before


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--all", "--id", "1"],
        ["--id", "x"],
        ["--topic", "order..paid"],
    ],
)
def test_retry_rejects_bad_selections(database_url: str, workdir: Path, args: list[str]) -> None:
    result = cli(workdir, "retry", *args, "--yes", url=database_url)
    assert result.returncode == 2
    assert "Error" in result.stderr
    assert "Traceback" not in result.stderr


def test_retry_warns_about_a_disabled_sink(database_url: str, workdir: Path) -> None:
    event_id = publish(database_url, "order.paid")
    fail(database_url, event_id, {"hook": HOOK_FAILED})
    with psycopg.connect(database_url) as conn:
        conn.execute("INSERT INTO outbox_sinks (name, disabled_at) VALUES ('hook', now())")
    result = cli(workdir, "retry", "--sink", "hook", "--yes", url=database_url)
    assert result.returncode == 0, result.stderr
    assert "sink hook is disabled" in result.stderr
    assert "outbox sinks enable hook" in result.stderr


# -- replay ----------------------------------------------------------------------------------


@pytest.fixture
def history(database_url: str) -> dict[str, int]:
    url = database_url
    ids = {
        "old": publish(url, "order.paid"),
        "recent": publish(url, "order.paid"),
        "shipped": publish(url, "order.shipped"),
        "no_hook": publish(url, "order.paid"),
        "user": publish(url, "user.created"),
        "failed": publish(url, "order.paid"),
    }
    update(url, ids["old"], created_at="10 days ago")
    for name in ("old", "recent", "shipped", "user"):
        finish(url, ids[name], {"hook": DELIVERED, "audit": DELIVERED})
    finish(url, ids["no_hook"], {"audit": DELIVERED})
    fail(url, ids["failed"], {"hook": HOOK_FAILED, "audit": DELIVERED})
    return ids


async def test_replay_to_one_sink(
    database_url: str, workdir: Path, history: dict[str, int]
) -> None:
    url, ids = database_url, history
    result = cli(
        workdir, "replay", "--since", "1d", "--topic", "order.#", "--sink", "hook", "--yes", url=url
    )

    assert result.returncode == 0, result.stderr
    assert "2 done event(s) match" in result.stdout
    assert "replayed 2 done event(s)" in result.stdout
    for name in ("recent", "shipped"):
        replayed = must_row(url, ids[name])
        assert replayed["status"] == "pending"
        assert replayed["done_at"] is None
        assert replayed["deliveries"] == {"audit": DELIVERED}, "only hook's entry goes"
    for name in ("old", "user", "no_hook"):
        assert must_row(url, ids[name])["status"] == "done", name
    assert must_row(url, ids["failed"])["status"] == "failed"

    hook, audit = Recorder(), Recorder()
    await drain(url, {"hook": hook, "audit": audit})
    assert sorted(e.id for e in hook.received) == [ids["recent"], ids["shipped"]]
    assert audit.received == []


def test_replay_to_all_sinks_in_batches(
    database_url: str, workdir: Path, history: dict[str, int]
) -> None:
    url, ids = database_url, history
    result = cli(
        workdir,
        "replay",
        "--since",
        "30d",
        "--until",
        "1d",
        "--yes",
        "--batch-size",
        "1",
        url=url,
    )
    assert result.returncode == 0, result.stderr
    assert "replayed 1 done event(s)" in result.stdout
    assert must_row(url, ids["old"])["deliveries"] == {}
    assert must_row(url, ids["old"])["status"] == "pending"
    assert must_row(url, ids["recent"])["status"] == "done"

    summary = cli_json(workdir, "replay", "--since", "1d", "--yes", "--batch-size", "2", url=url)
    assert summary == {"matched": 4, "touched": 4}
    for name in ("recent", "shipped", "no_hook", "user"):
        assert must_row(url, ids[name])["deliveries"] == {}, name
    assert must_row(url, ids["failed"])["status"] == "failed"


def test_replay_shows_progress_per_batch(
    database_url: str, workdir: Path, history: dict[str, int]
) -> None:
    result = cli(workdir, "replay", "--since", "1d", "--yes", "--batch-size", "3", url=database_url)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["replay: 3 of 4", "replay: 4 of 4"]


def test_replay_needs_since(database_url: str, workdir: Path) -> None:
    assert cli(workdir, "replay", "--yes", url=database_url).returncode == 2
    assert cli(workdir, "replay", "--since", "soon", url=database_url).returncode == 2


async def test_a_plan_never_touches_rows_published_after_it(database_url: str) -> None:
    url = database_url
    first = publish(url, "order.paid")
    finish(url, first, {"hook": DELIVERED})
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        plan = await admin.plan_replay(conn, "public", since=admin.parse_time("1h"))
        later = publish(url, "order.paid")
        finish(url, later, {"hook": DELIVERED})
        batches: list[int] = []
        touched = await admin.apply(conn, "public", plan, batch_size=1, on_batch=batches.append)
    assert (plan.matched, touched, batches) == (1, 1, [1])
    assert must_row(url, first)["status"] == "pending"
    assert must_row(url, later)["status"] == "done"


# -- purge -----------------------------------------------------------------------------------


def test_purge_deletes_only_old_rows_of_the_status(database_url: str, workdir: Path) -> None:
    url = database_url
    old_done = [publish(url, "order.paid") for _ in range(3)]
    for event_id in old_done:
        finish(url, event_id, {"hook": DELIVERED}, ago="8 days")
    new_done = publish(url, "order.paid")
    finish(url, new_done, {"hook": DELIVERED}, ago="1 hour")
    old_failed = publish(url, "order.paid")
    fail(url, old_failed, {"hook": HOOK_FAILED}, ago="8 days")
    old_pending = publish(url, "order.paid")
    update(url, old_pending, created_at="30 days ago")

    result = cli(workdir, "purge", "--older-than", "7d", "--yes", "--batch-size", "2", url=url)

    assert result.returncode == 0, result.stderr
    assert "3 done event(s) match" in result.stdout
    assert "deleted 3 done event(s)" in result.stdout
    assert result.stderr.splitlines() == ["purge: 2 of 3", "purge: 3 of 3"]
    assert all(row(url, event_id) is None for event_id in old_done)
    assert row(url, new_done) is not None
    assert row(url, old_failed) is not None
    assert row(url, old_pending) is not None

    failed = cli_json(
        workdir, "purge", "--older-than", "7d", "--status", "failed", "--yes", url=url
    )
    assert failed == {"matched": 1, "touched": 1}
    assert row(url, old_failed) is None
    assert row(url, new_done) is not None

    both = cli_json(
        workdir,
        "purge",
        "--older-than",
        "30m",
        "--status",
        "done",
        "--status",
        "failed",
        "--yes",
        url=url,
    )
    assert both == {"matched": 1, "touched": 1}
    assert row(url, new_done) is None
    assert row(url, old_pending) is not None


@pytest.mark.parametrize(
    "args",
    [[], ["--older-than", "7x"], ["--older-than", "7d", "--status", "pending"]],
)
def test_purge_rejects_bad_arguments(database_url: str, workdir: Path, args: list[str]) -> None:
    result = cli(workdir, "purge", *args, "--yes", url=database_url)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


# -- confirmation ----------------------------------------------------------------------------


@pytest.fixture
def failed_pair(database_url: str) -> list[int]:
    ids = [publish(database_url, "order.paid") for _ in range(2)]
    for event_id in ids:
        fail(database_url, event_id, {"hook": HOOK_FAILED})
    return ids


def test_answering_no_changes_nothing(
    database_url: str, workdir: Path, failed_pair: list[int]
) -> None:
    before = snapshot(database_url)
    code, output = cli_in_terminal(workdir, "retry", "--all", url=database_url, answer="n")
    assert code == 1
    assert "2 failed event(s) match" in output
    assert "Retry 2 failed event(s)? [y/N]" in output
    assert "aborted: nothing changed" in output
    assert snapshot(database_url) == before


def test_answering_yes_goes_ahead(database_url: str, workdir: Path, failed_pair: list[int]) -> None:
    code, output = cli_in_terminal(workdir, "retry", "--all", url=database_url, answer="y")
    assert code == 0, output
    assert "retried 2 failed event(s)" in output
    assert all(must_row(database_url, i)["status"] == "pending" for i in failed_pair)


@pytest.mark.parametrize(
    "command",
    [
        ["retry", "--all"],
        ["replay", "--since", "1d"],
        ["purge", "--older-than", "1m", "--status", "failed"],
    ],
)
@pytest.mark.parametrize("stdin", [subprocess.DEVNULL, "pipe"])
def test_no_terminal_and_no_yes_aborts(
    database_url: str, workdir: Path, command: list[str], stdin: Any
) -> None:
    done = publish(database_url, "order.paid")
    finish(database_url, done, {"hook": DELIVERED})
    failed = publish(database_url, "order.paid")
    fail(database_url, failed, {"hook": HOOK_FAILED})
    before = snapshot(database_url)
    if stdin == "pipe":  # an answer piped in is not a confirmation: scripts must say --yes
        result = subprocess.run(
            [sys.executable, "-m", "outbox.cli", *command, "--database-url", database_url],
            cwd=workdir,
            env=clean_env(),
            input="y\n",
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    else:
        result = cli(workdir, *command, url=database_url, stdin=stdin)
    assert result.returncode == 2
    assert "stdin is not a terminal: pass --yes" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(database_url) == before


# -- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["events", "list"],
        ["events", "show", "1"],
        ["retry", "--all", "--yes"],
        ["replay", "--since", "1d", "--yes"],
        ["purge", "--older-than", "7d", "--yes"],
    ],
)
def test_unreachable_database_exits_1(workdir: Path, command: list[str]) -> None:
    result = cli(workdir, *command, url=UNREACHABLE)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert "127.0.0.1" in line


def test_no_database_configured_exits_2(workdir: Path) -> None:
    result = cli(workdir, "status")
    assert result.returncode == 2
    assert "no database configured" in result.stderr


def test_a_database_without_the_table_exits_1(empty_database_url: str, workdir: Path) -> None:
    result = cli(workdir, "events", "list", url=empty_database_url)
    assert result.returncode == 1
    assert "outbox_events" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["events", "list", "--topic", "a..b"],
        ["events", "list", "--since", "yesterday"],
        ["events", "list", "--status", "lost"],
        ["events", "list", "--sink-status", "failed"],
        ["events", "list", "--limit", "0"],
        ["status", "--config", "missing.toml"],
    ],
)
def test_bad_arguments_exit_2(database_url: str, workdir: Path, args: list[str]) -> None:
    result = cli(workdir, *args, url=database_url)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
