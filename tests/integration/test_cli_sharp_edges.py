"""The ``outbox`` command where a newcomer cut themselves: where ``migrate`` finds its
database, what an unmigrated database or a URL of another database system says, what
``config check`` reports (every error in one run, no file, literal secrets), what ``events
show`` prints, which ``--sink`` names are refused, ``retry --sink NAME --all``, and the demo's
wording. Commands run as subprocesses in a directory of their own, as an operator runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import outbox
from outbox import demo, runtime
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.sinks import Event, Sink

TIMEOUT = 60.0
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/x?connect_timeout=2"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SINKS = """
[sinks.billing]
type = "callable"
target = "os:getcwd"

[sinks.audit]
type = "callable"
target = "os:getcwd"

[[subscriptions]]
topics = ["order.#"]
sinks = ["billing", "audit"]
"""


def outbox_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``outbox ARGS`` in ``cwd``, with no OUTBOX_* variable of the test's own."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args],
        cwd=cwd,
        env=clean,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def one_line(result: subprocess.CompletedProcess[str], exit_code: int) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == exit_code, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def tables_in(url: str, schema: str) -> set[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
        ).fetchall()
    return {name for (name,) in found}


def publish(url: str, topic: str, payload: Any = None) -> int:
    with psycopg.connect(url) as conn:
        event = outbox.publish(conn, topic, payload or {"topic": topic})
    assert event.id is not None
    return event.id


def set_failed(url: str, event_id: int, deliveries: dict[str, Any]) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE outbox_events SET status = 'failed', attempts = 3, deliveries = %s, "
            "last_error = 'HTTP 500', done_at = now() WHERE id = %s",
            [Jsonb(deliveries), event_id],
        )


def deliveries_of(url: str, event_id: int) -> tuple[str, dict[str, Any]]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT status, deliveries FROM outbox_events WHERE id = %s", [event_id]
        ).fetchone()
    assert found is not None
    return found[0], found[1]


# -- outbox migrate finds its database as every other command does ---------------------------


def test_migrate_reads_database_url_and_schema_from_the_config_file(
    tmp_path: Path, empty_database_url: str
) -> None:
    write(
        tmp_path / "config" / "outbox.toml",
        f"""
        database_url = "{empty_database_url}"
        schema = "app_events"
        """,
    )
    result = outbox_cli(tmp_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert "applied 0001_" in result.stdout
    assert "outbox_events" in tables_in(empty_database_url, "app_events")
    assert "outbox_events" not in tables_in(empty_database_url, "public")


def test_migrate_flag_wins_over_environment_wins_over_file(
    tmp_path: Path, empty_database_url: str
) -> None:
    write(tmp_path / "outbox.toml", f'database_url = "{UNREACHABLE}"\n')
    from_env = outbox_cli(
        tmp_path,
        "migrate",
        "--config",
        "outbox.toml",
        env={"OUTBOX_DATABASE_URL": empty_database_url},
    )
    assert from_env.returncode == 0, from_env.stderr
    assert "outbox_events" in tables_in(empty_database_url, "public")
    from_flag = outbox_cli(
        tmp_path,
        "migrate",
        "--config",
        "outbox.toml",
        "--database-url",
        empty_database_url,
        env={"OUTBOX_DATABASE_URL": UNREACHABLE},
    )
    assert from_flag.returncode == 0, from_flag.stderr
    assert from_flag.stdout.strip() == "up to date"


def test_migrate_sql_needs_no_database(tmp_path: Path) -> None:
    result = outbox_cli(tmp_path, "migrate", "--sql", "--schema", "app_events")
    assert result.returncode == 0, result.stderr
    assert '"app_events"' in result.stdout


# -- an unmigrated database, a URL of another database system ---------------------------------


@pytest.mark.parametrize(
    "command", [["status"], ["events", "list"], ["sinks", "list"], ["events", "show", "1"]]
)
def test_an_unmigrated_database_says_to_run_migrate(
    tmp_path: Path, empty_database_url: str, command: list[str]
) -> None:
    result = outbox_cli(tmp_path, *command, "--database-url", empty_database_url)
    line = one_line(result, 1)
    assert line.startswith("error: the outbox tables are missing in schema 'public'"), line
    assert "run `outbox migrate`" in line
    assert result.stdout == ""


MYSQL = "mysql://app:hunter2@db.example.com/app"


@pytest.mark.parametrize(
    "command",
    [["status"], ["relay", "--drain"], ["migrate"], ["sinks", "list"], ["events", "list"]],
)
@pytest.mark.parametrize("given_by", ["flag", "environment", "file"])
def test_a_url_of_another_database_system_is_one_line(
    tmp_path: Path, command: list[str], given_by: str
) -> None:
    write(tmp_path / "config" / "outbox.toml", SINKS)
    args, env = list(command), {}
    if given_by == "flag":
        args += ["--database-url", MYSQL]
    elif given_by == "environment":
        env["OUTBOX_DATABASE_URL"] = MYSQL
    else:
        write(tmp_path / "config" / "outbox.toml", f'database_url = "{MYSQL}"\n' + SINKS)
    line = one_line(outbox_cli(tmp_path, *args, env=env), 2)
    assert line == "error: invalid database URL: the scheme must be postgresql:// (or postgres://)"


def test_demo_refuses_another_database_system_without_showing_the_password(
    tmp_path: Path,
) -> None:
    result = outbox_cli(tmp_path, "demo", "--database-url", MYSQL)
    line = one_line(result, 2)
    assert "the scheme must be postgresql://" in line
    assert "hunter2" not in result.stdout + result.stderr


def test_config_check_refuses_a_url_of_another_database_system(tmp_path: Path) -> None:
    write(tmp_path / "outbox.toml", f'database_url = "{MYSQL}"\n' + SINKS)
    result = outbox_cli(tmp_path, "config", "check", "--config", "outbox.toml")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "database_url: invalid database URL: the scheme must be postgresql://" in result.stderr
    assert "hunter2" not in result.stderr


# -- config check ---------------------------------------------------------------------------------


BROKEN = """
colour = "red"

[relay]
batch_size = 0
claim_mode = "fast"

[sinks.hook]
type = "webhook"
url = "ftp://hooks.example.com/a"
secret = { env = "OUTBOX_TEST_NO_SUCH_VARIABLE" }
timeout = "soon"

[sinks.cache]
type = "callable"
target = "outbox_no_such_module:handle"
max_attempts = 0

[sinks.trail]
type = "nosuchtype"

[sinks.store]
type = "postgres"
table = "events"
schema = "not valid"

[[subscriptions]]
topics = ["order..x"]
sinks = ["hook"]

[[subscriptions]]
topics = ["order.*"]
sinks = ["nobody"]
"""


def test_config_check_reports_every_error_in_one_run(tmp_path: Path) -> None:
    write(tmp_path / "outbox.toml", BROKEN)
    result = outbox_cli(tmp_path, "config", "check", "--config", "outbox.toml")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines[:-1] if ": warning: " not in line]
    located = {line.split(": ", 1)[0] for line in errors}
    # The file's own keys, and each sink's options as its plugin validates them, together.
    assert {
        "colour",
        "relay.batch_size",
        "relay.claim_mode",
        "sinks.cache.max_attempts",
        "subscriptions.0.topics",
        "sinks.hook.url",
        "sinks.hook.secret.0",
        "sinks.hook.timeout",
        "sinks.cache.target",
        "sinks.trail.type",
        "sinks.store.schema",
    } <= located, result.stderr
    assert any("'nobody', which is not configured" in line for line in errors)
    assert lines[-1] == f"{len(errors)} error(s)"


def test_config_check_without_a_file_says_where_it_looked(tmp_path: Path) -> None:
    result = outbox_cli(tmp_path, "config", "check")
    assert result.returncode == 2, result.stdout
    assert "ok" not in result.stdout
    first = result.stderr.splitlines()[0]
    assert "no configuration file" in first
    assert str(tmp_path / "config" / "outbox.toml") in first
    assert "--config" in first


def test_config_check_warns_about_a_literal_secret_with_its_line(tmp_path: Path) -> None:
    write(
        tmp_path / "outbox.toml",
        f"""
        [sinks.billing]
        type = "webhook"
        url = "https://billing.example.com/hooks"
        secret = "{SECRET}"

        [[subscriptions]]
        topics = ["order.*"]
        sinks = ["billing"]
        """,
    )
    result = outbox_cli(tmp_path, "config", "check", "--config", "outbox.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 sink(s), 1 subscription(s)")
    [warning] = result.stderr.strip().splitlines()
    assert warning.startswith("outbox.toml:4: warning: sinks.billing.secret "), warning
    assert 'secret = { env = "' in warning
    assert SECRET not in warning


def test_config_check_warns_about_a_password_in_database_url(tmp_path: Path) -> None:
    write(
        tmp_path / "outbox.toml",
        'database_url = "postgresql://app:hunter2@db.example.com/app"\n' + SINKS,
    )
    result = outbox_cli(tmp_path, "config", "check", "--config", "outbox.toml")
    assert result.returncode == 0, result.stderr
    [warning] = result.stderr.strip().splitlines()
    assert warning.startswith("outbox.toml:1: warning: database_url "), warning
    assert "hunter2" not in warning


def test_config_check_is_quiet_about_secrets_it_is_only_told_where_to_find(
    tmp_path: Path,
) -> None:
    write(
        tmp_path / "outbox.toml",
        """
        database_url = { env = "APP_DATABASE_URL" }

        [sinks.billing]
        type = "webhook"
        url = "https://billing.example.com/hooks"
        secret = { env = "BILLING_SECRET" }

        [[subscriptions]]
        topics = ["order.*"]
        sinks = ["billing"]
        """,
    )
    env = {"BILLING_SECRET": SECRET, "APP_DATABASE_URL": "postgresql://app:pw@db/app"}
    result = outbox_cli(tmp_path, "config", "check", "--config", "outbox.toml", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# -- events show ----------------------------------------------------------------------------------


class FailsOnce(Sink):
    """Fails its first delivery of each event, then succeeds."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    async def deliver(self, event: Event) -> None:
        if event.id not in self.seen:
            self.seen.add(event.id)
            raise RuntimeError("receiver warming up")


async def deliver_with_one_failure(url: str) -> None:
    policy = runtime.relay_options().retry
    options = runtime.relay_options(
        poll_interval=0.05,
        retry=type(policy)(
            max_attempts=5, base_seconds=0.01, cap_seconds=0.01, jitter=0, errors_kept=10
        ),
    )
    relay = Relay(url, {"hook": FailsOnce()}, [Subscription(("order.#",), ("hook",))], options)
    for _ in range(50):
        await relay.run(drain=True)
        with psycopg.connect(url) as conn:
            pending = conn.execute(
                "SELECT count(*) FROM outbox_events WHERE status <> 'done'"
            ).fetchone()
        if pending == (0,):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the event was never delivered")


def test_events_show_prints_text_as_it_is_and_no_stale_error(
    tmp_path: Path, database_url: str
) -> None:
    event_id = publish(database_url, "order.confirmed", {"customer": "José Müller"})
    asyncio.run(deliver_with_one_failure(database_url))

    shown = outbox_cli(tmp_path, "events", "show", str(event_id), "--database-url", database_url)
    assert shown.returncode == 0, shown.stderr
    assert '"customer": "José Müller"' in shown.stdout
    assert "\\u00e9" not in shown.stdout
    fields = dict(line.split(None, 1) for line in shown.stdout.splitlines()[1:9])
    assert fields["status"] == "done"
    assert fields["last_error"] == "-"  # delivered in the end: no error stands
    assert "RuntimeError: receiver warming up" in shown.stdout  # the history keeps it

    as_json = outbox_cli(
        tmp_path, "events", "show", str(event_id), "--json", "--database-url", database_url
    )
    assert "José Müller" in as_json.stdout
    assert json.loads(as_json.stdout)["last_error"] is None


# -- --sink names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["replay", "--since", "1d", "--yes"],
        ["retry", "--yes"],
        ["retry", "--all", "--yes"],
        ["events", "list"],
    ],
)
def test_an_unknown_sink_name_is_refused_with_the_configured_ones(
    tmp_path: Path, database_url: str, command: list[str]
) -> None:
    write(tmp_path / "config" / "outbox.toml", SINKS)
    result = outbox_cli(tmp_path, *command, "--sink", "nosuch", "--database-url", database_url)
    line = one_line(result, 2)
    assert (
        line == "error: --sink: no sink named 'nosuch' is configured (configured: audit, billing)"
    )
    assert "match" not in result.stdout


# -- retry --sink NAME --all ----------------------------------------------------------------------


def test_retry_all_of_one_sink_retries_every_failed_delivery_to_it(
    tmp_path: Path, database_url: str
) -> None:
    write(tmp_path / "config" / "outbox.toml", SINKS)
    failed = {"status": "failed", "attempts": 3, "last_error": "HTTP 500"}
    delivered = {"status": "delivered", "attempts": 1}
    billing_failed = publish(database_url, "order.paid")
    audit_failed = publish(database_url, "order.paid")
    set_failed(database_url, billing_failed, {"billing": failed, "audit": delivered})
    set_failed(database_url, audit_failed, {"billing": delivered, "audit": failed})

    result = outbox_cli(
        tmp_path, "retry", "--sink", "billing", "--all", "--yes", "--database-url", database_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "1 failed event(s) match"
    status, deliveries = deliveries_of(database_url, billing_failed)
    assert status == "pending"
    assert deliveries["billing"]["status"] == "retrying"
    assert deliveries["audit"] == delivered
    assert deliveries_of(database_url, audit_failed)[0] == "failed"


@pytest.mark.parametrize("args", [[], ["--all", "--id", "1"], ["--all", "--topic", "order.*"]])
def test_retry_still_refuses_an_unclear_selection(
    tmp_path: Path, database_url: str, args: list[str]
) -> None:
    result = outbox_cli(tmp_path, "retry", *args, "--yes", "--database-url", database_url)
    assert result.returncode == 2
    assert "--all" in result.stderr
    assert "Traceback" not in result.stderr


# -- the demo's wording -----------------------------------------------------------------------


def test_demo_says_whether_it_starts_restarts_or_reuses_the_server(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    assert demo.server_message(data_dir).startswith("Starting an embedded PostgreSQL")
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("16\n")
    assert demo.server_message(data_dir).startswith("Starting the embedded PostgreSQL again")
    (data_dir / "postmaster.pid").write_text("4242\n")
    message = demo.server_message(data_dir)
    assert message.startswith("Using the embedded PostgreSQL already running")
    assert "Restarting" not in message
    assert str(data_dir) in message


def test_demo_says_psql_is_optional() -> None:
    lines = demo.look_around_lines("postgresql://demo@127.0.0.1:5432/outbox_demo", "outbox")
    text = "\n".join(lines)
    first_psql = next(i for i, line in enumerate(lines) if line.strip().startswith("psql "))
    assert "events list --database-url" in text
    assert "psql is not required" in "\n".join(lines[:first_psql])
