"""Scale: claim time and relay throughput as the table grows.

Scenarios: an empty table, ``done`` rows retained (100,000 and 1,000,000 by default), and a
backlog of pending rows (1,000,000). Each scenario fills its rows (INSERT ... SELECT
generate_series), adds ``--events`` pending events when the scenario has none, vacuums and
analyses, then measures:

* claim time: the median of 30 ``Store.claim`` calls of 100 rows (each batch given back with
  ``Store.release`` so the table is unchanged);
* throughput: a relay (no-op sink, batch ``--batch``) moving ``--events`` events; it stops
  after that many deliveries (the backlog scenario leaves the rest pending).

Target: throughput within 20% of the empty table's in every scenario.

    .venv/bin/python bench/scale.py [--database-url URL] [--events 20000]
        [--done 100000,1000000] [--backlog 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence

import _common
import psycopg

from outbox import runtime
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.sinks import Event, Sink
from outbox.store import Store


class StopAfter(Sink):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.count = 0
        self.relay: Relay | None = None

    async def deliver(self, event: Event) -> None:
        self.count += 1
        if self.count >= self.limit and self.relay is not None:
            self.relay.stop()


async def claim_ms(url: str, rounds: int = 30) -> float:
    store = Store()
    times = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(rounds):
            started = time.perf_counter()
            claim = await store.claim(
                conn, limit=100, relay="bench", lease_seconds=60, take_suspect=True
            )
            times.append((time.perf_counter() - started) * 1000)
            await store.release(conn, claim.rows)
    return statistics.median(times)


async def throughput(url: str, events: int, batch: int) -> float:
    sink = StopAfter(events)
    relay = Relay(
        url,
        {"noop": sink},
        [Subscription(("#",), ("noop",))],
        runtime.relay_options(batch_size=batch, name="bench-scale"),
    )
    sink.relay = relay
    started = time.perf_counter()
    await relay.run(drain=True)
    return sink.count / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--done", default="100000,1000000", help="done rows retained")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="pending rows (0: skip)")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    scenarios = [("empty table", 0, args.events)]
    scenarios += [(f"{int(n):,} done retained", int(n), args.events) for n in args.done.split(",")]
    if args.backlog:
        scenarios.append((f"{args.backlog:,} pending backlog", 0, args.backlog))
    rows = []
    with _common.server(args.database_url) as server_url, _common.fresh_database(server_url) as url:
        print(_common.machine(url), flush=True)
        for name, done, pending in scenarios:
            _common.fill(url, pending, done=done)
            claim = asyncio.run(claim_ms(url))
            rate = asyncio.run(throughput(url, args.events, args.batch))
            rows.append((name, claim, rate))
            print(f"  {name}: claim {claim:.2f} ms, {rate:,.0f} events/s", flush=True)
    base = rows[0][2]
    print(
        f"\n{'scenario':<28} {'claim 100 ms':>12} {'events/s':>9} {'vs empty':>9}"
        f"   ({args.events:,} events moved, batch {args.batch})"
    )
    for name, claim, rate in rows:
        print(f"{name:<28} {claim:>12.2f} {rate:>9,.0f} {rate / base - 1:>+9.0%}")
    worst = min(rate for _, _, rate in rows) / base - 1
    print(
        f"target within 20% of the empty table: {'met' if worst >= -0.2 else 'MISSED'} "
        f"(worst {worst:+.0%})"
    )
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
