"""Contention: throughput of 1, 2, 4 and 8 relay processes draining one table on one server.

Each measurement fills the outbox table with the same number of events (one INSERT ...
SELECT generate_series, VACUUM ANALYZE, CHECKPOINT), then starts N processes each running
``outbox relay --drain`` through the CLI's entry point (default lease mode, default batch
size and log level (info), one ``callable`` sink that only notes the event's id), lets them go
together from a barrier and times the release to the last process's exit. Every event must
have been handled exactly once (the ids the handlers saw, counted across the processes), or
the run fails. The process counts are interleaved: each repetition runs every count, the
order reversed every other repetition; the table gives the median and the range.

Target (issue 14, target 5): with 8 relays the throughput does not fall below that of 2
relays (no contention collapse), on however few cores the machine has.

``--concurrency 1,2`` and ``--batch-size N`` run each process count with each of those
``[relay] concurrency`` values (and that batch size) instead of the defaults, interleaved
the same way (decision 14 compares concurrency 1 and 2 so).

    .venv/bin/python bench/contention.py [--database-url URL] [--events 50000] [--repeat 3]
        [--processes 1,2,4,8] [--concurrency 1,2] [--batch-size N] [--synchronous-commit off|on]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import _common

ALL_IDS = "SELECT id FROM outbox_events"


def measure(url: str, processes: int, events: int, config: Path) -> float:
    _common.fill(url, events)
    expected = _common.ids(url, ALL_IDS)
    argv = ["relay", "--drain", "--config", str(config), "--database-url", url]
    run = _common.run_processes(
        _common.cli_relay_worker, lambda _i, output: (argv, output, False), processes
    )
    _common.check_exactly_once(f"{processes} relays", expected, run.handled)
    return events / run.seconds


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=50_000, help="per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    parser.add_argument(
        "--processes", type=lambda s: [int(p) for p in s.split(",")], default=[1, 2, 4, 8]
    )
    parser.add_argument(
        "--concurrency",
        type=lambda s: [int(p) for p in s.split(",")],
        default=[None],
        help="[relay] concurrency values to compare (default: the default setting only)",
    )
    parser.add_argument("--batch-size", type=int, help="[relay] batch_size (default: default)")
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    runs = [(n, c) for n in args.processes for c in args.concurrency]
    rates: dict[tuple[int, int | None], list[float]] = {run: [] for run in runs}
    with (
        _common.server(args.database_url) as server_url,
        _common.fresh_database(server_url, synchronous_commit=args.synchronous_commit) as url,
        tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp,
    ):
        print(_common.machine(url), flush=True)
        sink = "callable (a plain def noting the id)"
        print(_common.conditions(url, log_level="info", sink=sink), flush=True)
        # Every relay setting at its default but those asked for: only the sink is ours.
        configs = {
            c: _common.relay_config(
                Path(tmp) / f"outbox-{c}.toml", batch_size=args.batch_size, concurrency=c
            )
            for c in args.concurrency
        }
        for rep in range(args.repeat):
            for processes, concurrency in runs if rep % 2 == 0 else runs[::-1]:
                rate = measure(url, processes, args.events, configs[concurrency])
                rates[processes, concurrency].append(rate)
                print(
                    f"  repetition {rep + 1}: {processes} relays, concurrency "
                    f"{concurrency or 'default'}: {rate:>9,.0f} events/s"
                )
    print(
        f"\n{args.events:,} events drained by N `outbox relay --drain` processes (lease mode, "
        f"batch size {args.batch_size or 'default'}), {args.repeat} interleaved repetitions, "
        "every event handled exactly once"
    )
    print(f"{'relays':>6} {'concurrency':>11} {'median/s':>9} {'min-max':<19}")
    for (processes, concurrency), values in rates.items():
        print(f"{processes:>6} {concurrency or 'default':>11} {_common.spread(values)}")
    if (2, None) in rates and (8, None) in rates:
        two, eight = statistics.median(rates[2, None]), statistics.median(rates[8, None])
        verdict = "met" if eight >= two else "MISSED"
        print(
            f"target 8 relays >= 2 relays (no contention collapse): {verdict} "
            f"({eight:,.0f} vs {two:,.0f} events/s, {eight / two:.2f}x, medians)"
        )
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
