"""``outbox demo``: the whole product, end to end, on one machine.

An embedded PostgreSQL (unless ``--database-url`` is given), the migrations, a small
SQLAlchemy app that commits orders and records events through the session hook (and rolls
one transaction back), and a relay fanning the events out to three sinks: a Python
callable, a signed webhook to a receiver on 127.0.0.1 that verifies every signature, and a
table in another schema. It shows progress live and a final table per sink, and exits 0
when every event reached every sink.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from sqlalchemy import Integer, Numeric, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import outbox
from outbox import _queries, runtime
from outbox._embedded import start_embedded
from outbox._urls import libpq_url, sqlalchemy_url, with_database
from outbox.migrate import DEFAULT_SCHEMA
from outbox.settings import Settings
from outbox.sinks import Event

DEMO_DATABASE = "outbox_demo"
AUDIT_SCHEMA = "outbox_demo_audit"
_EVENTS = _queries.for_schema(DEFAULT_SCHEMA)  # where outbox.migrate() puts the tables


def default_data_dir() -> Path:
    """Where the embedded server keeps its data between runs."""
    return Path(tempfile.gettempdir()) / f"outbox-relay-demo-{os.getuid()}" / "pgdata"


class _Base(DeclarativeBase):
    pass


class Order(_Base, outbox.EventSource):
    __tablename__ = "demo_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer: Mapped[str] = mapped_column(String(100))
    total: Mapped[float] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String(20))


@dataclasses.dataclass
class _Tally:
    """What each sink received, by event id."""

    app: Counter[int] = dataclasses.field(default_factory=Counter)
    webhook: Counter[int] = dataclasses.field(default_factory=Counter)
    webhook_bad_signatures: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_tally = _Tally()


async def on_order_event(event: Event) -> None:
    """The ``callable`` sink of the demo: an in-process handler."""
    with _tally.lock:
        _tally.app[event.id] += 1


def run_demo(database_url: str | None, data_dir: Path, orders: int) -> int:
    """Run the demo; return the process exit code."""
    url = _prepare_database(database_url, data_dir)
    embedded_dir = None if database_url else data_dir
    outbox.migrate(url)
    with psycopg.connect(url) as conn:
        row = conn.execute(_EVENTS["demo_next_id"]).fetchone()
        first_id = int(row[0]) if row else 1
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with _receiver(secret) as receiver_url:
        settings = _settings(url, receiver_url, secret)
        return asyncio.run(_demo(settings, url, orders, first_id, embedded_dir))


def _prepare_database(database_url: str | None, data_dir: Path) -> str:
    if database_url:
        url = libpq_url(database_url)  # refuses a URL that cannot work before saying it
        _say(f"Using the database at {_without_password(url)}")
        return url
    _say(server_message(data_dir))
    # Left running when the demo ends, so that the commands it prints work; `outbox demo
    # --stop` stops it.
    server = start_embedded(data_dir, cleanup=None)
    database = sql.Identifier(DEMO_DATABASE)
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(_queries.render("demo_drop_database", database=database))
        conn.execute(_queries.render("demo_create_database", database=database))
    return with_database(server, DEMO_DATABASE)


def server_message(data_dir: Path) -> str:
    """What the demo is about to do with the embedded server of ``data_dir``: start a new
    one, start the one a previous run stopped, or use the one a previous run left running."""
    if (data_dir / "postmaster.pid").exists():
        return f"Using the embedded PostgreSQL already running from {data_dir}"
    if (data_dir / "PG_VERSION").exists():
        return f"Starting the embedded PostgreSQL again; its data is in {data_dir}"
    return f"Starting an embedded PostgreSQL; its data is in {data_dir}"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


async def _demo(
    settings: Settings, url: str, orders: int, first_id: int, embedded_dir: Path | None
) -> int:
    relay = runtime.build_relay(settings)
    relay_task = asyncio.create_task(relay.run())
    expected = await asyncio.to_thread(_run_app, url, orders)
    _say(
        f"The app committed {orders} orders and {len(expected)} events; "
        "one more transaction rolled back."
    )
    try:
        await _watch(url, expected, relay_task)
    finally:
        relay.stop()
        await relay_task
    return _report(url, expected, first_id, embedded_dir)


def _settings(url: str, receiver_url: str, secret: str) -> Settings:
    """Three sinks subscribed to every order event; a relay that polls and retries quickly."""
    return Settings.from_values(
        database_url=url,
        relay={"poll_interval": 0.5, "backoff_base": 0.2, "backoff_cap": 2},
        sinks={
            "app": {"type": "callable", "target": "outbox.demo:on_order_event"},
            "billing": {
                "type": "webhook",
                "url": receiver_url,
                "secret": secret,
                "allowed_networks": ["127.0.0.1/32"],
            },
            "audit": {"type": "postgres", "schema": AUDIT_SCHEMA, "table": "events"},
        },
        subscriptions=[{"topics": ["order.#"], "sinks": ["app", "billing", "audit"]}],
    )


def _run_app(url: str, orders: int) -> set[int]:
    """A small SQLAlchemy app: each order is created and confirmed in its own transaction."""
    engine = create_engine(sqlalchemy_url(url))
    try:
        _Base.metadata.create_all(engine)
        session_factory = outbox.install(sessionmaker(engine))
        ids: set[int] = set()
        for number in range(orders):
            with session_factory.begin() as session:
                order = Order(customer=f"customer-{number % 7}", total=10 + number, status="new")
                session.add(order)
                session.flush()
                key = f"order-{order.id}"
                created = order.record_event("order.created", _order_payload(order), key=key)
                order.status = "confirmed"
                confirmed = order.record_event("order.confirmed", _order_payload(order), key=key)
            ids.update(event.id for event in (created, confirmed) if event.id is not None)
        with session_factory() as session:
            order = Order(customer="nobody", total=0, status="new")
            session.add(order)
            order.record_event("order.cancelled", {"note": "rolled back: never delivered"})
            session.flush()
            session.rollback()
        return ids
    finally:
        engine.dispose()


def _order_payload(order: Order) -> dict[str, Any]:
    return {
        "order_id": order.id,
        "customer": order.customer,
        "total": str(order.total),
        "status": order.status,
    }


async def _watch(url: str, expected: set[int], relay_task: asyncio.Task[Any]) -> None:
    live = sys.stdout.isatty()
    deadline = time.monotonic() + 120
    shown = ""
    while time.monotonic() < deadline and not relay_task.done():
        counts = _delivered(url, expected)
        line = "  ".join(f"{name} {count}/{len(expected)}" for name, count in counts.items())
        if live:
            print(f"\r  delivered: {line}   ", end="", flush=True)
        elif line != shown:
            print(f"  delivered: {line}", flush=True)
        shown = line
        if all(count == len(expected) for count in counts.values()):
            break
        await asyncio.sleep(0.2)
    if live:
        print()


def _delivered(url: str, expected: set[int]) -> dict[str, int]:
    with _tally.lock:
        app = sum(1 for event_id in _tally.app if event_id in expected)
        webhook = sum(1 for event_id in _tally.webhook if event_id in expected)
    return {"app": app, "billing": webhook, "audit": len(_audit_ids(url) & expected)}


def _audit_ids(url: str) -> set[int]:
    with psycopg.connect(url) as conn:
        table = {"table": f"{AUDIT_SCHEMA}.events"}
        exists = conn.execute(_queries.render("demo_table_exists"), table).fetchone()
        if not exists or exists[0] is None:
            return set()
        return {row[0] for row in conn.execute(_audit_statement("demo_sink_table_ids"))}


@functools.cache
def _audit_statement(name: str) -> bytes:
    return _queries.render(name, target=sql.Identifier(AUDIT_SCHEMA, "events"))


def _report(url: str, expected: set[int], first_id: int, embedded_dir: Path | None) -> int:
    with psycopg.connect(url) as conn:
        since = {"first_id": first_id}
        statuses: dict[str, int] = dict(conn.execute(_EVENTS["demo_statuses"], since).fetchall())
        cancelled = conn.execute(
            _EVENTS["demo_topic_count"], {"topic": "order.cancelled", **since}
        ).fetchone()
    cancelled_count = cancelled[0] if cancelled else -1
    audit = _audit_ids(url)
    rows = [
        ("app", "callable", len(set(_tally.app) & expected), _duplicates(_tally.app)),
        ("billing", "webhook", len(set(_tally.webhook) & expected), _duplicates(_tally.webhook)),
        ("audit", "postgres", len(audit & expected), 0),
    ]
    print()
    print(f"  {'sink':<9}{'type':<10}{'delivered':>10}{'expected':>10}{'repeats':>9}")
    for name, kind, delivered, repeats in rows:
        print(f"  {name:<9}{kind:<10}{delivered:>10}{len(expected):>10}{repeats:>9}")
    print()
    print(f"  outbox_events by status: {json.dumps(statuses)}")
    verified, refused = sum(_tally.webhook.values()), _tally.webhook_bad_signatures
    print(f"  webhook signatures verified: {verified}, refused: {refused}")
    print(f"  events of the rolled-back transaction in the table: {cancelled_count}")
    ok = all(delivered == len(expected) for _, _, delivered, _ in rows)
    ok = ok and statuses.get("done", 0) == len(expected) and not _tally.webhook_bad_signatures
    ok = ok and cancelled_count == 0
    print()
    outbox_command = _outbox_command()
    for line in look_around_lines(url, outbox_command):
        print(line)
    if embedded_dir is not None:
        stop = f"{outbox_command} demo --stop{_dir_flag(embedded_dir)}"
        print(f"  The embedded server keeps running; stop it with: {stop}")
    print()
    print("  All events delivered to every sink." if ok else "  Some events were not delivered.")
    return 0 if ok else 1


def look_around_lines(url: str, outbox_command: str) -> list[str]:
    """The commands the reader can look around with: ``outbox``'s own, then the same rows
    through ``psql`` for those who have it."""
    peeks = (_EVENTS["demo_peek_events"], _audit_statement("demo_peek_sink_table"))
    return [
        "  Look at the table yourself:",
        f"    {outbox_command} events list --database-url '{url}' --limit 5",
        f"    {outbox_command} status --database-url '{url}'",
        "  or in a browser: run this, then open http://127.0.0.1:8050/",
        f"    {outbox_command} dashboard --database-url '{url}'",
        "  or, if you have psql (psql is not required: the commands above need nothing else):",
        *(f"    psql '{url}' -c '{peek.decode()}'" for peek in peeks),
    ]


def _outbox_command() -> str:
    """How the reader runs ``outbox``: as they just did (``.venv/bin/outbox`` after the
    README's quick start), else by name."""
    invoked = Path(sys.argv[0])
    if invoked.name == "outbox" and invoked.parent != Path():
        return str(invoked)
    return "outbox"


def _dir_flag(data_dir: Path) -> str:
    return "" if data_dir == default_data_dir() else f" --data-dir '{data_dir}'"


def stop_embedded(data_dir: Path) -> int:
    """Stop the demo's embedded server; return the process exit code."""
    if not (data_dir / "postmaster.pid").exists():
        _say(f"No embedded server is running in {data_dir}")
        return 0
    start_embedded(data_dir, cleanup="stop")  # this handle is the last: exiting stops it
    _say(f"Stopping the embedded server in {data_dir}")
    return 0


def _duplicates(counter: Counter[int]) -> int:
    return sum(count - 1 for count in counter.values() if count > 1)


@contextlib.contextmanager
def _receiver(secret: str) -> Iterator[str]:
    """A webhook receiver on 127.0.0.1 that verifies Standard Webhooks signatures."""
    verifier = _verifier(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            try:
                verifier(body, dict(self.headers.items()))
            except Exception:
                with _tally.lock:
                    _tally.webhook_bad_signatures += 1
                self.send_response(401)
                self.end_headers()
                return
            with _tally.lock:
                _tally.webhook[int(self.headers["webhook-id"])] += 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/orders"
    finally:
        server.shutdown()
        server.server_close()


def _verifier(secret: str) -> Any:
    try:
        from standardwebhooks import Webhook
    except ImportError:  # pragma: no cover - the demo extra installs it
        sys.exit("the demo needs the standardwebhooks package: pip install 'outbox-relay[demo]'")
    return Webhook(secret).verify


def _say(message: str) -> None:
    print(message, flush=True)
