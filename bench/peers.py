"""Drain throughput against the peers, as a race: outbox-relay, PgQueuer (and procrastinate).

Same server, same run, same event count, the same payload (a JSON object of about 120
bytes), each system in its own fresh database with the same ``synchronous_commit`` (off
unless ``--synchronous-commit on``). For each measurement the queue is filled (outbox-relay:
one INSERT ... SELECT generate_series; PgQueuer: its batch ``enqueue``; procrastinate:
``batch_defer_async``), vacuumed and CHECKPOINTed; then the worker processes start, wait at a
barrier with their imports done, and are let go together. The figure is events / wall-clock
seconds from the release to the last process's result.

The race is fair in these ways:

* Every configuration of every system runs once per repetition, the systems interleaved
  (each batch size and process count: outbox lease, PgQueuer, outbox lock) and the order
  reversed every other repetition; the table gives the median and the range.
* Both are offered the same batch sizes (100, 500, 1000) and the same process counts;
  PgQueuer also 1 or 2 QueueManagers per process (its recommended way to scale; the relay
  runs its default concurrency 1).
* Both run on uvloop, as PgQueuer's own CLI does when uvloop is installed, or both on the
  standard asyncio loop (``--no-uvloop``).
* Every handler call is counted by id in each process, and the parent checks that every
  event was handled exactly once; a failed check fails the run.

outbox-relay runs as users run it: ``outbox relay --drain`` through the CLI's entry point
with a configuration file holding one ``callable`` sink (a plain ``def``) subscribed to
``#``, every relay setting at its default but ``batch_size`` and ``claim_mode``, the log at
the CLI's default level (info) written to a file. Lease mode (the default) and lock mode are
reported separately. PgQueuer: ``QueueManager.run(batch_size=N, mode=drain)`` on its
recommended asyncpg driver with an ``async def`` handler.

Targets (issue 14): the medians of lease mode's best configuration at least 1.5x PgQueuer's
best, lock mode's at least 3x.

    .venv/bin/python bench/peers.py [--database-url URL] [--events 100000] [--repeat 3]
        [--batch-sizes 100,500,1000] [--processes 1,2] [--pgqueuer-managers 1,2]
        [--systems lease,lock,pgqueuer[,procrastinate]] [--synchronous-commit off|on]
        [--no-uvloop] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common
import psycopg

# The payload every system carries: the same JSON document as _common.FILL's.
PAYLOAD = {"text": "x" * 100}
SYSTEMS = ("lease", "lock", "pgqueuer", "procrastinate")
DATABASE = {"lease": "outbox", "lock": "outbox", "pgqueuer": "pgqueuer"}


@dataclasses.dataclass(frozen=True)
class Config:
    system: str  # lease, lock (outbox-relay's claim modes), pgqueuer, procrastinate
    processes: int
    batch: int  # procrastinate: unused
    managers: int = 1  # pgqueuer: QueueManagers per process; procrastinate: concurrency

    def label(self) -> str:
        if self.system in ("lease", "lock"):
            return f"outbox {self.system}, {self.processes} proc, batch {self.batch}"
        if self.system == "pgqueuer":
            return f"pgqueuer, {self.processes} proc x {self.managers} QM, batch {self.batch}"
        return f"procrastinate, {self.processes} proc x concurrency {self.managers}"


def plan(args: argparse.Namespace) -> list[Config]:
    """One repetition's configurations, the systems interleaved."""
    configs = []
    for processes in args.processes:
        for batch in args.batch_sizes:
            for system in ("lease", "pgqueuer", "lock"):
                if system not in args.systems:
                    continue
                managers = args.pgqueuer_managers if system == "pgqueuer" else [1]
                configs += [Config(system, processes, batch, m) for m in managers]
    if "procrastinate" in args.systems:
        configs.append(Config("procrastinate", 2, 0, 10))
    return configs


# -- the PgQueuer and procrastinate workers (each its own process) ---------------------------


def peer_worker(
    config: Config, url: str, use_uvloop: bool, _output: str, ready: Any, go: Any, results: Any
) -> None:
    handled: list[int] = []
    if config.system == "pgqueuer":
        import pgqueuer.qm  # noqa: F401  (the imports before the barrier)

        ready.set()
        go.wait()
        coro = _pgqueuer(config, url, handled)
    else:
        app = _procrastinate_app(url, handled)
        ready.set()
        go.wait()
        coro = _procrastinate(app, config)
    if use_uvloop:
        import uvloop

        uvloop.run(coro)  # as PgQueuer's CLI runs it when uvloop is installed
    else:
        asyncio.run(coro)
    results.put((0, 0, handled))


async def _pgqueuer(config: Config, url: str, handled: list[int]) -> None:
    import asyncpg
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    managers, conns = [], []
    for _ in range(config.managers):
        conn = await asyncpg.connect(url)  # its recommended driver
        qm = QueueManager(Queries.from_asyncpg_connection(conn))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            handled.append(int(job.id))

        managers.append(qm)
        conns.append(conn)
    await asyncio.gather(
        *(qm.run(batch_size=config.batch, mode=QueueExecutionMode.drain) for qm in managers)
    )
    for conn in conns:
        await conn.close()


def _procrastinate_app(url: str, handled: list[int]) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop", pass_context=True)
    async def noop(context: Any) -> None:
        handled.append(int(context.job.id))

    return app


async def _procrastinate(app: Any, config: Config) -> None:
    async with app.open_async():
        await app.run_worker_async(
            concurrency=config.managers, wait=False, install_signal_handlers=False
        )


# -- filling -------------------------------------------------------------------------------


def _prepare(system: str, url: str, events: int) -> None:
    if system in ("lease", "lock"):
        _common.fill(url, events)  # VACUUM ANALYZE and CHECKPOINT included
    elif system == "pgqueuer":
        asyncio.run(_fill_pgqueuer(url, events))
    else:
        asyncio.run(_fill_procrastinate(url, events))


async def _fill_pgqueuer(url: str, events: int) -> None:
    from pgqueuer.queries import Queries

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        queries = Queries.from_psycopg_connection(conn)
        if not await queries.schema_is_installed():
            await queries.install()
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
        for start in range(0, events, 10_000):
            n = min(10_000, events - start)
            payloads: list[bytes | None] = [
                json.dumps({"n": start + i + 1, **PAYLOAD}).encode() for i in range(n)
            ]
            await queries.enqueue(["noop"] * n, payloads, [0] * n)
    with psycopg.connect(url, autocommit=True) as sync:
        _common.checkpoint(sync, "pgqueuer")


async def _fill_procrastinate(url: str, events: int) -> None:
    app = _procrastinate_app(url, [])
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        installed = await (
            await conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
        ).fetchone()
        async with app.open_async():
            if not (installed and installed[0]):
                await app.schema_manager.apply_schema_async()
            await conn.execute("TRUNCATE procrastinate_jobs CASCADE")
            task = app.tasks["noop"]
            for start in range(0, events, 5_000):
                await task.batch_defer_async(*({} for _ in range(min(5_000, events - start))))
    with psycopg.connect(url, autocommit=True) as sync:
        _common.checkpoint(sync, "procrastinate_jobs")


_IDS = {
    "lease": "SELECT id FROM outbox_events",
    "lock": "SELECT id FROM outbox_events",
    "pgqueuer": "SELECT id FROM pgqueuer",
    "procrastinate": "SELECT id FROM procrastinate_jobs",
}
_LEFT = {
    "lease": "SELECT count(*) FROM outbox_events WHERE status <> 'done'",
    "lock": "SELECT count(*) FROM outbox_events WHERE status <> 'done'",
    "pgqueuer": "SELECT count(*) FROM pgqueuer",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'",
}


def measure(
    config: Config, url: str, events: int, use_uvloop: bool, tmp: Path
) -> tuple[float, int]:
    """One drain of ``events``, checked: events per second, and the log lines written."""
    _prepare(config.system, url, events)
    expected = _common.ids(url, _IDS[config.system])
    if config.system in ("lease", "lock"):
        path = _common.relay_config(
            tmp / "outbox.toml", batch_size=config.batch, claim_mode=config.system
        )
        argv = ["relay", "--drain", "--config", str(path), "--database-url", url]
        run = _common.run_processes(
            _common.cli_relay_worker,
            lambda _i, output: (argv, output, use_uvloop),
            config.processes,
        )
    else:
        run = _common.run_processes(
            peer_worker, lambda _i, output: (config, url, use_uvloop, output), config.processes
        )
    _common.check_exactly_once(config.label(), expected, run.handled)
    left = int(_common.scalar(url, _LEFT[config.system]) or 0)  # type: ignore[call-overload]
    if left:
        raise SystemExit(f"FAILED {config.label()}: {left} of {events} jobs left undone")
    return events / run.seconds, run.log_lines


# -- the race ------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, help="per measurement (100,000; --quick 5,000)")
    parser.add_argument("--procrastinate-events", type=int, help="default: --events")
    parser.add_argument("--repeat", type=int, help="repetitions, at least 3 (--quick: 1)")
    parser.add_argument("--batch-sizes", type=_ints, help="100,500,1000 (--quick: 100)")
    parser.add_argument("--processes", type=_ints, help="1,2 (--quick: 2)")
    parser.add_argument("--pgqueuer-managers", type=_ints, help="per process: 1,2 (--quick: 1)")
    parser.add_argument("--systems", default="lease,lock,pgqueuer", help=",".join(SYSTEMS))
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off")
    parser.add_argument("--no-uvloop", action="store_true", help="both on the asyncio loop")
    parser.add_argument("--quick", action="store_true", help="a smoke run: small, 1 repetition")
    args = parser.parse_args(argv)
    quick = args.quick
    args.events = args.events or (5_000 if quick else 100_000)
    args.repeat = args.repeat or (1 if quick else 3)
    args.batch_sizes = args.batch_sizes or ([100] if quick else [100, 500, 1000])
    args.processes = args.processes or ([2] if quick else [1, 2])
    args.pgqueuer_managers = args.pgqueuer_managers or ([1] if quick else [1, 2])
    args.systems = args.systems.split(",")
    if unknown := set(args.systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    if args.repeat < 3 and not quick:
        parser.error("--repeat: at least 3 (a median of fewer is not a race); --quick for 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    configs = plan(args)
    rates: dict[Config, list[float]] = {c: [] for c in configs}
    loop = "asyncio" if args.no_uvloop else "uvloop"
    with contextlib.ExitStack() as stack:
        server_url = stack.enter_context(_common.server(args.database_url))
        urls: dict[str, str] = {}
        for system in {DATABASE.get(s, s) for s in args.systems}:
            urls[system] = stack.enter_context(
                _common.fresh_database(
                    server_url,
                    synchronous_commit=args.synchronous_commit,
                    outbox_schema=system == "outbox",
                )
            )
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="outbox-bench-")))
        any_url = next(iter(urls.values()))
        print(_common.machine(server_url), flush=True)
        sink = "outbox: a plain def callable noting the id; peers: an async def doing the same"
        print(_common.conditions(any_url, log_level="info", sink=sink, loop=loop), flush=True)
        for rep in range(args.repeat):
            order = configs if rep % 2 == 0 else configs[::-1]
            print(f"repetition {rep + 1} of {args.repeat}", flush=True)
            for config in order:
                events = args.events
                if config.system == "procrastinate":
                    events = args.procrastinate_events or events
                url = urls[DATABASE.get(config.system, config.system)]
                rate, log_lines = measure(config, url, events, not args.no_uvloop, tmp)
                rates[config].append(rate)
                logged = f", {log_lines:,} log lines" if log_lines else ""
                print(f"  {config.label():<40} {rate:>9,.0f} events/s{logged}", flush=True)
    _report(args, rates, loop)
    return 0


def _report(args: argparse.Namespace, rates: dict[Config, list[float]], loop: str) -> None:
    print(
        f"\ndrain of {args.events:,} events, synchronous_commit = {args.synchronous_commit}, "
        f"{loop}, {args.repeat} interleaved repetitions, every event handled exactly once"
    )
    print(f"{'configuration':<40} {'median/s':>9} {'min-max':<19}")
    for config, values in rates.items():
        print(f"{config.label():<40} {_common.spread(values)}")
    best: dict[str, tuple[float, Config]] = {}
    for config, values in rates.items():
        median = statistics.median(values)
        if median > best.get(config.system, (0.0, config))[0]:
            best[config.system] = (median, config)
    print()
    for system, (median, config) in best.items():
        print(f"best {system}: {median:,.0f} events/s median ({config.label()})")
    if "pgqueuer" in best:
        peer = best["pgqueuer"][0]
        for system, target in (("lease", 1.5), ("lock", 3.0)):
            if system in best:
                ratio = best[system][0] / peer
                verdict = "met" if ratio >= target else "MISSED"
                print(
                    f"target outbox {system} >= {target:g}x PgQueuer's best: {verdict} "
                    f"({ratio:.2f}x, medians)"
                )
    print(_common.reproduce())


if __name__ == "__main__":
    sys.exit(main())
