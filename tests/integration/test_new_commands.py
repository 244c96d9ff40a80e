"""`outbox publish`, `outbox events cancel` and `outbox config show`, run as an operator runs
them (in-process through click's runner, in an empty directory with no OUTBOX_* variable),
against a real PostgreSQL; a real relay proves what a cancellation means for delivery.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner, Result

import outbox
from outbox import runtime
from outbox.cli import main
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.sinks import Event, Sink


@pytest.fixture(autouse=True)
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (no config/outbox.toml) and no OUTBOX_* variable."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("OUTBOX_"):
            monkeypatch.delenv(name)
    return tmp_path


def run(*args: str, url: str | None = None, env: dict[str, str] | None = None) -> Result:
    database = ["--database-url", url] if url else []
    return CliRunner().invoke(main, [*args, *database], env=env, catch_exceptions=False)


def rows(url: str, where: str = "true") -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(f"SELECT * FROM outbox_events WHERE {where} ORDER BY id").fetchall()


def publish(url: str, key: str | None = None, **options: Any) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        event = outbox.publish(conn, "order.placed", {"n": 1}, key=key, **options)
    assert event.id is not None
    return event.id


class Recorder(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[int] = []

    async def deliver(self, event: Event) -> None:
        self.received.append(event.id)


def drain(url: str) -> list[int]:
    """Run a real relay with one callable sink until nothing is due; the ids it received."""
    sink = Recorder()
    options = runtime.relay_options(poll_interval=0.05, lease_seconds=5.0, delivery_timeout=4.0)
    relay = Relay(url, {"calls": sink}, [Subscription(("order.#",), ("calls",))], options)
    asyncio.run(relay.run(drain=True))
    return sink.received


# -- outbox publish ------------------------------------------------------------------------------


def test_publish_writes_the_event_and_prints_its_id(database_url: str) -> None:
    result = run(
        "publish", "order.placed", '{"order_id": 7}', "--key", "order-7",
        "--header", "x-tenant=acme", "--header", "x-empty=", "--dedup-key", "o7", url=database_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    event_id = int(result.stdout.strip())
    [row] = rows(database_url)
    assert row["id"] == event_id
    assert (row["topic"], row["key"], row["payload"]) == (
        "order.placed",
        "order-7",
        {"order_id": 7},
    )
    assert row["headers"]["x-tenant"] == "acme"
    assert row["headers"]["x-empty"] == ""
    assert row["dedup_key"] == "o7"
    assert row["status"] == "pending"

    again = run("publish", "order.placed", "{}", "--dedup-key", "o7", "--json", url=database_url)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == {"id": event_id, "topic": "order.placed", "duplicate": True}
    assert len(rows(database_url)) == 1


def test_publish_delay_is_on_the_database_clock(database_url: str) -> None:
    result = run("publish", "order.later", "[1, 2]", "--delay", "3600", "--json", url=database_url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["duplicate"] is False
    [row] = rows(database_url)
    waited = (row["process_at"] - row["created_at"]).total_seconds()
    assert 3590 < waited < 3610
    assert row["payload"] == [1, 2]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["order.placed", "{not json"], "error: payload: invalid JSON at line 1 column 2"),
        (["order..placed", "{}"], "topic"),
        (["order placed", "{}"], "topic"),
        (["order.placed", "{}", "--header", "no-equals-sign"], "write it as name=value"),
        (["order.placed", "{}", "--header", "=v"], "write it as name=value"),
        (["order.placed", '"x"', "--key", "k" * 10_000], "key"),
        (["order.placed", "NaN"], "payload is nan, which JSON cannot represent"),
    ],
)
def test_publish_refuses_bad_input_with_exit_2(
    database_url: str, args: list[str], said: str
) -> None:
    result = run("publish", *args, url=database_url)
    assert result.exit_code == 2, result.output
    assert said in result.stderr
    assert "Traceback" not in result.output
    assert rows(database_url) == []


# -- outbox events cancel ------------------------------------------------------------------------


def test_a_cancelled_keyed_event_never_goes_out_and_its_key_goes_on(database_url: str) -> None:
    first = publish(database_url, key="order-1")
    cancelled = publish(database_url, key="order-1")
    later = publish(database_url, key="order-1")
    other = publish(database_url)

    result = run(
        "events", "cancel", str(cancelled), "--reason", "sent by mistake", url=database_url
    )
    assert result.exit_code == 0, result.output
    assert f"event {cancelled} cancelled" in result.stdout

    received = drain(database_url)
    assert sorted(received) == [first, later, other]
    assert received.index(first) < received.index(later)
    assert drain(database_url) == []  # never claimed again
    [row] = rows(database_url, f"id = {cancelled}")
    assert row["status"] == "done"
    assert row["attempts"] == 0
    assert row["done_at"] is not None
    mark = row["deliveries"]["*cancelled"]
    assert (mark["status"], mark["by"], mark["reason"]) == (
        "cancelled",
        "postgres",
        "sent by mistake",
    )
    assert {r["status"] for r in rows(database_url, f"id <> {cancelled}")} == {"done"}


def test_cancelling_wakes_the_events_waiting_behind_it(database_url: str) -> None:
    """An event routed and retrying at its sink holds later events of its key back until its
    next look; cancelling it lets them go at once."""
    held = publish(database_url, key="k")
    later = publish(database_url, key="k")
    with psycopg.connect(database_url, autocommit=True) as conn:
        retrying = {"calls": {"status": "retrying", "attempts": 1, "last_error": "HTTP 503"}}
        waiting = {"calls": {"status": "waiting", "until": "9999-12-31T00:00:00+00:00"}}
        conn.execute(
            "UPDATE outbox_events SET deliveries = %s, process_at = now() + interval '1 hour' "
            "WHERE id = %s",
            (psycopg.types.json.Jsonb(retrying), held),
        )
        conn.execute(
            "UPDATE outbox_events SET deliveries = %s, process_at = now() + interval '1 hour' "
            "WHERE id = %s",
            (psycopg.types.json.Jsonb(waiting), later),
        )
    assert drain(database_url) == []
    assert run("events", "cancel", str(held), url=database_url).exit_code == 0
    assert drain(database_url) == [later]


def test_cancelling_several_events_of_one_key_at_once(database_url: str) -> None:
    ids = [publish(database_url, key="k", delay=3600) for _ in range(3)]
    result = run("events", "cancel", *map(str, ids), "--by", "alice", "--json", url=database_url)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"cancelled": ids, "refused": []}
    marks = [r["deliveries"]["*cancelled"]["by"] for r in rows(database_url)]
    assert marks == ["alice"] * 3
    assert {r["status"] for r in rows(database_url)} == {"done"}


def test_events_in_flight_done_or_failed_are_refused(database_url: str) -> None:
    leased, locked, done, failed, pending = (publish(database_url) for _ in range(5))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE outbox_events SET status = 'processing', locked_by = 'relay-a', "
            "locked_until = now() + interval '1 minute', lease_token = gen_random_uuid() "
            "WHERE id = %s",
            (leased,),
        )
        conn.execute(
            "INSERT INTO outbox_claims (event_ids, suspect) VALUES (%s, false)", ([locked],)
        )
        conn.execute(
            "UPDATE outbox_events SET status = 'done', done_at = now() WHERE id = %s", (done,)
        )
        conn.execute("UPDATE outbox_events SET status = 'failed' WHERE id = %s", (failed,))
    before = {r["id"]: r for r in rows(database_url)}

    result = run("events", "cancel", *map(str, (leased, locked, done, failed, pending, 999_999)),
                 url=database_url)  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"event {pending} cancelled" in result.stdout
    errors = result.stderr
    assert f"event {leased} not cancelled: in flight: relay relay-a is delivering it" in errors
    assert f"event {locked} not cancelled: in flight: a relay's batch holds it" in errors
    assert f"event {done} not cancelled: done: it has already gone out" in errors
    assert f"event {failed} not cancelled: failed: it goes out only if retried" in errors
    assert "event 999999 not cancelled: no such event" in errors
    after = {r["id"]: r for r in rows(database_url)}
    assert all(after[i] == before[i] for i in (leased, locked, done, failed))

    again = run("events", "cancel", str(pending), url=database_url)
    assert again.exit_code == 1
    assert "already cancelled by postgres" in again.stderr


def test_a_cancelled_event_is_visible_in_show_and_list(database_url: str) -> None:
    cancelled, kept = publish(database_url), publish(database_url)
    assert (
        run("events", "cancel", str(cancelled), "--reason", "duplicate", url=database_url).exit_code
        == 0
    )
    with psycopg.connect(database_url, autocommit=True) as conn:  # delivered, not cancelled
        conn.execute(
            "UPDATE outbox_events SET status = 'done', done_at = now(), "
            """deliveries = '{"calls": {"status": "delivered"}}' WHERE id = %s""",
            (kept,),
        )

    listed = run("events", "list", "--status", "cancelled", "--json", url=database_url)
    assert listed.exit_code == 0, listed.output
    assert [e["id"] for e in json.loads(listed.stdout)] == [cancelled]
    assert json.loads(listed.stdout)[0]["sinks"] == {"*cancelled": "cancelled"}

    shown = run("events", "show", str(cancelled), url=database_url)
    assert shown.exit_code == 0, shown.output
    assert '*cancelled: {"at": ' in shown.stdout
    assert '"reason": "duplicate"' in shown.stdout

    mixed = run("events", "list", "--status", "cancelled", "--status", "failed", url=database_url)
    assert mixed.exit_code == 2
    assert "--status cancelled goes alone" in mixed.stderr


# -- outbox config show --------------------------------------------------------------------------


CONFIG = """\
database_url = "postgresql://app:file-password@db/app"
schema = "shop"

[relay]
batch_size = 50
poll_interval = 0.5

[sinks.billing]
type = "webhook"
url = "https://billing.example.com/hooks/outbox"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

[sinks.audit]
type = "postgres"
schema = "audit"
table = "events"
dsn = { env = "AUDIT_DSN" }

[[subscriptions]]
topics = ["order.*"]
sinks = ["billing", "audit"]
"""


def shown(bare: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    (bare / "outbox.toml").write_text(CONFIG)
    result = run("config", "show", "--config", "outbox.toml", "--json", *args, env=env)
    assert result.exit_code == 0, result.output
    for secret in (
        "file-password",
        "flag-password",
        "env-password",
        "MfKQ9r8GKYqrTwjU",
        "audit-pw",
    ):
        assert secret not in result.output
    report = json.loads(result.stdout)
    assert report["file"] == "outbox.toml"
    return {entry["key"]: entry for entry in report["settings"]}


def test_config_show_says_where_each_value_came_from(bare: Path) -> None:
    env = {
        "OUTBOX_RELAY__POLL_INTERVAL": "2",
        "outbox_relay__max_attempts": "4",
        "AUDIT_DSN": "postgresql://audit:audit-pw@db/audit",
    }
    found = shown(bare, "--database-url", "postgresql://app:flag-password@db/app", env=env)

    def where(key: str) -> tuple[Any, str, str | None]:
        return found[key]["value"], found[key]["source"], found[key]["origin"]

    assert where("database_url") == ("**********", "flag", "--database-url")
    assert where("schema") == ("shop", "file", "outbox.toml")
    assert where("relay.batch_size") == (50, "file", "outbox.toml")
    assert where("relay.poll_interval") == (2.0, "environment", "OUTBOX_RELAY__POLL_INTERVAL")
    assert where("relay.max_attempts") == (4, "environment", "OUTBOX_RELAY__MAX_ATTEMPTS")
    assert where("relay.lease_seconds") == (180.0, "default", None)
    assert where("sinks.billing.type") == ("webhook", "file", "outbox.toml")
    assert where("sinks.billing.url") == ("**********", "file", "outbox.toml")
    assert where("sinks.billing.secret") == (["**********"], "file", "outbox.toml")
    assert where("sinks.audit.dsn") == ("**********", "file", "outbox.toml")
    assert where("sinks.audit.table") == ("events", "file", "outbox.toml")
    assert found["sinks.billing.timeout"]["source"] == "default"  # the sink type's own default
    assert where("subscriptions")[1:] == ("file", "outbox.toml")


def test_config_show_names_the_variable_click_read_the_url_from(bare: Path) -> None:
    env = {"OUTBOX_DATABASE_URL": "postgresql://app:env-password@db/app", "AUDIT_DSN": "x"}
    found = shown(bare, env=env)
    assert found["database_url"]["source"] == "environment"
    assert found["database_url"]["origin"] == "OUTBOX_DATABASE_URL"


def test_config_show_redacts_options_it_cannot_validate(bare: Path) -> None:
    """AUDIT_DSN unset: the postgres sink's options do not validate, and are shown as
    written, every secret-looking one redacted."""
    found = shown(bare)
    assert found["sinks.audit.dsn"]["value"] == "**********"
    assert found["sinks.audit.table"]["value"] == "events"


def test_config_show_text_and_invalid_config(bare: Path) -> None:
    result = run("config", "show")
    assert result.exit_code == 0, result.output
    assert "configuration file: none" in result.stdout
    assert "relay.batch_size" in result.stdout
    assert "100" in result.stdout
    (bare / "bad.toml").write_text("[relay]\nbatch_size = 0\n")
    bad = run("config", "show", "--config", "bad.toml")
    assert bad.exit_code == 2
    assert "relay.batch_size" in bad.stderr


def test_replay_never_sends_a_cancelled_event(database_url: str) -> None:
    delivered = publish(database_url)
    cancelled = publish(database_url)
    assert run("events", "cancel", str(cancelled), url=database_url).exit_code == 0
    assert drain(database_url) == [delivered]

    result = run("replay", "--since", "1h", "--yes", url=database_url)
    assert result.exit_code == 0, result.output
    assert drain(database_url) == [delivered]
    [row] = rows(database_url, f"id = {cancelled}")
    assert row["status"] == "done"
