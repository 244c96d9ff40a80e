"""What the benchmarks of bench/ share: a server, a fresh database, fast fills, the machine.

Not a benchmark. Each script puts ``bench/`` on ``sys.path`` by being run from it
(``python bench/NAME.py``), so ``import _common`` finds this module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg

from outbox import migrate
from outbox._urls import libpq_url, with_database
from outbox.sinks import Event, Sink

# Pending events in one statement.
FILL = """
INSERT INTO outbox_events (topic, payload)
SELECT 'bench.event', jsonb_build_object('n', n, 'text', repeat('x', 100))
FROM generate_series(1, %(events)s) AS n
"""

# Rows already delivered, as the relay leaves them (retention keeps them).
FILL_DONE = """
INSERT INTO outbox_events (topic, payload, status, attempts, done_at, deliveries)
SELECT 'bench.event', jsonb_build_object('n', n, 'text', repeat('x', 100)), 'done', 1, now(),
       '{"noop": {"status": "delivered", "attempts": 1}}'::jsonb
FROM generate_series(1, %(events)s) AS n
"""


class NoopSink(Sink):
    """Accepts everything at once: what is left is the relay's own cost."""

    async def deliver(self, event: Event) -> None:
        return None


@contextlib.contextmanager
def server(database_url: str | None) -> Iterator[str]:
    """The given server, or an embedded one in a temporary directory."""
    if database_url:
        yield libpq_url(database_url)
        return
    from outbox._embedded import start_embedded

    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        yield start_embedded(Path(tmp) / "pgdata", cleanup="delete")


@contextlib.contextmanager
def fresh_database(
    server_url: str, *, synchronous_commit: str = "off", outbox_schema: bool = True
) -> Iterator[str]:
    """A new database on ``server_url`` (migrated for the outbox unless told not to),
    dropped afterwards. Every system under test gets the same ``synchronous_commit``."""
    name = f"outbox_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = {synchronous_commit}')
    try:
        url = with_database(server_url, name)
        if outbox_schema:
            migrate(url)
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(url: str, pending: int, *, done: int = 0, truncate: bool = True) -> None:
    """``done`` delivered rows then ``pending`` pending ones, vacuumed and analysed."""
    with psycopg.connect(url, autocommit=True) as conn:
        if truncate:
            conn.execute("TRUNCATE outbox_events")
        if done:
            conn.execute(FILL_DONE, {"events": done})
        if pending:
            conn.execute(FILL, {"events": pending})
        conn.execute("VACUUM ANALYZE outbox_events")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")


FILL_KEYED = """
INSERT INTO outbox_events (topic, key, payload)
SELECT 'bench.event',
       CASE WHEN %(keys)s > 0 THEN 'key-' || (n %% %(keys)s) END,
       jsonb_build_object('n', n, 'text', repeat('x', 100))
FROM generate_series(1, %(events)s) AS n
"""


def fill_keyed(url: str, events: int, keys: int) -> None:
    """An empty table, then ``events`` pending rows over ``keys`` ordering keys (0: none),
    vacuumed and analysed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE outbox_events")
        conn.execute(FILL_KEYED, {"events": events, "keys": keys})
        conn.execute("VACUUM ANALYZE outbox_events")
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")  # not in the middle of a measurement


def scalar(url: str, query: str) -> object:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(query.encode()).fetchone()
        return row[0] if row else None


def count_status(url: str, status: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox_events WHERE status = %s", (status,)
        ).fetchone()
        return int(row[0]) if row else 0


def server_version(url: str) -> str:
    return str(scalar(url, "SHOW server_version"))


def machine(url: str | None = None) -> str:
    """One line: CPUs, CPU model, RAM, Python, PostgreSQL, date."""
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    pg = f", PostgreSQL {server_version(url)}" if url else ""
    return (
        f"{os.cpu_count()} CPUs ({model}), {ram} RAM, Python {platform.python_version()}"
        f"{pg}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC"
    )


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    if not ordered:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "p99": float("nan")}

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {
        "n": len(ordered),
        "min": ordered[0],
        "p50": statistics.median(ordered),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": ordered[-1],
    }


def reproduce() -> str:
    """The command that ran this benchmark, to print at the end: the script as a path from
    the repository root, wherever it was started from."""
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    shown = script.relative_to(root) if script.is_relative_to(root) else script
    return "reproduce (from the repository root): " + shlex.join(
        [".venv/bin/python", str(shown), *sys.argv[1:]]
    )
