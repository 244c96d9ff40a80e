"""How ``outbox relay --drain`` and ``--once`` end (issue 11, finding 8): against a database
they cannot reach they give up after ``relay.give_up_after`` with exit 1 and one line saying
why; ``--drain`` prints what it did and exits 3 when events it handled failed or still wait
for a retry. The real ``outbox`` command runs as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import outbox
from outbox._urls import with_database

TIMEOUT = 60.0

CONFIG = """
[relay]
backoff_base = 3600.0
backoff_cap = 3600.0
max_attempts = 2

[sinks.app]
type = "callable"
target = "outbox_test_sink:deliver"

[[subscriptions]]
topics = ["order.*"]
sinks = ["app"]
"""

SINK = """
from outbox.exceptions import PermanentError, RetryableError

def deliver(event):
    if event.topic == "order.broken":
        raise PermanentError("refused")
    if event.topic == "order.later":
        raise RetryableError("not now")
"""


def relay(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``outbox relay ARGS`` in ``tmp_path`` (which holds the config and the sink module)."""
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(CONFIG), encoding="utf-8")
    (tmp_path / "outbox_test_sink.py").write_text(textwrap.dedent(SINK), encoding="utf-8")
    clean = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    clean["PYTHONPATH"] = str(tmp_path)
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml", *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture
def nologin_role(server_url: str) -> Iterator[str]:
    name = f"outbox_nologin_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE ROLE "{name}" NOLOGIN')
    try:
        yield name
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.mark.parametrize("mode", ["--drain", "--once"])
def test_a_database_that_does_not_exist_ends_the_relay(
    tmp_path: Path, server_url: str, mode: str
) -> None:
    missing = f"outbox_missing_{uuid.uuid4().hex[:8]}"
    url = with_database(server_url, missing)
    result = relay(tmp_path, mode, "--database-url", url, env={"OUTBOX_RELAY__GIVE_UP_AFTER": "1"})
    assert result.returncode == 1, result.stderr
    line = last_line(result.stderr)
    assert line.startswith("error: cannot reach the database for 1s: "), result.stderr
    assert f'database "{missing}" does not exist' in line
    assert "Traceback" not in result.stderr


def test_a_role_that_cannot_log_in_ends_the_relay(
    tmp_path: Path, database_url: str, nologin_role: str
) -> None:
    url = psycopg.conninfo.make_conninfo(database_url, user=nologin_role)
    result = relay(
        tmp_path, "--drain", "--database-url", url, env={"OUTBOX_RELAY__GIVE_UP_AFTER": "1"}
    )
    assert result.returncode == 1, result.stderr
    line = last_line(result.stderr)
    assert line.startswith("error: cannot reach the database for 1s: "), result.stderr
    assert "not permitted to log in" in line


def publish(url: str, *topics: str) -> None:
    with psycopg.connect(url) as conn:
        for topic in topics:
            outbox.publish(conn, topic, {"topic": topic})


def test_drain_exits_0_with_a_summary_when_everything_was_delivered(
    tmp_path: Path, database_url: str
) -> None:
    publish(database_url, "order.paid", "order.shipped")
    result = relay(tmp_path, "--drain", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    assert last_line(result.stdout) == "delivered 2, retrying 0, failed 0"


def test_drain_exits_3_when_events_failed_or_wait_for_a_retry(
    tmp_path: Path, database_url: str
) -> None:
    publish(database_url, "order.paid", "order.broken", "order.later", "order.later")
    result = relay(tmp_path, "--drain", "--database-url", database_url)
    assert result.returncode == 3, result.stderr
    assert last_line(result.stdout) == "delivered 1, retrying 2, failed 1"


def test_a_schema_that_lacks_a_migration_ends_the_relay_with_the_fix(
    tmp_path: Path, database_url: str
) -> None:
    """A relay newer than its schema would fail every statement that needs the missing
    migration, for ever; it says so once, at start, and exits 1."""
    with psycopg.connect(database_url) as conn:
        conn.execute("DELETE FROM outbox_migrations WHERE version = 4")
    result = relay(tmp_path, "--drain", "--database-url", database_url)
    assert result.returncode == 1, result.stderr
    assert last_line(result.stderr) == (
        "error: schema 'public' lacks migration 0004_suspects_and_lock_mode_claims: "
        "run `outbox migrate` before starting this relay"
    )
