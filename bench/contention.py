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

    .venv/bin/python bench/contention.py [--database-url URL] [--events 50000] [--repeat 3]
        [--processes 1,2,4,8] [--synchronous-commit off|on]
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
    parser.add_argument("--synchronous-commit", choices=["on", "off"], default="off")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    rates: dict[int, list[float]] = {n: [] for n in args.processes}
    with (
        _common.server(args.database_url) as server_url,
        _common.fresh_database(server_url, synchronous_commit=args.synchronous_commit) as url,
        tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp,
    ):
        print(_common.machine(url), flush=True)
        sink = "callable (a plain def noting the id)"
        print(_common.conditions(url, log_level="info", sink=sink), flush=True)
        # Every relay setting at its default: only the sink is the benchmark's.
        config = _common.relay_config(Path(tmp) / "outbox.toml")
        for rep in range(args.repeat):
            order = args.processes if rep % 2 == 0 else args.processes[::-1]
            for processes in order:
                rate = measure(url, processes, args.events, config)
                rates[processes].append(rate)
                print(f"  repetition {rep + 1}: {processes} relays {rate:>9,.0f} events/s")
    print(
        f"\n{args.events:,} events drained by N `outbox relay --drain` processes (default "
        f"settings: lease mode), {args.repeat} interleaved repetitions, every event handled "
        "exactly once"
    )
    print(f"{'relays':>6} {'median/s':>9} {'min-max':<19}")
    for processes, values in rates.items():
        print(f"{processes:>6} {_common.spread(values)}")
    if 2 in rates and 8 in rates:
        two, eight = statistics.median(rates[2]), statistics.median(rates[8])
        verdict = "met" if eight >= two else "MISSED"
        print(
            f"target 8 relays >= 2 relays (no contention collapse): {verdict} "
            f"({eight:,.0f} vs {two:,.0f} events/s, {eight / two:.2f}x, medians)"
        )
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
