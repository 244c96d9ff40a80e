"""The relay delivering through the webhook sink to a real HTTP server on 127.0.0.1:
signatures checked by the standardwebhooks package's own verifier, retries, permanent
failures, Retry-After, and a 410 that disables the sink: its events wait until it is
enabled again."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook

import outbox
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings
from outbox.sink_switches import Switches

DEADLINE = 20.0


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Receiver:
    """Answers each request with ``answer(body, headers, count_for_this_event)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.answer: Callable[[dict[str, Any], int], tuple[int, dict[str, str]]] = (
            lambda body, count: (204, {})
        )
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.requests.append((time.monotonic(), headers, body))
                    count = sum(
                        1
                        for _, h, _ in receiver.requests
                        if h["webhook-id"] == headers["webhook-id"]
                    )
                status, extra = receiver.answer(json.loads(body), count)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def for_event(self, event_id: int) -> list[tuple[float, dict[str, str], bytes]]:
        with self._lock:
            return [r for r in self.requests if r[1]["webhook-id"] == str(event_id)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server._thread.start()
    yield server
    server._server.shutdown()
    server._server.server_close()


def _relay(database_url: str, url: str, secret: str | list[str]) -> Relay:
    settings = {
        "hooks": SinkSettings(
            type="webhook", url=url, secret=secret, allowed_networks=["127.0.0.1/32"]
        )
    }
    sinks = build_sinks(settings, sink_types(make_plugin_manager(entry_points=False)))
    options = relay_options(
        poll_interval=0.05,
        maintenance_interval=0.1,
        lease_seconds=10,
        delivery_timeout=5,
        retry=dataclasses.replace(
            relay_options().retry, max_attempts=5, base_seconds=0.01, cap_seconds=0.05, jitter=0
        ),
    )
    return Relay(database_url, sinks, [Subscription(("order.#",), ("hooks",))], options)


def _publish(database_url: str, *payloads: dict[str, Any]) -> list[int]:
    with psycopg.connect(database_url) as conn:
        return [outbox.publish(conn, "order.paid", payload).id or 0 for payload in payloads]


def _rows(database_url: str, ids: list[int]) -> dict[int, tuple[str, str | None, Any]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT id, status, last_error, deliveries FROM outbox_events WHERE id = ANY(%s)", [ids]
        ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _run_until(relay: Relay, condition: Callable[[], bool], what: str) -> None:
    task = asyncio.create_task(relay.run())
    try:
        await _until(condition, what)
    finally:
        relay.stop()
        await task


def _settled(database_url: str, ids: list[int]) -> Callable[[], bool]:
    return lambda: all(row[0] in ("done", "failed") for row in _rows(database_url, ids).values())


async def test_signatures_verify_with_both_secrets_while_rotating(
    database_url: str, receiver: Receiver
) -> None:
    old, new = _secret(), _secret()
    ids = _publish(database_url, *({"n": n, "text": "ünïcode"} for n in range(5)))
    await _run_until(
        _relay(database_url, receiver.url, [old, new]), _settled(database_url, ids), "delivery"
    )

    assert {status for status, _, _ in _rows(database_url, ids).values()} == {"done"}
    for event_id in ids:
        [(_, headers, body)] = receiver.for_event(event_id)
        for secret in (old, new):  # each secret alone verifies: receivers switch at leisure
            envelope = Webhook(secret).verify(body, headers)
            assert envelope["id"] == str(event_id)
            assert envelope["type"] == "order.paid"
        with pytest.raises(Exception, match=r"(?i)signature"):
            Webhook(_secret()).verify(body, headers)


async def test_status_answers_end_to_end(database_url: str, receiver: Receiver) -> None:
    def answer(body: dict[str, Any], count: int) -> tuple[int, dict[str, str]]:
        plan = body["data"]["plan"]
        if plan == "flaky" and count < 3:
            return 503, {}
        if plan == "slow-down" and count == 1:
            return 429, {"retry-after": "1"}
        if plan == "refuse":
            return 400, {}
        if plan == "redirect":
            return 302, {"location": "http://127.0.0.1:1/elsewhere"}
        return 200, {}

    receiver.answer = answer
    flaky, slow, refuse, redirect, fine = _publish(
        database_url,
        {"plan": "flaky"},
        {"plan": "slow-down"},
        {"plan": "refuse"},
        {"plan": "redirect"},
        {"plan": "fine"},
    )
    ids = [flaky, slow, refuse, redirect, fine]
    await _run_until(
        _relay(database_url, receiver.url, _secret()), _settled(database_url, ids), "settling"
    )

    rows = _rows(database_url, ids)
    assert rows[flaky][0] == "done"
    assert len(receiver.for_event(flaky)) == 3
    assert rows[slow][0] == "done"
    first, second = (at for at, _, _ in receiver.for_event(slow))
    assert second - first >= 0.9  # Retry-After: 1 won over the 10 ms backoff
    assert rows[refuse][0] == "failed"
    assert "400" in (rows[refuse][1] or "")
    assert len(receiver.for_event(refuse)) == 1  # permanent: never tried again
    assert rows[redirect][0] == "failed"
    assert len(receiver.for_event(redirect)) == 1
    assert rows[fine][0] == "done"


async def test_410_disables_the_sink_and_its_events_wait_until_it_is_enabled(
    database_url: str, receiver: Receiver
) -> None:
    receiver.answer = lambda body, count: (410, {})
    [gone] = _publish(database_url, {"n": 1})
    await _run_until(
        _relay(database_url, receiver.url, _secret()), _waiting(database_url, [gone]), "the 410"
    )
    assert _rows(database_url, [gone])[gone][0] == "pending"
    with psycopg.connect(database_url) as conn:
        disabled = conn.execute(
            "SELECT disabled_at, disabled_reason FROM outbox_sinks WHERE name = 'hooks'"
        ).fetchone()
    assert disabled is not None
    assert disabled[0] is not None
    assert "410" in disabled[1]

    # While disabled, a new relay sends nothing: the event waits, counting no attempt.
    receiver.answer = lambda body, count: (204, {})
    [later] = _publish(database_url, {"n": 2})
    await _run_until(
        _relay(database_url, receiver.url, _secret()), _waiting(database_url, [later]), "the hold"
    )
    status, _, deliveries = _rows(database_url, [later])[later]
    assert status == "pending"
    assert deliveries["hooks"]["status"] == "waiting"
    assert deliveries["hooks"]["attempts"] == 0
    assert receiver.for_event(later) == []

    # Enabled again: both flow, with no `outbox retry`.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        assert await Switches().enable(conn, "hooks")
    [after] = _publish(database_url, {"n": 3})
    await _run_until(
        _relay(database_url, receiver.url, _secret()),
        _settled(database_url, [gone, later, after]),
        "delivery",
    )
    rows = _rows(database_url, [gone, later, after])
    assert {event_id: row[0] for event_id, row in rows.items()} == dict.fromkeys(
        (gone, later, after), "done"
    )
    assert [len(receiver.for_event(i)) for i in (gone, later, after)] == [2, 1, 1]


def _waiting(database_url: str, ids: list[int]) -> Callable[[], bool]:
    def check() -> bool:
        rows = _rows(database_url, ids)
        return all(
            (row[2] or {}).get("hooks", {}).get("status") == "waiting" for row in rows.values()
        )

    return check
