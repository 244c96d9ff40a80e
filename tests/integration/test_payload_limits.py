"""Whatever publish() accepts, a real relay delivers: the deepest and the largest payload
publish() accepts reach a callable sink, a webhook sink (a real HTTP server on 127.0.0.1)
and a postgres sink intact; one level deeper is refused at publish time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest

import outbox
from outbox._validation import DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_DEPTH
from outbox.callable_sink import CallableSink
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings
from outbox.sinks import Event

DEADLINE = 60.0


def nested(levels: int, kind: str) -> Any:
    payload: Any = "ünïcode ✓"
    for _ in range(levels):
        payload = [payload] if kind == "list" else {"k": payload}
    return payload


def largest() -> dict[str, str]:
    """A payload whose serialised form is exactly the default cap, non-ASCII included."""
    head = "ü✓" * 1000  # 5 bytes each in UTF-8
    room = DEFAULT_MAX_PAYLOAD_BYTES - len(b'{"blob":""}') - len(head.encode())
    payload = {"blob": head + "x" * room}
    encoded = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert len(encoded) == DEFAULT_MAX_PAYLOAD_BYTES
    return payload


class Receiver:
    """Answers 204 to every POST and keeps the decoded bodies."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.bodies.append(json.loads(body))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    thread.join()


def test_one_level_deeper_than_the_limit_is_refused(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        for kind in ("list", "dict"):
            with pytest.raises(outbox.PublishError, match=f"at most {MAX_PAYLOAD_DEPTH} levels"):
                outbox.publish(conn, "order.paid", nested(MAX_PAYLOAD_DEPTH + 1, kind))
        count = conn.execute("SELECT count(*) FROM outbox_events").fetchone()
    assert count == (0,)


async def test_the_deepest_and_largest_payloads_reach_every_sink(
    database_url: str, receiver: Receiver
) -> None:
    payloads = {
        "deep-list": nested(MAX_PAYLOAD_DEPTH, "list"),
        "deep-object": nested(MAX_PAYLOAD_DEPTH, "dict"),
        "largest": largest(),
    }
    with psycopg.connect(database_url) as conn:
        ids = {
            outbox.publish(conn, "order.paid", payload, key=name).id: name
            for name, payload in payloads.items()
        }

    called: dict[str, Any] = {}

    async def record(event: Event) -> None:
        assert event.key is not None
        called[event.key] = event.payload

    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    sinks = build_sinks(
        {
            "hooks": SinkSettings(
                type="webhook", url=receiver.url, secret=secret, allowed_networks=["127.0.0.1/32"]
            ),
            "audit": SinkSettings(type="postgres", schema="audit", table="events"),
        },
        sink_types(make_plugin_manager(entry_points=False)),
    )
    sinks["function"] = CallableSink(record)
    options = relay_options(
        poll_interval=0.05, maintenance_interval=0.1, lease_seconds=30, delivery_timeout=20
    )
    relay = Relay(database_url, sinks, [Subscription(("order.#",), tuple(sinks))], options)
    await asyncio.wait_for(relay.run(drain=True), DEADLINE)

    with psycopg.connect(database_url) as conn:
        statuses = conn.execute("SELECT status, count(*) FROM outbox_events GROUP BY 1").fetchall()
        copied = dict(conn.execute("SELECT key, payload FROM audit.events").fetchall())
    assert statuses == [("done", 3)]
    assert called == payloads
    assert {ids[int(body["id"])]: body["data"] for body in receiver.bodies} == payloads
    assert len(receiver.bodies) == 3
    assert copied == payloads
