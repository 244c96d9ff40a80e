"""End-to-end latency: the producing transaction's commit to the sink being called.

A publisher process commits one event per transaction at a steady rate (500/s by default,
on an absolute schedule, so a stall shows up as latency rather than as fewer events) and
notes ``time.monotonic_ns()`` as soon as COMMIT returns. The consumer, in this process,
notes ``time.monotonic_ns()`` when its handler is called; on Linux CLOCK_MONOTONIC is one
clock for the whole machine, so the two are comparable across processes. Three phases, one
after the other, in one run on one database:

* ``notify``: outbox-relay with its default settings (woken by LISTEN/NOTIFY, poll
  interval 1 s as the fallback, batch size 100, lease mode), its log at info (the CLI's
  default level) written to a file;
* ``poll``: the same, polling only, every 100 ms (``listen=False``);
* ``pgqueuer-notimer``: the same publisher enqueues a job in a committed transaction, a
  QueueManager (batch size 10, its default) runs a handler that notes the time, with its
  periodic statistics timer switched off: ``QueueManager.run(log_aggregation_interval=
  timedelta(0))`` in pgqueuer 1.6 (the task that folds ``pgqueuer_log`` into
  ``pgqueuer_statistics``, by default every 30 s, jittered +-20%);
* ``pgqueuer``: the same with PgQueuer's defaults, the timer on.

Both sides run on the standard asyncio loop, the consumer in this process. The first
second of each phase is warm-up and left out; an event never received is reported.
Targets: NOTIFY p50 < 3 ms, p99 < 10 ms; p99 no worse than PgQueuer's with its timer off
(issue 14, target 4; beside its default, both reported); poll-only p99 < 120 ms.

    .venv/bin/python bench/latency.py [--database-url URL] [--rate 500] [--seconds 60]
        [--phases notify,poll,pgqueuer-notimer,pgqueuer] [--synchronous-commit off|on]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import _common
import psycopg

import outbox
from outbox import runtime
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.sinks import Event, Sink

WARMUP_SECONDS = 1.0
TARGETS = {"notify": (3.0, 10.0), "poll": (None, 120.0)}


# -- the publisher (its own process) -------------------------------------------------------


def publisher(url: str, kind: str, rate: float, seconds: float, out: str) -> None:
    asyncio.run(_publish(url, kind, rate, seconds, out))


async def _publish(url: str, kind: str, rate: float, seconds: float, out: str) -> None:
    commits: dict[int, int] = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        enqueue = await _enqueuer(conn, kind)
        total = int(rate * seconds)
        started = time.monotonic()
        for seq in range(total):
            delay = started + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with conn.transaction():
                await enqueue(seq)
            commits[seq] = time.monotonic_ns()
    _save(out, commits)


async def _enqueuer(
    conn: psycopg.AsyncConnection[tuple[object, ...]], kind: str
) -> Callable[[int], Awaitable[object]]:
    if kind.startswith("pgqueuer"):
        from pgqueuer.queries import Queries

        queries = Queries.from_psycopg_connection(conn)
        return lambda seq: queries.enqueue("latency", str(seq).encode())
    return lambda seq: outbox.publish(conn, "bench.latency", {"seq": seq})


def _save(out: str, commits: dict[int, int]) -> None:
    Path(out).write_text(json.dumps(commits))


def _load(out: str) -> dict[int, int]:
    path = Path(out)
    commits = {int(k): v for k, v in json.loads(path.read_text()).items()}
    path.unlink()
    return commits


# -- the consumers (this process) ----------------------------------------------------------


class RecordingSink(Sink):
    def __init__(self, received: dict[int, int]) -> None:
        super().__init__()
        self.received = received

    async def deliver(self, event: Event) -> None:
        self.received.setdefault(int(event.payload["seq"]), time.monotonic_ns())


async def _run_relay(url: str, listen: bool, received: dict[int, int], go: asyncio.Event) -> None:
    options = runtime.relay_options(name=f"bench-latency-{'notify' if listen else 'poll'}")
    if not listen:  # the defaults but for polling only, every 100 ms
        options = dataclasses.replace(options, listen=False, poll_interval=0.1)
    relay = Relay(url, {"rec": RecordingSink(received)}, [Subscription(("#",), ("rec",))], options)
    task = asyncio.create_task(relay.run())
    for _ in range(100):
        if relay.listening or not listen:
            break
        await asyncio.sleep(0.05)
    go.set()
    try:
        await _until_cancelled()
    finally:
        relay.stop()
        await task


async def _run_pgqueuer(url: str, timer: bool, received: dict[int, int], go: asyncio.Event) -> None:
    import asyncpg
    from pgqueuer.models import Job
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(url)  # its recommended driver
    qm = QueueManager(Queries.from_asyncpg_connection(conn))

    @qm.entrypoint("latency")
    async def latency(job: Job) -> None:
        received.setdefault(int(job.payload or b"-1"), time.monotonic_ns())

    # Its defaults, or its statistics timer off: an interval of 0 disables it.
    running = (
        qm.run(batch_size=10)
        if timer
        else qm.run(batch_size=10, log_aggregation_interval=dt.timedelta(0))
    )
    task = asyncio.create_task(running)
    await asyncio.sleep(1.0)  # its listener and first dequeue
    go.set()
    try:
        await _until_cancelled()
    finally:
        qm.shutdown.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await conn.close()


async def _until_cancelled() -> None:
    await asyncio.Event().wait()


async def _phase(url: str, name: str, rate: float, seconds: float) -> list[float]:
    received: dict[int, int] = {}
    go = asyncio.Event()
    runner = _run_pgqueuer if name.startswith("pgqueuer") else _run_relay
    # _run_relay: listen or not; _run_pgqueuer: its statistics timer on or not.
    consumer = asyncio.create_task(runner(url, name in ("notify", "pgqueuer"), received, go))
    await go.wait()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        out = tmp.name
    process = multiprocessing.get_context("spawn").Process(
        target=publisher,
        args=(url, name, rate, seconds, out),
    )
    process.start()
    await asyncio.to_thread(process.join)
    commits = _load(out)
    for _ in range(100):  # the last events
        if len(received) >= len(commits):
            break
        await asyncio.sleep(0.05)
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    skip = int(rate * WARMUP_SECONDS)
    missing = [seq for seq in commits if seq not in received]
    if missing:
        print(f"  {name}: {len(missing)} of {len(commits)} events not received", flush=True)
    return [
        (received[s] - commits[s]) / 1e6 for s in sorted(commits) if s >= skip and s in received
    ]


def _install_pgqueuer(url: str) -> None:
    async def install() -> None:
        from pgqueuer.queries import Queries

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await Queries.from_psycopg_connection(conn).install()

    asyncio.run(install())


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--phases", default=",".join(LABELS))
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off")
    args = parser.parse_args(argv)
    if unknown := set(args.phases.split(",")) - set(LABELS):
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


LABELS = {
    "notify": "outbox-relay LISTEN/NOTIFY",
    "poll": "outbox-relay poll 100 ms",
    "pgqueuer-notimer": "PgQueuer, stats timer off",
    "pgqueuer": "PgQueuer, default (timer on)",
}


def _log_to_file(path: str) -> None:
    """The relay's log at the CLI's default level, info, as a deployed relay writes it."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    phases = args.phases.split(",")
    results: dict[str, dict[str, float]] = {}
    with (
        _common.server(args.database_url) as server_url,
        _common.fresh_database(server_url, synchronous_commit=args.synchronous_commit) as url,
        tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp,
    ):
        print(_common.machine(url), flush=True)
        sink = "in-process async sink noting the time (both sides)"
        print(_common.conditions(url, log_level="info", sink=sink), flush=True)
        _log_to_file(str(Path(tmp) / "relay.log"))
        if any(name.startswith("pgqueuer") for name in phases):
            _install_pgqueuer(url)
        for name in phases:
            latencies = asyncio.run(_phase(url, name, args.rate, args.seconds))
            results[name] = _common.percentiles(latencies)
            print(f"  {name}: done", flush=True)
        for handler in logging.getLogger().handlers:
            handler.close()
    print(f"\nlatency, commit -> handler called, {args.rate:g} events/s for {args.seconds:g} s")
    print(f"{'system':<30} {'n':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in results.items():
        print(
            f"{LABELS[name]:<30} {r['n']:>7,.0f} {r['p50']:>8.2f} {r['p95']:>8.2f} "
            f"{r['p99']:>8.2f} {r['max']:>8.2f}"
        )
    print()
    for line in _verdicts(results):
        print(line)
    print(_common.reproduce())
    return 0


def _verdicts(results: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    if "notify" in results:
        r = results["notify"]
        ok = r["p50"] < 3.0 and r["p99"] < 10.0
        lines.append(
            f"target NOTIFY p50 < 3 ms, p99 < 10 ms: {'met' if ok else 'MISSED'} "
            f"(p50 {r['p50']:.2f}, p99 {r['p99']:.2f})"
        )
        for peer in ("pgqueuer-notimer", "pgqueuer"):
            if peer in results:
                q = results[peer]
                ok = r["p99"] <= q["p99"]
                lines.append(
                    f"target p99 no worse than {LABELS[peer]}: {'met' if ok else 'MISSED'} "
                    f"(p99 {r['p99']:.2f} vs {q['p99']:.2f}; p50 {r['p50']:.2f} vs "
                    f"{q['p50']:.2f})"
                )
    if "poll" in results:
        r = results["poll"]
        ok = r["p99"] < 120.0
        lines.append(f"target poll p99 < 120 ms: {'met' if ok else 'MISSED'} ({r['p99']:.2f})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
