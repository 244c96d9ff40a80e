"""What the benchmarks of bench/ share: a server, a fresh database, fast fills, the machine.

Not a benchmark. Each script puts ``bench/`` on ``sys.path`` by being run from it
(``python bench/NAME.py``), so ``import _common`` finds this module.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime as dt
import multiprocessing
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

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


def checkpoint(conn: psycopg.Connection[Any], table: str) -> None:
    """VACUUM ANALYZE after a fill, then CHECKPOINT: no fill's dirty pages are written in the
    middle of the next measurement, whichever system it is."""
    conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("CHECKPOINT")


def conditions(url: str, *, log_level: str, sink: str, loop: str = "asyncio") -> str:
    """The conditions a figure was measured under, in one line (printed under machine())."""
    sync = scalar(url, "SHOW synchronous_commit")
    return (
        f"PostgreSQL {server_version(url)}, synchronous_commit = {sync}, {os.cpu_count()} cores "
        f"shared by the server and the clients, log level {log_level}, sink: {sink}, "
        f"event loop: {loop}"
    )


# -- relays as users run them: `outbox relay --drain` in processes of their own --------------

# What the handler below saw, in this process: the ids of the events it was called with.
HANDLED: list[int] = []


def record_event(event: Event) -> None:
    """A plain ``def`` callable sink that does nothing but note the event's id, so the parent
    can check every event was handled exactly once. ``list.append`` is atomic under the GIL,
    so the sink's threads need no lock."""
    HANDLED.append(event.id)


def relay_config(
    path: Path,
    *,
    batch_size: int | None = None,
    claim_mode: str | None = None,
    concurrency: int | None = None,
    target: str = "_common:record_event",
) -> Path:
    """A configuration file as a user writes it: one callable sink (``target``) subscribed to
    every topic, every relay setting at its default but the batch size, the claim mode and
    the concurrency, if given."""
    chosen = (("batch_size", batch_size), ("claim_mode", claim_mode), ("concurrency", concurrency))
    relay = "".join(f"{key} = {value!r}\n" for key, value in chosen if value is not None)
    path.write_text(
        f"[relay]\n{relay}\n"
        f'[sinks.noop]\ntype = "callable"\ntarget = "{target}"\n\n'
        '[[subscriptions]]\ntopics = ["#"]\nsinks = ["noop"]\n'
    )
    return path


def cli_relay_worker(
    argv: list[str], output: str, use_uvloop: bool, ready: Any, go: Any, results: Any
) -> None:
    """One process running ``outbox relay ARGV`` through the CLI's own entry point (its
    settings, logging and sinks), after a barrier so that every process starts at once with
    its imports done. Its stdout and stderr (the log, at the CLI's default level) go to
    ``output``; the ids the sink handled go back on ``results``."""
    import asyncio

    from outbox import cli

    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with open(output, "w") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    ready.set()
    go.wait()
    code: object = 0
    try:
        cli.main(argv, standalone_mode=False)
    except SystemExit as exited:
        code = exited.code
    sys.stdout.flush()
    sys.stderr.flush()
    results.put((os.getpid(), code, HANDLED))


@dataclasses.dataclass
class Run:
    seconds: float
    handled: list[int]
    log_lines: int


def run_processes(
    target: Callable[..., None], args_for: Callable[[int, str], tuple[Any, ...]], processes: int
) -> Run:
    """Start ``processes`` spawned processes ``target(*args_for(i, output), ready, go,
    results)``, let them go together, and time them from the release to the last one's
    result. Each puts ``(pid, exit code, handled ids)`` on ``results``; a process that fails
    fails the run. None is left running, whatever happens."""
    context = multiprocessing.get_context("spawn")
    go, results = context.Event(), context.Queue()
    started_processes: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp:
        outputs = [str(Path(tmp) / f"process-{i}.log") for i in range(processes)]
        try:
            readies = []
            for i in range(processes):
                ready = context.Event()
                process = context.Process(
                    target=target, args=(*args_for(i, outputs[i]), ready, go, results)
                )
                process.start()
                started_processes.append(process)
                readies.append(ready)
            for ready in readies:
                if not ready.wait(120):
                    raise SystemExit("a worker process did not get ready in 120 s")
            started = time.perf_counter()
            go.set()
            handled: list[int] = []
            for _ in range(processes):
                pid, code, ids = results.get(timeout=600)  # before join: the queue's pipe
                if code not in (0, None):
                    raise SystemExit(f"worker {pid} exited with {code}: {_tail(outputs)}")
                handled.extend(ids)
            seconds = time.perf_counter() - started
            for process in started_processes:
                process.join(30)
        finally:
            for process in started_processes:
                if process.is_alive():
                    process.kill()
                    process.join()
        log_lines = sum(len(Path(o).read_text().splitlines()) for o in outputs if Path(o).exists())
    return Run(seconds, handled, log_lines)


def _tail(outputs: Sequence[str]) -> str:
    lines: list[str] = []
    for output in outputs:
        with contextlib.suppress(OSError):
            lines += Path(output).read_text().splitlines()[-5:]
    return "\n".join(lines)


def check_exactly_once(label: str, expected: Sequence[int], handled: Sequence[int]) -> None:
    """Every expected id handled exactly once, nothing else handled: else the run fails."""
    counts = collections.Counter(handled)
    missing = [i for i in expected if i not in counts]
    twice = sorted(i for i, n in counts.items() if n > 1)
    unknown = sorted(set(counts) - set(expected))
    if missing or twice or unknown:
        raise SystemExit(
            f"FAILED exactly-once check, {label}: {len(expected)} events, {len(handled)} "
            f"handler calls; {len(missing)} never handled {missing[:5]}, {len(twice)} handled "
            f"more than once {twice[:5]}, {len(unknown)} unknown ids {unknown[:5]}"
        )


def ids(url: str, query: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [int(row[0]) for row in conn.execute(query.encode()).fetchall()]


def spread(values: Sequence[float]) -> str:
    """Median and range, as the tables print them."""
    return f"{statistics.median(values):>9,.0f} {min(values):>9,.0f}-{max(values):<9,.0f}"
