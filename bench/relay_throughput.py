"""How fast one relay moves events, against the ceiling of its own SQL.

For each batch size, the outbox table is filled with events (one INSERT ... SELECT
generate_series), vacuumed, then emptied three times over:

* ceiling: ``Store.claim`` and ``Store.settle`` (the relay's statements, marking every row
  ``done`` with the settlement the relay writes for one successful sink) in a tight loop on
  one connection, nothing else; with ``--claim-mode lock``, ``Store.claim_locked`` and
  ``Store.settle_locked`` in one transaction per batch, as the relay runs them in that mode;
* relay: ``outbox.relay.Relay`` with one in-process no-op sink subscribed to ``#``,
  ``run(drain=True)``, in the claim mode asked for;
* CLI relay: ``outbox relay --drain`` as a user runs it, in a process of its own, default
  log level, a plain ``def`` callable sink from a configuration file, timed from its first
  delivery to its exit (``--no-cli`` leaves it out).

All figures are events per second; the ratios say how much the relay costs on top of its
SQL (issue 14's target: the CLI relay at least 60% of the ceiling). Starts an embedded
PostgreSQL in a temporary directory unless ``--database-url`` names a server (a database
is created on it for the run and dropped afterwards).

The bench database runs with ``synchronous_commit = off`` unless ``--synchronous-commit on``:
both measurements commit as often, so waiting for the disk only adds noise (a lot of it on a
shared machine) to what is compared, the relay's own cost.

    python bench/relay_throughput.py [--database-url URL] [--events 20000]
        [--batch-sizes 1,10,100,1000] [--small-batch-events 3000] [--keys 0]
        [--synchronous-commit off] [--repeat 1] [--profile BATCH_SIZE]
        [--claim-mode lease|lock] [--no-cli]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime as dt
import os
import platform
import pstats
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _common
import psycopg

from outbox import runtime
from outbox.records import Settlement
from outbox.relay import CLAIM_MODES, ClaimMode, Relay
from outbox.retry import DELIVERED
from outbox.routing import Subscription
from outbox.store import Connection, Store

SINK = "noop"

# The whole table filled in one statement. Keys, when asked for, cycle so that every key has
# events spread over the whole table.


def _count_done(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM outbox_events WHERE status = 'done'").fetchone()
        return int(row[0]) if row else 0


def _server_version(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


# -- the two measurements -----------------------------------------------------------------


async def _ceiling(url: str, batch_size: int, claim_mode: ClaimMode) -> float:
    """Seconds to claim and settle every row with the relay's statements and nothing else."""
    store = Store()
    batch = _locked_batch if claim_mode == "lock" else _leased_batch
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as journal,
    ):
        started = time.perf_counter()
        while await batch(store, conn, journal, batch_size):
            pass
        return time.perf_counter() - started


async def _leased_batch(
    store: Store, conn: Connection, journal: Connection, batch_size: int
) -> int:
    claim = await store.claim(
        conn, limit=batch_size, relay="bench", lease_seconds=60, take_suspect=True
    )
    if claim.rows:
        done = _done_settlement(claim.now)
        await store.settle(conn, [(row, done) for row in claim.rows])
    return len(claim.rows)


async def _locked_batch(
    store: Store, conn: Connection, journal: Connection, batch_size: int
) -> int:
    """As the relay: the batch recorded on a second connection (decision 10), its record
    deleted by the settle."""
    async with conn.transaction():
        claim = await store.claim_locked(conn, limit=batch_size, take_suspect=True)
        if claim.rows:
            record = await store.open_claim(journal, claim.rows, claim.suspect)
            done = _done_settlement(claim.now)
            await store.settle_locked(conn, [(row, done) for row in claim.rows], record)
    return len(claim.rows)


def _done_settlement(now: dt.datetime) -> Settlement:
    """What the relay writes for an event its only sink accepted on the first attempt."""
    state = {"attempts": 1, "status": DELIVERED, "delivered_at": now.isoformat()}
    return Settlement("done", None, {SINK: {**state, "last_error": None}}, [], None)


async def _relay(url: str, batch_size: int, claim_mode: ClaimMode) -> float:
    """Seconds for a relay with a no-op sink to drain the table."""
    relay = Relay(
        url,
        {SINK: _common.NoopSink()},
        [Subscription(("#",), (SINK,))],
        runtime.relay_options(batch_size=batch_size, name="bench", claim_mode=claim_mode),
    )
    started = time.perf_counter()
    await relay.run(drain=True)
    return time.perf_counter() - started


# The CLI relay's sink: a plain ``def`` callable, as a user writes one. It notes when it is
# first called, so that the figure leaves out the interpreter's start and the imports.
_CLI_SINK = """
import time
from pathlib import Path

_started = Path(__file__).with_name("first_call")


def deliver(event):
    if not _started.exists():
        _started.write_text(repr(time.time()))
"""


def _cli_relay(url: str, batch_size: int, claim_mode: ClaimMode) -> float:
    """Seconds for ``outbox relay --drain`` as a user runs it (default log level, a
    configuration file as a user writes it, a process of its own), from its first delivery
    to its exit."""
    with tempfile.TemporaryDirectory(prefix="outbox-bench-cli-") as tmp:
        folder = Path(tmp)
        (folder / "benchsink.py").write_text(_CLI_SINK)
        config = _common.relay_config(
            folder / "outbox.toml",
            batch_size=batch_size,
            claim_mode=claim_mode,
            target="benchsink:deliver",
        )
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join([tmp, *sys.path])}
        command = [sys.executable, "-m", "outbox.cli", "relay", "--config", str(config)]
        command += ["--database-url", url, "--drain"]
        run = subprocess.run(command, env=environment, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"outbox relay exited {run.returncode}:\n{run.stderr[-2000:]}")
        ended = time.time()
        return ended - float((folder / "first_call").read_text())


def _measure(
    url: str, batch_size: int, events: int, keys: int, which: str, claim_mode: ClaimMode
) -> float:
    _common.fill_keyed(url, events, keys)
    if which == "cli":
        seconds = _cli_relay(url, batch_size, claim_mode)
    else:
        runner = _ceiling if which == "ceiling" else _relay
        seconds = asyncio.run(runner(url, batch_size, claim_mode))
    done = _count_done(url)
    if done != events:
        raise SystemExit(f"{which} at batch {batch_size}: {done} of {events} events done")
    return events / seconds


def _best_of(
    args: argparse.Namespace, url: str, size: int, events: int
) -> tuple[float, float, float]:
    """The best of ``--repeat`` runs of each (ceiling, in-process relay, CLI relay),
    taking turns so that all three see the same machine."""
    ceiling = relay = cli = 0.0
    mode = args.claim_mode
    for _ in range(args.repeat):
        ceiling = max(ceiling, _measure(url, size, events, args.keys, "ceiling", mode))
        relay = max(relay, _measure(url, size, events, args.keys, "relay", mode))
        if not args.no_cli:
            cli = max(cli, _measure(url, size, events, args.keys, "cli", mode))
    return ceiling, relay, cli


def _profile(url: str, batch_size: int, events: int, keys: int, claim_mode: ClaimMode) -> None:
    _common.fill_keyed(url, events, keys)
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(_relay(url, batch_size, claim_mode))
    profiler.disable()
    print(
        f"\nprofile of the relay at batch {batch_size} ({events} events, claim mode "
        f"{claim_mode}), by own time:"
    )
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


# -- the report -------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=20_000, help="events per measurement")
    parser.add_argument(
        "--small-batch-events",
        type=int,
        default=3_000,
        help="events per measurement for batch sizes below 10",
    )
    parser.add_argument("--batch-sizes", default="1,10,100,1000")
    parser.add_argument("--keys", type=int, default=0, help="ordering keys (0: none)")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off")
    parser.add_argument("--repeat", type=int, default=1, help="runs per figure; best is kept")
    parser.add_argument("--profile", type=int, metavar="BATCH_SIZE", help="cProfile the relay")
    parser.add_argument(
        "--claim-mode", choices=CLAIM_MODES, default="lease", help="the relay's claim mode"
    )
    parser.add_argument(
        "--no-cli", action="store_true", help="leave out the CLI relay (`outbox relay`)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    with (
        _common.server(args.database_url) as server_url,
        _common.fresh_database(server_url, synchronous_commit=args.synchronous_commit) as url,
    ):
        print(
            f"PostgreSQL {_server_version(url)} ({'given' if args.database_url else 'embedded'}"
            f", synchronous_commit={args.synchronous_commit}), Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs, keys: {args.keys or 'none'}, "
            f"claim mode {args.claim_mode}, best of {args.repeat}"
        )
        print(
            f"{'batch':>6} {'events':>7} {'ceiling ev/s':>13} {'relay ev/s':>11} {'ratio':>6}"
            f" {'CLI relay ev/s':>15} {'ratio':>6}"
        )
        for size in sizes:
            events = args.small_batch_events if size < 10 else args.events
            ceiling, relay, cli = _best_of(args, url, size, events)
            shown = f" {cli:>15,.0f} {cli / ceiling:>6.0%}" if cli else ""
            print(
                f"{size:>6} {events:>7} {ceiling:>13,.0f} {relay:>11,.0f} {relay / ceiling:>6.0%}"
                + shown
            )
        if not args.no_cli:
            print(
                "CLI relay: `outbox relay --drain` in its own process, default log level, a "
                "plain def callable sink; timed from its first delivery to its exit."
            )
        if args.profile:
            _profile(url, args.profile, args.events, args.keys, args.claim_mode)
    print(f"\nreproduce (from the repository root): {_command(args)}")


def _command(args: argparse.Namespace) -> str:
    command = ["python", "bench/relay_throughput.py"]
    if args.database_url:
        command += ["--database-url", args.database_url]
    command += ["--events", str(args.events), "--small-batch-events", str(args.small_batch_events)]
    command += ["--batch-sizes", args.batch_sizes, "--keys", str(args.keys)]
    command += ["--synchronous-commit", args.synchronous_commit]
    command += ["--repeat", str(args.repeat), "--claim-mode", args.claim_mode]
    if args.no_cli:
        command.append("--no-cli")
    if args.profile:
        command += ["--profile", str(args.profile)]
    return shlex.join(command)


if __name__ == "__main__":
    main()
