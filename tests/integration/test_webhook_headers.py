"""What a webhook receiver gets, end to end: the relay delivers over HTTP on 127.0.0.1 to the
receiver example that docs/sinks/webhook.md shows (docs/examples/webhook_receiver.py, loaded
from its file, so that the page, the file and this test cannot drift apart). The event's
headers travel on the request; the sink's own headers always win."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import importlib.util
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

import outbox
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "webhook_receiver.py"
PAGE = ROOT / "docs" / "sinks" / "webhook.md"
DEADLINE = 20.0
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_receiver_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclasses.dataclass
class Running:
    url: str
    received: list[tuple[dict[str, Any], Mapping[str, str]]]
    fail_next: list[bool]


@pytest.fixture
def example_receiver() -> Iterator[Running]:
    """The documented receiver, verifying with SECRET, recording what its handler gets."""
    example = load_example()
    running = Running("", [], [])

    def handle(event: dict[str, Any], headers: Mapping[str, str]) -> None:
        if running.fail_next and running.fail_next.pop():
            raise RuntimeError("the application failed")
        running.received.append((event, headers))

    server = example.make_server(SECRET, handle, port=0)
    running.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/outbox"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield running
    server.shutdown()
    server.server_close()


def _relay(database_url: str, url: str, **options: Any) -> Relay:
    settings = {
        "billing": SinkSettings(
            type="webhook", url=url, secret=SECRET, allowed_networks=["127.0.0.1/32"], **options
        )
    }
    sinks = build_sinks(settings, sink_types(make_plugin_manager(entry_points=False)))
    relay = relay_options(
        poll_interval=0.05,
        maintenance_interval=0.1,
        lease_seconds=10,
        delivery_timeout=5,
        retry=dataclasses.replace(
            relay_options().retry, max_attempts=5, base_seconds=0.01, cap_seconds=0.05, jitter=0
        ),
    )
    return Relay(database_url, sinks, [Subscription(("order.#",), ("billing",))], relay)


def _status(database_url: str, event_id: int) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT status FROM outbox_events WHERE id = %s", [event_id]).fetchone()
    assert row is not None
    return str(row[0])


async def _deliver(relay: Relay, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + DEADLINE
        while not done():
            assert time.monotonic() < deadline, "timed out waiting for the delivery"
            await asyncio.sleep(0.02)
    finally:
        relay.stop()
        await task


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_the_documented_receiver_verifies_a_real_delivery(
    database_url: str, example_receiver: Running
) -> None:
    with psycopg.connect(database_url) as conn:
        event = outbox.publish(
            conn,
            "order.paid",
            {"order_id": 7, "note": "café"},
            key="order-7",
            headers={"X-Request-Id": "req-42", "traceparent": TRACEPARENT},
        )
    event_id = event.id or 0
    example_receiver.fail_next.append(True)  # the first attempt fails in the application
    relay = _relay(database_url, example_receiver.url)
    await _deliver(relay, lambda: _status(database_url, event_id) == "done")

    [(body, headers)] = example_receiver.received  # verified, handled once, after a retry
    assert body["id"] == str(event_id) == headers["webhook-id"]
    assert body["type"] == "order.paid"
    assert body["data"] == {"order_id": 7, "note": "café"}
    assert body["key"] == "order-7"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["timestamp"])
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "req-42"
    assert headers["traceparent"] == TRACEPARENT


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_the_documented_receiver_refuses_forged_and_stale_requests(
    example_receiver: Running,
) -> None:
    example = load_example()
    body = b'{"type":"order.paid","timestamp":"2026-01-01T00:00:00Z","data":{},"id":"9","key":null}'
    now = int(time.time())
    key = example.signing_key(SECRET)

    def signed(timestamp: int, content: bytes) -> dict[str, str]:
        import hashlib
        import hmac

        digest = hmac.digest(key, f"9.{timestamp}.".encode() + content, hashlib.sha256)
        return {
            "content-type": "application/json",
            "webhook-id": "9",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        }

    url = example_receiver.url
    assert _post(url, body.replace(b"{}", b'{"x":1}'), signed(now, body)) == 401  # tampered
    assert _post(url, body, signed(now - 3600, body)) == 401  # stale
    assert _post(url, body, {**signed(now, body), "webhook-signature": "v1,AAAA"}) == 401
    assert example_receiver.received == []
    assert _post(url, body, signed(now, body)) == 204
    assert _post(url, body, signed(now, body)) == 204  # a repeat is answered, not handled
    assert len(example_receiver.received) == 1


async def test_event_headers_travel_and_the_sinks_own_headers_win(
    database_url: str, example_receiver: Running, caplog: pytest.LogCaptureFixture
) -> None:
    given = {
        "X-Tenant": "from-the-event",  # the sink's configured x-tenant wins
        "x-correlation-id": "c-1",
        "Idempotency-Key": "order-7-paid",
        "webhook-id": "forged",
        "Webhook-Signature": "v1,forged",
        "webhook-timestamp": "1",
        "content-type": "text/plain",
        "Content-Length": "1",
        "content-encoding": "gzip",
        "transfer-encoding": "chunked",
        "host": "evil.example",
        "connection": "close",
        "accept-encoding": "gzip",
        "user-agent": "forged",
        "x-padded": "  kept  ",
        "x bad name": "dropped",
        "x-not-ascii": "café",
        "x-control": "a\x7fb",
    }
    with psycopg.connect(database_url) as conn:
        event = outbox.publish(conn, "order.paid", {"n": 1}, headers=given)
    event_id = event.id or 0
    relay = _relay(database_url, example_receiver.url, headers={"x-tenant": "configured"})
    await _deliver(relay, lambda: _status(database_url, event_id) == "done")

    [(_, headers)] = example_receiver.received  # the receiver verified the signature
    assert headers["x-tenant"] == "configured"
    assert headers["x-correlation-id"] == "c-1"
    assert headers["idempotency-key"] == "order-7-paid"
    assert headers["x-padded"] == "kept"
    assert headers["webhook-id"] == str(event_id)
    assert headers["webhook-signature"].startswith("v1,")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["content-type"] == "application/json"
    assert headers["accept-encoding"] == "identity"
    assert headers["user-agent"].startswith("outbox-relay/")
    assert headers["host"].startswith("127.0.0.1:")
    assert "content-encoding" not in headers
    assert "transfer-encoding" not in headers
    assert "x bad name" not in headers
    assert "x-not-ascii" not in headers
    assert "x-control" not in headers
    left_out = [r.getMessage() for r in caplog.records if r.name == "outbox.webhook_sink"]
    assert any("header 'x bad name'" in message for message in left_out)
    assert any("header 'x-not-ascii'" in message for message in left_out)
    assert all("café" not in message for message in left_out)  # names, never values


def test_the_page_shows_the_example_file_verbatim() -> None:
    page = PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert EXAMPLE.read_text(encoding="utf-8") in blocks
