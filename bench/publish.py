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

Without ``--database-url`` an embedded server is started in a temporary directory. Either way
the benchmark creates a fresh database, migrates it, and drops it at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
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

TARGET_OVERHEAD = 0.25


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


def profile(makers: Makers, scenario: Scenario, mode: str) -> str:
    profiler = cProfile.Profile()
    for t in range(scenario.transactions):
        profiler.runcall(MODES[mode], makers, t, scenario.per_transaction)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to create the benchmark database on")
    parser.add_argument("--single", type=int, default=10_000, help="single-event transactions")
    parser.add_argument("--batches", type=int, default=100, help="transactions of a batch")
    parser.add_argument("--batch-size", type=int, default=1_000, help="events per batch")
    parser.add_argument(
        "--profile",
        choices=list(MODES),
        help="instead of timing, profile this mode (cProfile, by cumulative time)",
    )
    parser.add_argument(
        "--profile-batch",
        action="store_true",
        help="with --profile: profile the batch scenario instead of the single-event one",
    )
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
                print(profile(makers, scenarios[1 if args.profile_batch else 0], args.profile))
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
    single = {mode: statistics.median(times) for mode, times in results[0][1].items()}
    worst = max(single[mode] for mode in EVENT_MODES) / single[BASELINE] - 1
    verdict = "met" if worst <= TARGET_OVERHEAD else "missed"
    print(
        f"\ntarget: an event adds at most {TARGET_OVERHEAD:.0%} to a one-row transaction: "
        f"{verdict} (worst {worst:+.1%})"
    )
    print("reproduce: " + shlex.join([sys.executable, *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
