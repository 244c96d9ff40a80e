"""Dashboard pages on a busy table: how long `outbox dashboard` takes to answer each page.

A fresh database is filled in SQL with ``--rows`` events (1,000,000 by default) shaped as
the relay leaves a busy table after a week, every row as the relay writes it (the columns,
the ``deliveries`` and ``errors`` documents of ``outbox/retry.py``):

* about 97% ``done``, published over the last 7 days (retention's default), settled a few
  hundred milliseconds later by both of their sinks; 2% of them after a retry (an error in
  their history); a few cancelled (``*cancelled``);
* 0.5% ``failed``, spread over the week: ``orders-api`` refused them for good or after its
  10 attempts, each with its errors; every one parks its key, and the next event of that key
  waits behind it (``pending``, never due by itself);
* about 2% ``pending`` in all: the sink ``crm``, paused 18 hours ago, holds every ``user.*``
  event since (due never by itself); ``orders-api`` answers 503 for the last 10 minutes
  (retrying, due in the next minutes); the newest 0.05% never claimed yet, the relays a few
  minutes behind;
* the batches of two relays in flight (``processing``, under lease).

Eight topics (``order.*``, ``invoice.*``, ``user.*``), three sinks and ``audit`` for every
topic; keys ``order-N``, ``invoice-N``, ``user-N`` (``invoice.paid`` unkeyed). ``outbox_sinks``
has ``crm`` paused and ``billing`` switched back on. The table is vacuumed and analysed.

Then ``outbox dashboard --database-url URL --port PORT`` runs as a user runs it (its own
process, the console script beside this Python, a configuration file naming the four sinks
and their subscriptions), and each page is requested ``--requests``
times one after the other (after 3 warm-up requests) with httpx: the overview, the events
list unfiltered and with each kind of filter, a second page through the ``before`` cursor,
one event, the sinks. Every answer must be a 200 that shows what the page is for (else the
run fails: timing error pages says nothing). The figure is the time from sending the request
to the last byte of the page, on the same machine as the server and PostgreSQL. The target
(the dashboard's issue): the overview and an events page under 200 ms (p95) with 1,000,000 rows.

    .venv/bin/python bench/dashboard.py [--database-url URL] [--rows 1000000] [--requests 30]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import _common
import httpx
import psycopg

from outbox.server_control import free_port

TARGET_MS = 200.0
WARMUP = 3
START_TIMEOUT = 60.0
FILL_CHUNK = 250_000

# Shares of the fill (of --rows): the newest events not claimed yet, and the relays' batches
# in flight just before them (two relays, batch 100, at a million rows).
UNROUTED_SHARE = 0.0005
PROCESSING_SHARE = 0.0002
CRM_PAUSED_HOURS = 18
ORDERS_API_OUTAGE_MINUTES = 10
RELAYS = ("worker-1:4121:3fa9c2", "worker-2:3877:b01e5d")
HELD_UNTIL = "9999-12-31T00:00:00+00:00"  # outbox.retry.HELD_UNTIL, as the relay writes it

# One chunk of the fill: events lo..hi of n_rows, the oldest first (ids follow n in a fresh
# table). Every choice is a function of n, so that a fill is the same on every run: b (0-9999)
# picks the row's fate, t (0-99) its topic, and n / 8 its key, so that each key's events come
# together in time. The kinds, in order of precedence:
#   unrouted    the newest events: pending, never claimed (deliveries '{}')
#   processing  just before: claimed, under lease by one of two relays
#   failed      order.* events, 1 key in 8 at most: orders-api refused them
#   held        user.* events since crm was paused: pending, crm waiting for a resume
#   retrying    order.* events of the orders-api outage: pending, due in the next minutes
#   cancelled   never went out: done with a '*cancelled' entry
#   retried     done, orders-api (or billing, crm) delivered at the second attempt
#   done        delivered to both sinks at the first attempt
FILL = """
INSERT INTO outbox_events (topic, key, payload, status, attempts, process_at, locked_by,
                           locked_until, lease_token, deliveries, errors, last_error,
                           created_at, done_at)
SELECT r.topic, r.key, r.payload, r.status, r.attempts, r.process_at, r.locked_by,
       r.locked_until, r.lease_token, r.deliveries, r.errors, r.last_error,
       r.created_at, r.done_at
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS n
CROSS JOIN LATERAL (SELECT
    abs(hashint8(n)) %% 10000 AS b,
    abs(hashint8(n + 1000000007)) %% 100 AS t,
    %(now)s::timestamptz - (%(rows)s - n) * %(step)s::interval AS created_at) AS h
CROSS JOIN LATERAL (SELECT
    CASE WHEN h.t < 65 THEN 'order' WHEN h.t < 85 THEN 'invoice' ELSE 'user' END AS grp,
    CASE WHEN h.t < 30 THEN 'order.created' WHEN h.t < 50 THEN 'order.paid'
         WHEN h.t < 60 THEN 'order.shipped' WHEN h.t < 65 THEN 'order.cancelled'
         WHEN h.t < 77 THEN 'invoice.sent' WHEN h.t < 85 THEN 'invoice.paid'
         WHEN h.t < 95 THEN 'user.signed_up' ELSE 'user.deleted' END AS topic) AS g
CROSS JOIN LATERAL (SELECT
    CASE g.grp WHEN 'order' THEN 'orders-api' WHEN 'invoice' THEN 'billing' ELSE 'crm' END
        AS sink,
    CASE WHEN n > %(rows)s - %(unrouted)s THEN 'unrouted'
         WHEN n > %(rows)s - %(unrouted)s - %(processing)s THEN 'processing'
         WHEN g.grp = 'order' AND n %% 8 = 6 AND h.b >= 9384 THEN 'failed'
         WHEN g.grp = 'user' AND h.created_at >= %(crm_paused_at)s THEN 'held'
         WHEN g.grp = 'order' AND h.created_at >= %(outage_from)s AND h.b < 3000
              THEN 'retrying'
         WHEN n %% 8 = 0 AND h.b < 40 THEN 'cancelled'
         WHEN h.b >= 9000 AND h.b < 9200 THEN 'retried'
         ELSE 'done' END AS kind,
    h.created_at + (50 + h.b %% 400) * interval '1 millisecond' AS settled_at,
    h.b %% 2 = 0 AS permanent) AS k
CROSS JOIN LATERAL (SELECT
    CASE k.permanent
        WHEN true THEN 'PermanentError: HTTP 422 from orders-api: order '
                       || (n / 8) || ' is unknown'
        ELSE 'RetryableError: HTTP 503 from orders-api: upstream unavailable' END
        AS failure,
    'RetryableError: HTTP 503 from ' || k.sink || ': upstream unavailable' AS outage,
    jsonb_build_object('status', 'delivered', 'attempts', 1,
                       'delivered_at', to_char(k.settled_at AT TIME ZONE 'UTC', %(iso)s),
                       'last_error', NULL) AS delivered,
    %(now)s::timestamptz + (h.b %% 300) * interval '1 second' AS not_before) AS m
CROSS JOIN LATERAL (SELECT
    g.topic,
    CASE WHEN g.topic = 'invoice.paid' THEN NULL ELSE g.grp || '-' || (n / 8) END AS key,
    jsonb_build_object(
        g.grp || '_id', g.grp || '-' || (n / 8),
        'customer_id', 'cust-' || (n %% 50000),
        'amount', jsonb_build_object('value', h.b * 7 + 99, 'currency', 'EUR'),
        'lines', jsonb_build_array(
            jsonb_build_object('sku', 'SKU-' || (h.b %% 97), 'qty', 1 + h.b %% 3),
            jsonb_build_object('sku', 'SKU-' || (h.t %% 13), 'qty', 1)),
        'source', 'checkout-service') AS payload,
    CASE k.kind WHEN 'unrouted' THEN 'pending' WHEN 'held' THEN 'pending'
                WHEN 'retrying' THEN 'pending' WHEN 'cancelled' THEN 'done'
                WHEN 'retried' THEN 'done' ELSE k.kind END AS status,
    CASE k.kind WHEN 'unrouted' THEN 0 WHEN 'cancelled' THEN 0 WHEN 'retrying' THEN 2
                WHEN 'retried' THEN 2
                WHEN 'failed' THEN CASE WHEN k.permanent THEN 1 ELSE 10 END
                ELSE 1 END AS attempts,
    CASE k.kind WHEN 'held' THEN %(held_at)s::timestamptz WHEN 'retrying' THEN m.not_before
                WHEN 'failed' THEN h.created_at + CASE WHEN k.permanent THEN interval '0'
                                                       ELSE interval '256 seconds' END
                ELSE h.created_at END AS process_at,
    CASE WHEN k.kind = 'processing' THEN (ARRAY[%(relay1)s, %(relay2)s])[1 + n %% 2] END
        AS locked_by,
    CASE WHEN k.kind = 'processing'
         THEN %(now)s::timestamptz + (120 + h.b %% 60) * interval '1 second' END
        AS locked_until,
    CASE WHEN k.kind = 'processing' THEN gen_random_uuid() END AS lease_token,
    CASE k.kind
        WHEN 'unrouted' THEN '{}'::jsonb
        WHEN 'processing' THEN '{}'::jsonb
        WHEN 'done' THEN jsonb_build_object(k.sink, m.delivered, 'audit', m.delivered)
        WHEN 'retried' THEN jsonb_build_object(
            k.sink, m.delivered || jsonb_build_object(
                'attempts', 2, 'delivered_at',
                to_char((k.settled_at + interval '1 second') AT TIME ZONE 'UTC', %(iso)s)),
            'audit', m.delivered)
        WHEN 'failed' THEN jsonb_build_object(
            k.sink, jsonb_build_object('status', 'failed',
                                       'attempts', CASE WHEN k.permanent THEN 1 ELSE 10 END,
                                       'last_error', m.failure),
            'audit', m.delivered)
        WHEN 'held' THEN jsonb_build_object(
            'audit', m.delivered,
            k.sink, jsonb_build_object('attempts', 0, 'status', 'waiting',
                                       'until', %(held_until)s::text))
        WHEN 'retrying' THEN jsonb_build_object(
            'audit', m.delivered,
            k.sink, jsonb_build_object('attempts', 2, 'status', 'retrying',
                                       'not_before', to_char(m.not_before AT TIME ZONE 'UTC',
                                                             %(iso)s),
                                       'last_error', m.outage))
        WHEN 'cancelled' THEN jsonb_build_object('*cancelled', jsonb_build_object(
            'status', 'cancelled', 'by', 'alice',
            'at', to_char((h.created_at + interval '20 seconds') AT TIME ZONE 'UTC', %(iso)s),
            'reason', 'published twice'))
    END AS deliveries,
    CASE WHEN k.kind IN ('retried', 'retrying', 'failed') THEN (
        SELECT jsonb_agg(jsonb_build_object(
                   'at', to_char((k.settled_at + (2 ^ (a - 1) - 1) * interval '1 second')
                                 AT TIME ZONE 'UTC', %(iso)s),
                   'sink', k.sink, 'attempt', a,
                   'error', CASE WHEN k.kind = 'failed' THEN m.failure ELSE m.outage END)
                   ORDER BY a)
        FROM generate_series(1, CASE k.kind WHEN 'retried' THEN 1 WHEN 'retrying' THEN 2
                                            WHEN 'failed' THEN CASE WHEN k.permanent THEN 1
                                                                    ELSE 10 END END) AS a)
        ELSE '[]'::jsonb END AS errors,
    CASE k.kind WHEN 'failed' THEN m.failure WHEN 'retrying' THEN m.outage END AS last_error,
    h.created_at,
    CASE WHEN k.kind IN ('done', 'retried') THEN k.settled_at
                                                 + CASE WHEN k.kind = 'retried'
                                                        THEN interval '1 second'
                                                        ELSE interval '0' END
         WHEN k.kind = 'cancelled' THEN h.created_at + interval '20 seconds'
         WHEN k.kind = 'failed' THEN h.created_at + CASE WHEN k.permanent THEN interval '0'
                                                         ELSE interval '511 seconds' END
                                      + (k.settled_at - h.created_at)
    END AS done_at) AS r
"""

# The next event of a failed event's key (decision 11) cannot have gone to the sink that
# failed: it waits behind it there, never due by itself, delivered to its other sink.
BEHIND_FAILED = """
UPDATE outbox_events AS w
SET status = 'pending', done_at = NULL, process_at = %(held_at)s::timestamptz, attempts = 1,
    deliveries = w.deliveries || jsonb_build_object(f.sink, jsonb_build_object(
        'attempts', 0, 'status', 'waiting', 'until', %(held_until)s::text,
        'since', to_char(w.created_at AT TIME ZONE 'UTC', %(iso)s)))
FROM (SELECT e.id, e.key, d.key AS sink
      FROM outbox_events AS e CROSS JOIN LATERAL jsonb_each(e.deliveries) AS d
      WHERE e.status = 'failed' AND d.value ->> 'status' = 'failed') AS f
WHERE w.key = f.key AND w.id > f.id AND w.status = 'done' AND w.deliveries ? f.sink
  AND NOT w.deliveries ? '*cancelled'
"""

SINKS = """
INSERT INTO outbox_sinks (name, paused_at, paused_reason, updated_at)
VALUES ('crm', %(crm_paused_at)s, 'CRM migration: resume when the new API is live',
        %(crm_paused_at)s),
       ('billing', NULL, NULL, %(now)s::timestamptz - interval '3 days')
"""

# Python's datetime.isoformat() of a UTC time, as the relay writes times into deliveries.
ISO = 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'

# The configuration the relays of such a table run with, given to the dashboard (which shows
# each configured sink and offers them as filters).
CONFIG = """
[sinks.orders-api]
type = "webhook"
url = "https://orders.example.com/hooks/outbox"
secret = { env = "BENCH_WEBHOOK_SECRET" }

[sinks.billing]
type = "webhook"
url = "https://billing.example.com/hooks/outbox"
secret = { env = "BENCH_WEBHOOK_SECRET" }

[sinks.crm]
type = "webhook"
url = "https://crm.example.com/hooks/outbox"
secret = { env = "BENCH_WEBHOOK_SECRET" }

[sinks.audit]
type = "postgres"
schema = "audit"
table = "events"

[[subscriptions]]
topics = ["order.*"]
sinks = ["orders-api"]

[[subscriptions]]
topics = ["invoice.*"]
sinks = ["billing"]

[[subscriptions]]
topics = ["user.*"]
sinks = ["crm"]

[[subscriptions]]
topics = ["#"]
sinks = ["audit"]
"""

COUNTS = """
SELECT CASE WHEN deliveries ? '*cancelled' THEN 'cancelled' ELSE status END, count(*)
FROM outbox_events GROUP BY 1 ORDER BY 2 DESC
"""


@dataclasses.dataclass(frozen=True)
class Fill:
    rows: int
    seconds: float
    counts: dict[str, int]
    table_bytes: int
    total_bytes: int


def fill(url: str, rows: int) -> Fill:
    """``rows`` events shaped as described above, in a few statements, vacuumed, analysed."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        now = conn.execute("SELECT date_trunc('second', now())").fetchone()
        assert now is not None
        params: dict[str, Any] = {
            "now": now[0],
            "rows": rows,
            "step": dt.timedelta(days=7) / rows,
            "unrouted": max(1, round(rows * UNROUTED_SHARE)),
            "processing": max(1, round(rows * PROCESSING_SHARE)),
            "crm_paused_at": now[0] - dt.timedelta(hours=CRM_PAUSED_HOURS),
            "outage_from": now[0] - dt.timedelta(minutes=ORDERS_API_OUTAGE_MINUTES),
            "relay1": RELAYS[0],
            "relay2": RELAYS[1],
            "held_until": HELD_UNTIL,
            "held_at": dt.datetime.fromisoformat(HELD_UNTIL),
            "iso": ISO,
        }
        for lo in range(1, rows + 1, FILL_CHUNK):
            conn.execute(FILL, {**params, "lo": lo, "hi": min(rows, lo + FILL_CHUNK - 1)})
        conn.execute(BEHIND_FAILED, params)
        conn.execute(SINKS, params)
        _common.checkpoint(conn, "outbox_events")
        counts = {str(s): int(c) for s, c in conn.execute(COUNTS).fetchall()}
        sizes = conn.execute(
            "SELECT pg_table_size('outbox_events'), pg_total_relation_size('outbox_events')"
        ).fetchone()
        assert sizes is not None
    return Fill(rows, time.perf_counter() - started, counts, int(sizes[0]), int(sizes[1]))


# -- the pages --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Page:
    label: str
    path: str
    shows: tuple[str, ...] = ()
    """Texts the page must contain to count as the page, not an empty or an error one."""
    listed: tuple[int, ...] | None = None
    """For an events page: the ids it must list, in order (read here with SQL of our own)."""


# The events a listing page must show: its filter in plain SQL, newest first, one page.
LISTED = "SELECT id FROM outbox_events WHERE {where} ORDER BY id DESC LIMIT 50"
EVENT_ROW = re.compile(r'data-event="(\d+)"')


def pages(url: str) -> list[Page]:
    """The pages to time, with what each must show, from the filled table."""
    with psycopg.connect(url, autocommit=True) as conn:

        def listed(where: str, *params: object) -> tuple[int, ...]:
            rows = conn.execute(LISTED.format(where=where).encode(), params).fetchall()
            return tuple(int(row[0]) for row in rows)

        newest = listed("true")[0]
        middle = newest // 2
        event = conn.execute(
            "SELECT id, topic, key FROM outbox_events "
            "WHERE id >= %s AND status = 'failed' ORDER BY id LIMIT 1",
            (middle,),
        ).fetchone()
        assert event is not None
        return [
            Page("overview", "/", shows=("order.created", "user.signed_up", "orders-api", "crm")),
            Page("events", "/events", listed=listed("true")),
            Page(
                "events ?status=failed",
                "/events?status=failed",
                listed=listed("status = 'failed'"),
            ),
            Page(
                "events ?topic=order.*",
                "/events?topic=order.*",
                listed=listed("topic LIKE 'order.%%'"),
            ),
            Page(
                "events ?key=order-123",
                "/events?key=order-123",
                listed=listed("key = 'order-123'"),
            ),
            Page(
                "events ?status=pending&sink=audit",
                "/events?status=pending&sink=audit",
                listed=listed("status = 'pending' AND deliveries ? 'audit'"),
            ),
            Page(
                f"events ?before={middle} (page 2)",
                f"/events?before={middle}",
                listed=listed("id < %s", middle),
            ),
            Page(
                "event /events/ID",
                f"/events/{event[0]}",
                shows=(str(event[1]), str(event[2]), "orders-api"),
            ),
            Page("sinks", "/sinks", shows=("orders-api", "billing", "crm", "audit")),
        ]


def check(response: httpx.Response, page: Page) -> None:
    """A 200 that shows what the page is for; else the run stops."""
    body = response.text
    if response.status_code != 200:
        raise SystemExit(f"{page.path}: HTTP {response.status_code}: {body[:500]}")
    missing = [text for text in page.shows if text not in body]
    if missing:
        raise SystemExit(f"{page.path}: the page does not show {missing}: {body[:500]}")
    if page.listed is not None:
        shown = tuple(int(found) for found in EVENT_ROW.findall(body))
        if not page.listed or shown != page.listed:
            raise SystemExit(
                f"{page.path}: lists {len(shown)} events {shown[:3]}..., expected "
                f"{len(page.listed)} {page.listed[:3]}... (rows marked data-event)"
            )


def time_page(client: httpx.Client, page: Page, requests: int) -> list[float]:
    """Milliseconds per request, after the warm-up; each answer checked."""
    timings = []
    for i in range(WARMUP + requests):
        started = time.perf_counter()
        response = client.get(page.path)
        elapsed = (time.perf_counter() - started) * 1000
        check(response, page)
        if i >= WARMUP:
            timings.append(elapsed)
    return timings


# -- the server -------------------------------------------------------------------------------


@contextlib.contextmanager
def dashboard(url: str, workdir: Path) -> Iterator[str]:
    """``outbox dashboard`` on a free port, as a user starts it, with :data:`CONFIG`; its base
    URL once it answers. Stopped on the way out, whatever happens (terminate, then kill)."""
    port = free_port()
    config, log = workdir / "outbox.toml", workdir / "dashboard.log"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).parent / "outbox"),
        "dashboard",
        "--config",
        str(config),
        "--database-url",
        url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    # The webhook sinks' signing secret, read from the environment as a user keeps it.
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    environment = {**os.environ, "BENCH_WEBHOOK_SECRET": secret}
    with log.open("w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment
        )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, base, log)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"outbox dashboard exited with {process.returncode}: {_tail(log)}")
        with contextlib.suppress(httpx.TransportError):
            httpx.get(base + "/static/dashboard.css", timeout=2.0)
            return
        time.sleep(0.2)
    raise SystemExit(f"outbox dashboard did not answer in {START_TIMEOUT:g} s: {_tail(log)}")


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text().splitlines()[-20:])
    return ""


# -- the report -------------------------------------------------------------------------------


def _megabytes(size: int) -> str:
    return f"{size / 1024 / 1024:,.0f} MB"


def report(results: Sequence[tuple[Page, list[float]]], filled: Fill, requests: int) -> bool:
    """Print the table; whether every page met the target."""
    width = max(len(page.label) for page, _ in results)
    print(
        f"\ndashboard pages, {filled.rows:,} events in the table, {requests} requests each "
        f"(after {WARMUP} warm-up), one at a time"
    )
    print(f"{'page':<{width}} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  p95 < {TARGET_MS:g} ms")
    all_met = True
    for page, timings in results:
        figures = _common.percentiles(timings)
        met = figures["p95"] < TARGET_MS
        all_met = all_met and met
        print(
            f"{page.label:<{width}} {figures['p50']:>8.1f} {figures['p95']:>8.1f} "
            f"{figures['max']:>8.1f}  {'yes' if met else 'NO'}"
        )
    counts = ", ".join(f"{status} {count:,}" for status, count in filled.counts.items())
    print(f"\nrows: {counts} (cancelled: done with a '*cancelled' entry)")
    print(
        f"table {_megabytes(filled.table_bytes)}, with indexes {_megabytes(filled.total_bytes)}; "
        f"filled in {filled.seconds:.0f} s"
    )
    return all_met


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a server to use instead of an embedded one")
    parser.add_argument("--rows", type=int, default=1_000_000, help="events in the table")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    args = parser.parse_args(argv)
    if args.rows < 10_000:
        parser.error("--rows: at least 10000 (the fill's shares need them)")
    with _common.server(args.database_url) as server_url, _common.fresh_database(server_url) as url:
        print(_common.machine(url), flush=True)
        print(f"  filling {args.rows:,} events ...", flush=True)
        filled = fill(url, args.rows)
        results: list[tuple[Page, list[float]]] = []
        with (
            tempfile.TemporaryDirectory(prefix="outbox-bench-") as tmp,
            dashboard(url, Path(tmp)) as base,
            httpx.Client(base_url=base, timeout=30.0) as client,
        ):
            for page in pages(url):
                results.append((page, time_page(client, page, args.requests)))
                print(f"  {page.label}: done", flush=True)
        met = report(results, filled, args.requests)
        print(
            f"PostgreSQL {_common.server_version(url)}, its default settings unless the server "
            "has others; the dashboard, PostgreSQL and this client on the same cores"
        )
    verdict = "met" if met else "missed"
    print(f"target overview and events pages p95 < {TARGET_MS:g} ms: {verdict}")
    print(_common.reproduce())
    return 0


if __name__ == "__main__":
    sys.exit(main())
