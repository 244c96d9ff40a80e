"""Fan-out: each event to 1, 3 and 10 no-op sinks, all subscribed to every topic.

For each sink count the table is filled with ``--events`` pending events and one relay
(``Relay.run(drain=True)``, batch ``--batch``) drains it in this process. Prints events/s
and deliveries/s (events x sinks).

    .venv/bin/python bench/fanout.py [--database-url URL] [--events 20000] [--sinks 1,3,10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence

import _common

from outbox import runtime
from outbox.relay import Relay
from outbox.routing import Subscription


async def drain(url: str, sinks: int, batch: int) -> float:
    names = [f"noop{n}" for n in range(sinks)]
    relay = Relay(
        url,
        {name: _common.NoopSink() for name in names},
        [Subscription(("#",), tuple(names))],
        runtime.relay_options(batch_size=batch, name="bench-fanout"),
    )
    started = time.perf_counter()
    await relay.run(drain=True)
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--sinks", default="1,3,10")
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args(argv)
    rows = []
    with _common.server(args.database_url) as server_url, _common.fresh_database(server_url) as url:
        print(_common.machine(url), flush=True)
        for sinks in (int(n) for n in args.sinks.split(",")):
            _common.fill(url, args.events)
            seconds = asyncio.run(drain(url, sinks, args.batch))
            left = args.events - _common.count_status(url, "done")
            if left:
                raise SystemExit(f"{sinks} sinks: {left} events not done")
            rows.append((sinks, args.events / seconds, args.events * sinks / seconds))
    print(
        f"\n{'sinks':>5} {'events/s':>10} {'deliveries/s':>13}   ({args.events:,} events, "
        f"batch {args.batch})"
    )
    for sinks, events, deliveries in rows:
        print(f"{sinks:>5} {events:>10,.0f} {deliveries:>13,.0f}")
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
