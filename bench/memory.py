"""Relay memory: peak RSS of a relay process draining a large backlog.

The table is filled with ``--events`` pending events (one INSERT ... SELECT), then a relay
(``Relay.run(drain=True)``, no-op sink, batch 500) drains it in a child process whose RSS
this process samples with psutil every ``--sample`` seconds. Prints the first, middle and
last samples and the peak. Target: peak under 150 MB, flat rather than growing with the
backlog (last sample within 10% of the middle one).

    .venv/bin/python bench/memory.py [--database-url URL] [--events 1000000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import time
from collections.abc import Sequence

import _common
import psutil

TARGET_MB = 150.0


def relay_process(url: str, batch: int) -> None:
    from outbox import runtime
    from outbox.relay import Relay
    from outbox.routing import Subscription

    options = runtime.relay_options(batch_size=batch, name="bench-memory")
    relay = Relay(url, {"noop": _common.NoopSink()}, [Subscription(("#",), ("noop",))], options)
    asyncio.run(relay.run(drain=True))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between samples")
    args = parser.parse_args(argv)
    with _common.server(args.database_url) as server_url, _common.fresh_database(server_url) as url:
        print(_common.machine(url), flush=True)
        _common.fill(url, args.events)
        process = multiprocessing.get_context("spawn").Process(
            target=relay_process, args=(url, args.batch)
        )
        started = time.perf_counter()
        process.start()
        watched = psutil.Process(process.pid)
        samples: list[tuple[float, float]] = []
        while process.is_alive():
            try:
                rss = watched.memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                break
            samples.append((time.perf_counter() - started, rss))
            time.sleep(args.sample)
        process.join()
        seconds = time.perf_counter() - started
        left = _common.count_status(url, "pending") + _common.count_status(url, "processing")
    if left or not samples:
        raise SystemExit(f"{left} events left undone")
    peak = max(rss for _, rss in samples)
    # The first samples catch the child still importing; "first" is the first after 1 s.
    steady = [s for s in samples if s[0] >= 1.0] or samples
    first, mid, last = steady[0], steady[len(steady) // 2], steady[-1]
    print(
        f"\nrelay draining {args.events:,} events (batch {args.batch}) in {seconds:.1f} s "
        f"({args.events / seconds:,.0f} events/s)"
    )
    for name, (t, rss) in (("first", first), ("middle", mid), ("last", last)):
        print(f"  RSS {name:<6} at {t:6.1f} s: {rss:7.1f} MB")
    print(f"  RSS peak: {peak:.1f} MB over {len(samples)} samples")
    flat = last[1] <= mid[1] * 1.1
    verdict = "met" if peak < TARGET_MB and flat else "MISSED"
    print(
        f"target peak < {TARGET_MB:g} MB and flat: {verdict} (peak {peak:.1f} MB, "
        f"last/middle {last[1] / mid[1]:.2f})"
    )
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
