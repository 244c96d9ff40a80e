"""What writing events costs a transaction that writes business data.

Each scenario runs the same transactions several ways: inserting only the business rows (ORM
entities); the same plus one event per row recorded on the entity and written by the session
hook's flush; the same plus ``outbox.publish()`` per row; and, as the least that writing the
event as a statement of its own would cost, the same plus one bare ``INSERT INTO
outbox_events`` (and its NOTIFY) per transaction. The session hook and ``publish()`` on a
session do better than that floor: on psycopg their events ride inside the business row's
INSERT (decision 6). The
ways take turns transaction by transaction, and each transaction is timed, so that load from
elsewhere on the machine falls on all of them alike; the overhead compares median
transaction times.

    .venv/bin/python bench/publish.py                      # embedded PostgreSQL
    .venv/bin/python bench/publish.py --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python bench/publish.py --profile            # where an event's time goes

``--profile`` times nothing: it profiles the transactions of --batch-size rows (one event per
row) of each way that writes events, with cProfile, and prints the functions that spend the
most time of their own, then the outbox's alone: the per-event Python beside the ORM's.

Without ``--database-url`` an embedded server is started in a temporary directory. Either way
the benchmark creates a fresh database, migrates it, and drops it at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import json
import os
import platform
import pstats
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import _common
import psycopg
import sqlalchemy
from sqlalchemy import String, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import outbox
from outbox._urls import sqlalchemy_url

# The most events may add to a transaction's median time (issue 14): a one-row transaction,
# and a transaction of --batch-size rows with one event per row.
TARGET_SINGLE = 0.20
TARGET_BATCH = 0.35


class Base(DeclarativeBase):
    pass


class BenchOrder(Base, outbox.EventSource):
    __tablename__ = "bench_orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    customer: Mapped[str] = mapped_column(String(40))


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    transactions: int
    per_transaction: int

    @property
    def rows(self) -> int:
        return self.transactions * self.per_transaction


@dataclasses.dataclass
class Makers:
    plain: sessionmaker[Session]  # no hook: the baseline pays nothing for the outbox
    hooked: sessionmaker[Session]  # outbox.install()
    published: sessionmaker[Session]  # given to publish(), which installs the hook on it


def business_only(makers: Makers, t: int, count: int) -> None:
    with makers.plain.begin() as session:
        session.add_all(_orders(t, count))


def with_hook(makers: Makers, t: int, count: int) -> None:
    with makers.hooked.begin() as session:
        orders = _orders(t, count)
        for n, order in enumerate(orders):
            order.record_event("order.created", _payload(t, n), key=order.customer)
        session.add_all(orders)


def with_publish(makers: Makers, t: int, count: int) -> None:
    with makers.published.begin() as session:
        orders = _orders(t, count)
        session.add_all(orders)
        for n, order in enumerate(orders):
            outbox.publish(session, "order.created", _payload(t, n), key=order.customer)


# What an outbox written as a statement of its own costs at least: one more statement, no
# validation, the table's indexes and the NOTIFY. Not an API: it writes the payload of the
# first row only.
_BARE_INSERT = text(
    "WITH written AS (INSERT INTO outbox_events (topic, key, payload) "
    "VALUES ('order.created', :key, CAST(:payload AS jsonb)) RETURNING id) "
    "SELECT pg_notify('outbox', '') FROM written"
)


def with_bare_insert(makers: Makers, t: int, count: int) -> None:
    with makers.plain.begin() as session:
        orders = _orders(t, count)
        session.add_all(orders)
        payload = json.dumps(_payload(t, 0))
        session.execute(_BARE_INSERT, {"key": orders[0].customer, "payload": payload})


def _orders(t: int, count: int) -> list[BenchOrder]:
    return [BenchOrder(status="new", customer=f"customer-{t}-{n}") for n in range(count)]


def _payload(t: int, n: int) -> dict[str, object]:
    return {"transaction": t, "n": n, "status": "new", "lines": [{"sku": "A-1", "qty": 2}]}


BASELINE = "business rows only"
MODES: dict[str, Callable[[Makers, int, int], None]] = {
    BASELINE: business_only,
    "+ events, session hook": with_hook,
    "+ events, publish()": with_publish,
    "+ 1 bare INSERT statement": with_bare_insert,
}
EVENT_MODES = ["+ events, session hook", "+ events, publish()"]


def measure(makers: Makers, scenario: Scenario) -> dict[str, list[float]]:
    """Seconds of each transaction, per mode; the modes take turns, in rotating order."""
    timings: dict[str, list[float]] = {mode: [] for mode in MODES}
    modes = list(MODES.items())
    for t in range(scenario.transactions):
        shift = t % len(modes)
        for mode, run in modes[shift:] + modes[:shift]:
            start = time.perf_counter()
            run(makers, t, scenario.per_transaction)
            timings[mode].append(time.perf_counter() - start)
    return timings


def report(scenario: Scenario, timings: dict[str, list[float]]) -> list[str]:
    baseline = statistics.median(timings[BASELINE])
    lines = []
    for mode, times in timings.items():
        median = statistics.median(times)
        rate = scenario.rows / sum(times)
        unit = "events/s" if mode in EVENT_MODES else "rows/s"
        overhead = "" if mode == BASELINE else f"{median / baseline - 1:+7.1%}"
        lines.append(
            f"{scenario.name:<20} {mode:<25} {median * 1000:9.2f} ms {rate:>10,.0f} {unit:<8} "
            f"{overhead:>8}"
        )
    return lines


def profile(makers: Makers, scenario: Scenario, mode: str, top: int) -> str:
    """Where ``mode``'s time goes: the functions with the most time of their own, all of them
    and then the outbox's alone, in microseconds per event (cProfile's overhead included)."""
    profiler = cProfile.Profile()
    for t in range(scenario.transactions):
        profiler.runcall(MODES[mode], makers, t, scenario.per_transaction)
    timings = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    rows = sorted(timings.items(), key=lambda item: -item[1][2])
    per_event = 1e6 / scenario.rows
    total = sum(timing[2] for _, timing in rows) * per_event
    lines = [
        f"{mode}, {scenario.name}: {total:.1f} us per row and event in all, profiled (waits "
        "for the server in psycopg's wait(); a garbage collection lands in whatever allocates)"
    ]
    for title, chosen in (
        ("all functions", rows),
        ("the outbox's functions", [row for row in rows if "/outbox/" in row[0][0]]),
    ):
        lines.append(f"  {title}, by own time (us per event: own, with callees; calls)")
        for (path, line, name), (_, calls, own, cumulative, _) in chosen[:top]:
            lines.append(
                f"  {own * per_event:8.2f} {cumulative * per_event:8.2f} {calls:>8,}  "
                f"{_short(path)}:{line}({name})"
            )
    return "\n".join(lines)


def _short(path: str) -> str:
    """A function's file without the machine's paths: from its package's folder on."""
    for marker in ("/site-packages/", "/outbox/", "/bench/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    return path.rsplit("/", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to create the benchmark database on")
    parser.add_argument("--single", type=int, default=10_000, help="single-event transactions")
    parser.add_argument("--batches", type=int, default=100, help="transactions of a batch")
    parser.add_argument("--batch-size", type=int, default=1_000, help="events per batch")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of timing, profile --batch-size transactions of each way that writes "
        "events (cProfile; the functions with the most time of their own)",
    )
    parser.add_argument(
        "--profile-transactions", type=int, default=10, help="with --profile: how many"
    )
    parser.add_argument("--profile-top", type=int, default=20, help="with --profile: functions")
    args = parser.parse_args(argv)

    scenarios = [
        Scenario(f"{args.single:,} x 1 row", args.single, 1),
        Scenario(f"{args.batches:,} x {args.batch_size:,} rows", args.batches, args.batch_size),
    ]
    # synchronous_commit on: a publishing transaction waits for its commit, as in production.
    with (
        _common.server(args.database_url) as server_url,
        _common.fresh_database(server_url, synchronous_commit="on") as url,
    ):
        engine = create_engine(sqlalchemy_url(url))
        try:
            Base.metadata.create_all(engine)
            makers = Makers(
                plain=sessionmaker(engine),
                hooked=outbox.install(sessionmaker(engine)),
                published=sessionmaker(engine),
            )
            measure(makers, Scenario("warm-up", 50, 10))
            if args.profile:
                profiled = Scenario(
                    f"{args.profile_transactions:,} x {args.batch_size:,} rows",
                    args.profile_transactions,
                    args.batch_size,
                )
                for mode in EVENT_MODES:
                    print(profile(makers, profiled, mode, args.profile_top) + "\n")
                return 0
            results = [(s, measure(makers, s)) for s in scenarios]
            with engine.connect() as conn:
                server_version = conn.exec_driver_sql("SHOW server_version").scalar()
        finally:
            engine.dispose()

    print(
        f"PostgreSQL {server_version} ({'embedded' if not args.database_url else 'given URL'}), "
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"psycopg {psycopg.__version__}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print(
        f"{'scenario':<20} {'each transaction writes':<25} {'median txn':>12} {'rate':>19} "
        f"{'overhead':>8}"
    )
    for scenario, timings in results:
        print("\n".join(report(scenario, timings)))
    print()
    for (scenario, timings), target in zip(results, (TARGET_SINGLE, TARGET_BATCH), strict=True):
        medians = {mode: statistics.median(times) for mode, times in timings.items()}
        worst = max(medians[mode] for mode in EVENT_MODES) / medians[BASELINE] - 1
        verdict = "met" if worst <= target else "missed"
        print(
            f"target: events add at most {target:.0%} to a transaction of "
            f"{scenario.per_transaction:,} row(s), an event each: {verdict} (worst {worst:+.1%})"
        )
    print("reproduce: " + shlex.join([sys.executable, *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
