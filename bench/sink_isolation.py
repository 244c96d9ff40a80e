"""Sink isolation: two healthy sinks, with and without a third that fails every delivery.

For each key count and each repetition, the table is filled with ``--events`` pending
events and one relay (``Relay.run()`` in this process, the relay's default options unless
told otherwise) delivers them to two healthy callable sinks, first without a failing sink,
then with a third callable sink that raises ``RetryableError`` on every delivery (the order
alternates between repetitions, so both see the same machine). The figure is events/s per
healthy sink: ``--events`` over the time from the relay's start to the last event reaching
the slower healthy sink. The relay is stopped there: the failing sink's retries would go on
for hours with the default backoff.

Checked after each run: every healthy sink received every event exactly once, in per-key
order, and the table records every event as delivered to both. The issue-12 target: with
the failing sink, at least 80% of the rate without it.

    .venv/bin/python bench/sink_isolation.py [--database-url URL] [--events 100000]
        [--keys 1000,0] [--repeat 3] [--batch 100] [--claim-mode lease|lock]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Iterable, Sequence

import _common
import psycopg

from outbox import RetryableError, runtime
from outbox.callable_sink import CallableSink
from outbox.relay import CLAIM_MODES, ClaimMode, Relay
from outbox.retry import DELIVERED
from outbox.routing import Subscription
from outbox.sinks import Event, Sink

HEALTHY = ("healthy1", "healthy2")
FAILING = "failing"
TARGET = 0.8

# Keys, when asked for, cycle so that every key has events spread over the whole table.
_DELIVERED_TO = """
SELECT count(*) FROM outbox_events WHERE deliveries -> %(sink)s ->> 'status' = %(delivered)s
"""


class Receiver:
    """A healthy sink's function: notes each event and when the last expected one came."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.ids: list[int] = []
        self.keys: list[str | None] = []
        self.last = 0.0
        self.finished = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.ids.append(event.id)
        self.keys.append(event.key)
        if len(self.ids) == self.expected:
            self.last = time.perf_counter()
            self.finished.set()

    def problems(self) -> list[str]:
        """What is wrong with what it received: missing events, duplicates, order."""
        found = []
        if len(set(self.ids)) != self.expected:
            found.append(f"{len(set(self.ids))} distinct events of {self.expected}")
        if len(self.ids) != len(set(self.ids)):
            found.append(f"{len(self.ids) - len(set(self.ids))} duplicates")
        latest: dict[str, int] = {}
        out_of_order = 0
        for event_id, key in zip(self.ids, self.keys, strict=True):
            if key is None:
                continue
            if latest.get(key, 0) > event_id:
                out_of_order += 1
            latest[key] = max(latest.get(key, 0), event_id)
        if out_of_order:
            found.append(f"{out_of_order} events before an earlier one of their key")
        return found


class Failing:
    """The broken sink's function: every delivery fails, retryably."""

    def __init__(self) -> None:
        self.attempts = 0

    async def __call__(self, event: Event) -> None:
        self.attempts += 1
        raise RetryableError("bench: this sink fails every delivery")


def _delivered_to(url: str, sink: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(_DELIVERED_TO, {"sink": sink, "delivered": DELIVERED}).fetchone()
        return int(row[0]) if row else 0


async def _deliver(
    url: str, args: argparse.Namespace, with_failing: bool
) -> tuple[float, dict[str, Receiver], int]:
    """Seconds until both healthy sinks had every event; the receivers; failing attempts."""
    receivers = {name: Receiver(args.events) for name in HEALTHY}
    failing = Failing()
    sinks: dict[str, Sink] = {name: CallableSink(r) for name, r in receivers.items()}
    if with_failing:
        sinks[FAILING] = CallableSink(failing)
    mode: ClaimMode = args.claim_mode
    relay = Relay(
        url,
        sinks,
        [Subscription(("#",), tuple(sinks))],
        runtime.relay_options(batch_size=args.batch, name="bench-isolation", claim_mode=mode),
    )
    started = time.perf_counter()
    running = asyncio.create_task(_serve(relay))
    finished = asyncio.create_task(_all_received(receivers.values()))
    try:
        await asyncio.wait([running, finished], timeout=args.timeout, return_when="FIRST_COMPLETED")
    finally:
        relay.stop()
        await running
        finished.cancel()
    if not all(r.finished.is_set() for r in receivers.values()):
        counts = ", ".join(f"{name} {len(r.ids)}" for name, r in receivers.items())
        raise SystemExit(f"healthy sinks short of {args.events} events: {counts}")
    seconds = max(r.last for r in receivers.values()) - started
    return seconds, receivers, failing.attempts


async def _serve(relay: Relay) -> None:
    await relay.run()


async def _all_received(receivers: Iterable[Receiver]) -> None:
    for receiver in receivers:
        await receiver.finished.wait()


def _run(url: str, args: argparse.Namespace, keys: int, with_failing: bool) -> tuple[float, int]:
    """Events/s per healthy sink, and the failing sink's attempts, for one run (checked)."""
    _common.fill_keyed(url, args.events, keys)
    seconds, receivers, attempts = asyncio.run(_deliver(url, args, with_failing))
    for name, receiver in receivers.items():
        problems = receiver.problems()
        recorded = _delivered_to(url, name)
        if recorded != args.events:
            problems.append(f"{recorded} of {args.events} recorded as delivered")
        if problems:
            raise SystemExit(f"{name} ({keys} keys, failing {with_failing}): {problems}")
    return args.events / seconds, attempts


def _summary(rates: Sequence[float]) -> str:
    return f"{statistics.median(rates):>8,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--keys", default="1000,0", help="ordering keys per run (0: none)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=runtime.relay_options().batch_size)
    parser.add_argument("--claim-mode", choices=CLAIM_MODES, default="lease")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run at most")
    args = parser.parse_args(argv)
    key_counts = [int(n) for n in args.keys.split(",")]
    rates: dict[tuple[int, bool], list[float]] = {}
    with _common.server(args.database_url) as server_url, _common.fresh_database(server_url) as url:
        print(_common.machine(url), flush=True)
        print(
            f"{args.events:,} events, batch {args.batch}, claim mode {args.claim_mode}; "
            "events/s per healthy sink (2 healthy sinks)"
        )
        print(
            f"{'rep':>3} {'keys':>5} {'failing sink':>13} {'events/s':>9} {'failing attempts':>17}"
        )
        for repetition in range(args.repeat):
            for keys in key_counts:
                order = (False, True) if repetition % 2 == 0 else (True, False)
                for with_failing in order:
                    rate, attempts = _run(url, args, keys, with_failing)
                    rates.setdefault((keys, with_failing), []).append(rate)
                    print(
                        f"{repetition + 1:>3} {keys:>5} {'yes' if with_failing else 'no':>13} "
                        f"{rate:>9,.0f} {attempts if with_failing else '-':>17}",
                        flush=True,
                    )
    print(f"\n{'keys':>5} {'without failing sink':>24} {'with failing sink':>24} {'ratio':>6}")
    met = True
    for keys in key_counts:
        without, with_ = rates[(keys, False)], rates[(keys, True)]
        ratio = statistics.median(with_) / statistics.median(without)
        met = met and ratio >= TARGET
        print(f"{keys:>5} {_summary(without):>24} {_summary(with_):>24} {ratio:>6.0%}")
    print("median (range) of the repetitions; ratio of the medians")
    print(f"target with >= {TARGET:.0%} of without: {'met' if met else 'missed'}")
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
