"""A webhook batch that overruns the relay's ``delivery_timeout`` keeps the requests that
completed: against a real HTTP server on 127.0.0.1 where some requests hang and some are
answered at once, only the hanging ones time out, at the sink and through a relay."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

import outbox
from outbox.exceptions import RetryableError
from outbox.plugins import build_sinks, make_plugin_manager, sink_types
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.settings import SinkSettings
from outbox.testing import make_event
from outbox.webhook_sink import WebhookOptions, WebhookSink

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
DEADLINE = 30.0
# Slow and fast events interleaved; with 4 requests in flight every fast one gets a turn.
SLOW = [True, False, False, False, True, False, False, False]


class Receiver:
    """Answers 204 at once, except to a body whose data says ``slow``: those hang until the
    server closes. Records the event ids it answered."""

    def __init__(self) -> None:
        self.answered: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/hook"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                if body["data"]["slow"]:
                    await asyncio.sleep(3600)  # until the server closes
                self.answered.append(body["id"])
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the server is closing
        finally:
            writer.close()
            self._tasks.discard(task)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()


async def test_fast_requests_keep_their_success_when_the_batch_times_out(
    receiver: Receiver,
) -> None:
    events = [make_event(payload={"slow": slow}) for slow in SLOW]
    options = WebhookOptions(
        url=receiver.url, secret=SECRET, allowed_networks=["127.0.0.1/32"], concurrency=4
    )
    async with WebhookSink(options) as sink:
        results = await sink.deliver_batch(events, timeout=1.0)

    for slow, result in zip(SLOW, results, strict=True):
        if slow:
            assert isinstance(result, RetryableError)
            assert "timed out after 1s" in str(result)
        else:
            assert result is None
    fast_ids = {str(event.id) for event, slow in zip(events, SLOW, strict=True) if not slow}
    assert set(receiver.answered) == fast_ids


def _rows(url: str) -> list[tuple[bool, str, int, str | None]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT (payload->>'slow')::bool, status, attempts, last_error "
            "FROM outbox_events ORDER BY id"
        ).fetchall()


def _all_tried(url: str) -> bool:
    """Every event settled once: done, or back to pending with an attempt counted."""
    return all(
        status == "done" or (status == "pending" and attempts >= 1)
        for _, status, attempts, _ in _rows(url)
    )


async def test_a_relay_marks_only_the_slow_events_of_a_webhook_batch_timed_out(
    database_url: str, receiver: Receiver
) -> None:
    with psycopg.connect(database_url) as conn:
        for n, slow in enumerate(SLOW):
            outbox.publish(conn, "order.paid", {"slow": slow, "n": n})
    settings = {
        "hooks": SinkSettings(
            type="webhook",
            url=receiver.url,
            secret=SECRET,
            allowed_networks=["127.0.0.1/32"],
            concurrency=4,
        )
    }
    sinks = build_sinks(settings, sink_types(make_plugin_manager(entry_points=False)))
    options = relay_options(
        poll_interval=0.05,
        maintenance_interval=0.1,
        lease_seconds=10,
        delivery_timeout=1,
        # A timed-out event is not retried while the test looks.
        retry=dataclasses.replace(relay_options().retry, base_seconds=600, jitter=0),
    )
    relay = Relay(database_url, sinks, [Subscription(("order.#",), ("hooks",))], options)
    task = asyncio.create_task(relay.run())
    try:
        deadline = time.monotonic() + DEADLINE
        while not _all_tried(database_url):
            assert time.monotonic() < deadline, _rows(database_url)
            await asyncio.sleep(0.05)
    finally:
        relay.stop()
        await task

    rows = _rows(database_url)
    assert [status for slow, status, _, _ in rows if not slow] == ["done"] * SLOW.count(False)
    for slow, status, attempts, error in rows:
        if slow:
            assert (status, attempts) == ("pending", 1)
            assert error is not None
            assert "timed out after 1s" in error
