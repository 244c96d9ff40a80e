"""Drain throughput against the peers: outbox-relay, PgQueuer and procrastinate.

Same server, same run, same event count, no-op handlers, each system in its own fresh
database with the same settings (``synchronous_commit = off`` unless told otherwise). For
each system the queue is filled first (outbox-relay: one INSERT ... SELECT generate_series;
PgQueuer: its batch ``enqueue`` of lists; procrastinate: ``batch_defer_async``), then worker
processes are started, wait at a barrier with their imports done, and are let go together;
the figure is events / wall-clock seconds from the release to the last worker's exit.

* outbox-relay: ``Relay.run(drain=True)`` with a no-op sink, in 1 or 2 processes, at several
  batch sizes and worker concurrencies, in both claim modes (``lease``, the default, and
  ``lock``, one transaction per batch); the best is compared.
* PgQueuer: several QueueManagers per process (each on its own asyncpg connection, its
  recommended driver, under uvloop as its CLI runs), batch size 100, ``mode=drain``, as its
  documentation recommends for throughput.
* procrastinate: ``run_worker_async(wait=False, concurrency=N)``, in 1 or 2 processes, as its
  documentation recommends (more concurrency, more workers).

Targets: outbox-relay's best at least 1.5x PgQueuer's best and 10x procrastinate's best.

    .venv/bin/python bench/peers.py [--database-url URL] [--events 100000]
        [--procrastinate-events 100000] [--systems outbox,pgqueuer,procrastinate] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import multiprocessing
import sys
import time
from collections.abc import Sequence
from typing import Any

import _common
import psycopg

from outbox.relay import ClaimMode


@dataclasses.dataclass(frozen=True)
class Config:
    system: str
    processes: int
    batch: int  # outbox, pgqueuer: batch size; procrastinate: unused
    workers: int  # outbox: relay concurrency; pgqueuer: QueueManagers; procrastinate: concurrency
    claim_mode: ClaimMode = "lease"  # outbox only

    def label(self) -> str:
        if self.system == "outbox":
            return (
                f"{self.claim_mode}: {self.processes} proc x concurrency {self.workers}, "
                f"batch {self.batch}"
            )
        if self.system == "pgqueuer":
            return f"{self.processes} proc x {self.workers} QueueManagers, batch {self.batch}"
        return f"{self.processes} proc x concurrency {self.workers}"


FULL = [
    Config("outbox", 1, 100, 1),
    Config("outbox", 1, 500, 1),
    Config("outbox", 1, 1000, 1),
    Config("outbox", 1, 500, 2),
    Config("outbox", 2, 500, 1),
    Config("outbox", 2, 1000, 1),
    Config("outbox", 1, 1000, 1, "lock"),
    Config("outbox", 1, 500, 2, "lock"),
    Config("outbox", 2, 500, 1, "lock"),
    Config("outbox", 2, 1000, 1, "lock"),
    Config("pgqueuer", 1, 100, 4),
    Config("pgqueuer", 2, 100, 2),
    Config("pgqueuer", 2, 100, 4),
    Config("procrastinate", 2, 0, 10),
]
QUICK = [
    Config("outbox", 1, 500, 1),
    Config("outbox", 2, 500, 1),
    Config("outbox", 2, 500, 1, "lock"),
    Config("pgqueuer", 1, 100, 4),
    Config("pgqueuer", 2, 100, 2),
    Config("procrastinate", 2, 0, 10),
]


# -- the workers (each its own process) ----------------------------------------------------


def worker(config: Config, url: str, ready: Any, go: Any) -> None:
    if config.system == "outbox":
        from outbox import runtime
        from outbox.relay import Relay
        from outbox.routing import Subscription

        options = runtime.relay_options(
            batch_size=config.batch,
            concurrency=config.workers,
            name="bench",
            claim_mode=config.claim_mode,
        )
        relay = Relay(url, {"noop": _common.NoopSink()}, [Subscription(("#",), ("noop",))], options)
        ready.set()
        go.wait()
        asyncio.run(relay.run(drain=True))
    elif config.system == "pgqueuer":
        import pgqueuer.qm  # noqa: F401  (the imports before the barrier)
        import uvloop

        ready.set()
        go.wait()
        uvloop.run(_pgqueuer(config, url))  # as its own CLI runs it
    else:
        app = _procrastinate_app(url)
        ready.set()
        go.wait()
        asyncio.run(_procrastinate(app, config))


async def _pgqueuer(config: Config, url: str) -> None:
    import asyncpg
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    managers, conns = [], []
    for _ in range(config.workers):
        conn = await asyncpg.connect(url)  # its recommended driver
        qm = QueueManager(Queries.from_asyncpg_connection(conn))

        @qm.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

        managers.append(qm)
        conns.append(conn)
    await asyncio.gather(
        *(qm.run(batch_size=config.batch, mode=QueueExecutionMode.drain) for qm in managers)
    )
    for conn in conns:
        await conn.close()


def _procrastinate_app(url: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    return app


async def _procrastinate(app: Any, config: Config) -> None:
    async with app.open_async():
        await app.run_worker_async(
            concurrency=config.workers, wait=False, install_signal_handlers=False
        )


# -- filling and checking ------------------------------------------------------------------


def _prepare(system: str, url: str, events: int) -> None:
    if system == "outbox":
        _common.fill(url, events)
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
        await conn.execute("TRUNCATE pgqueuer, pgqueuer_log")
        for start in range(0, events, 10_000):
            n = min(10_000, events - start)
            await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        await conn.execute("VACUUM ANALYZE pgqueuer")


async def _fill_procrastinate(url: str, events: int) -> None:
    app = _procrastinate_app(url)
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
        await conn.execute("VACUUM ANALYZE procrastinate_jobs")


_LEFT = {
    "outbox": "SELECT count(*) FROM outbox_events WHERE status <> 'done'",
    "pgqueuer": "SELECT count(*) FROM pgqueuer",
    "procrastinate": "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'",
}


def _measure(config: Config, url: str, events: int) -> float:
    _prepare(config.system, url, events)
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    readies, processes = [], []
    for _ in range(config.processes):
        ready = context.Event()
        process = context.Process(target=worker, args=(config, url, ready, go))
        process.start()
        readies.append(ready)
        processes.append(process)
    for ready in readies:
        ready.wait(60)
    started = time.perf_counter()
    go.set()
    for process in processes:
        process.join()
    seconds = time.perf_counter() - started
    left = int(_common.scalar(url, _LEFT[config.system]) or 0)  # type: ignore[call-overload]
    if left:
        raise SystemExit(f"{config.label()}: {left} of {events} jobs left undone")
    return events / seconds


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--procrastinate-events", type=int, help="default: --events")
    parser.add_argument("--systems", default="outbox,pgqueuer,procrastinate")
    parser.add_argument("--quick", action="store_true", help="fewer configurations")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    systems = args.systems.split(",")
    configs = [c for c in (QUICK if args.quick else FULL) if c.system in systems]
    best: dict[str, float] = {}
    with _common.server(args.database_url) as server_url:
        print(_common.machine(server_url), flush=True)
        print(f"{'system':<14} {'configuration':<44} {'events':>8} {'jobs/s':>9}", flush=True)
        for system in systems:
            events = args.events
            if system == "procrastinate" and args.procrastinate_events:
                events = args.procrastinate_events
            with _common.fresh_database(
                server_url,
                synchronous_commit=args.synchronous_commit,
                outbox_schema=system == "outbox",
            ) as url:
                for config in (c for c in configs if c.system == system):
                    rate = _measure(config, url, events)
                    best[system] = max(best.get(system, 0.0), rate)
                    print(
                        f"{system:<14} {config.label():<44} {events:>8,} {rate:>9,.0f}",
                        flush=True,
                    )
    print()
    for system, rate in best.items():
        print(f"best {system}: {rate:,.0f} jobs/s")
    for peer, target in (("pgqueuer", 1.5), ("procrastinate", 10.0)):
        if "outbox" in best and peer in best:
            ratio = best["outbox"] / best[peer]
            verdict = "met" if ratio >= target else "MISSED"
            print(f"target outbox-relay >= {target:g}x {peer}: {verdict} ({ratio:.2f}x)")
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
