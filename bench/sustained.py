"""Sustained load: a steady publish rate for minutes, retention on.

A publisher process commits ``--rate`` events/s (``--per-transaction`` events per
transaction, on an absolute schedule) for ``--minutes``; a relay process (no-op sink, batch
500, retention ``--retention`` seconds, maintenance every 5 s, named ``outbox-bench-relay``,
so its connections' ``application_name`` is ``outbox relay outbox-bench-relay``) delivers
them. Every second this process samples the relay's
delivered count, ``pg_stat_user_tables.n_dead_tup`` / ``n_live_tup`` of the outbox table,
the pending backlog, and the age of the oldest open transaction of the relay's backends
(``pg_stat_activity.xact_start``). Per interval (``--interval``, 60 s) it prints the
throughput, the dead tuples at the end and at their highest, and the oldest transaction.

Targets: throughput within 10% from the first interval to the last, dead tuples bounded,
the oldest relay transaction under 5 s.

    .venv/bin/python bench/sustained.py [--database-url URL] [--minutes 10] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from collections.abc import Sequence
from typing import Any

import _common
import psycopg

from outbox.store import relay_application_name

APP = "outbox-bench-relay"

_SAMPLE = """
SELECT (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'outbox_events'),
       (SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'outbox_events'),
       (SELECT count(*) FROM outbox_events WHERE status = 'pending'),
       (SELECT COALESCE(EXTRACT(EPOCH FROM max(now() - xact_start)), 0)::float8
        FROM pg_stat_activity WHERE application_name = %s AND xact_start IS NOT NULL)
"""


def publisher(url: str, rate: float, per_transaction: int, seconds: float) -> None:
    import outbox

    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        for t in range(int(rate * seconds / per_transaction)):
            delay = started + t * per_transaction / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with conn.transaction():
                for n in range(per_transaction):
                    outbox.publish(conn, "bench.sustained", {"t": t, "n": n})


def relay_process(url: str, retention: float, delivered: Any, stop: Any) -> None:
    from outbox import runtime
    from outbox.relay import Relay
    from outbox.routing import Subscription
    from outbox.sinks import Event, Sink

    class Counting(Sink):
        async def deliver(self, event: Event) -> None:
            delivered.value += 1  # one relay process, one event loop: no lock needed

    options = runtime.relay_options(
        batch_size=500, retention_seconds=retention, maintenance_interval=5.0, name=APP
    )
    relay = Relay(url, {"count": Counting()}, [Subscription(("#",), ("count",))], options)

    async def run() -> None:
        task = asyncio.create_task(relay.run())
        await asyncio.to_thread(stop.wait)
        relay.stop()
        await task

    asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--per-transaction", type=int, default=10)
    parser.add_argument("--retention", type=float, default=10.0, help="seconds done rows stay")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per report row")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    with _common.server(args.database_url) as server_url, _common.fresh_database(server_url) as url:
        print(_common.machine(url), flush=True)
        context = multiprocessing.get_context("spawn")
        delivered, stop = context.Value("q", 0, lock=False), context.Event()
        relay = context.Process(target=relay_process, args=(url, args.retention, delivered, stop))
        relay.start()
        time.sleep(2.0)
        pub = context.Process(
            target=publisher, args=(url, args.rate, args.per_transaction, seconds)
        )
        pub.start()
        rows = monitor(url, delivered, pub, args.interval)
        stop.set()
        relay.join(30)
        pub.join()
    report(rows, args)
    return 0


def monitor(url: str, delivered: Any, pub: Any, interval: float) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.monotonic()
        mark, count_at_mark = started, delivered.value
        row = {"dead_max": 0.0, "xact_max": 0.0}
        while pub.is_alive():
            time.sleep(1.0)
            sample = conn.execute(_SAMPLE, (relay_application_name(APP),)).fetchone()
            dead, live, pending, xact = sample or (0, 0, 0, 0)
            row["dead_max"] = max(row["dead_max"], float(dead or 0))
            row["xact_max"] = max(row["xact_max"], float(xact or 0))
            now = time.monotonic()
            if now - mark >= interval or not pub.is_alive():
                count = delivered.value
                row.update(
                    end=now - started,
                    rate=(count - count_at_mark) / (now - mark),
                    dead=float(dead or 0),
                    live=float(live or 0),
                    pending=float(pending),
                )
                rows.append(row)
                print(
                    f"  {row['end']:6.0f} s: {row['rate']:,.0f} events/s, dead tuples "
                    f"{row['dead']:,.0f} (max {row['dead_max']:,.0f}), live {row['live']:,.0f},"
                    f" pending {row['pending']:,.0f}, oldest relay xact {row['xact_max']:.2f} s",
                    flush=True,
                )
                mark, count_at_mark = now, count
                row = {"dead_max": 0.0, "xact_max": 0.0}
    return rows


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\nsustained {args.rate:g} events/s for {args.minutes:g} min, retention "
        f"{args.retention:g} s, {args.per_transaction} events per transaction"
    )
    print(
        f"{'until s':>7} {'events/s':>9} {'dead tup':>9} {'dead max':>9} {'live':>8} "
        f"{'pending':>8} {'oldest xact s':>13}"
    )
    for r in rows:
        print(
            f"{r['end']:>7.0f} {r['rate']:>9,.0f} {r['dead']:>9,.0f} {r['dead_max']:>9,.0f} "
            f"{r['live']:>8,.0f} {r['pending']:>8,.0f} {r['xact_max']:>13.2f}"
        )
    full = [
        r
        for r in rows
        if r["end"] - (rows[rows.index(r) - 1]["end"] if rows.index(r) else 0)
        >= args.interval * 0.9
    ] or rows
    first, last = full[0]["rate"], full[-1]["rate"]
    change = last / first - 1 if first else float("nan")
    print(
        f"target throughput within 10% first to last interval: "
        f"{'met' if abs(change) <= 0.1 else 'MISSED'} ({first:,.0f} -> {last:,.0f}, {change:+.1%})"
    )
    dead_first = max(r["dead_max"] for r in rows[: max(1, len(rows) // 2)])
    dead_last = max(r["dead_max"] for r in rows[len(rows) // 2 :])
    bounded = dead_last <= max(dead_first * 1.5, 50_000)
    print(
        f"target dead tuples bounded: {'met' if bounded else 'MISSED'} (max first half "
        f"{dead_first:,.0f}, second half {dead_last:,.0f})"
    )
    oldest = max(r["xact_max"] for r in rows)
    print(
        f"target oldest relay transaction < 5 s: {'met' if oldest < 5 else 'MISSED'} "
        f"({oldest:.2f} s)"
    )
    print(_common.reproduce())


if __name__ == "__main__":
    sys.exit(main())
